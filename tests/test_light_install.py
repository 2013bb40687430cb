"""The light install: a fresh virtualenv with ``pip install .`` (no extras) validates
configs without TensorFlow, and the commands that need TensorFlow say how to get it."""

from __future__ import annotations

import os
import shutil
import subprocess
import venv

import pytest

from tests.conftest import CONFIGS, ROOT

pytestmark = pytest.mark.slow


def _run(args, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env, timeout=600, **kw
    )


@pytest.fixture(scope="module")
def light(tmp_path_factory):
    """A venv without system site-packages holding only ``cnnbuild`` and its base deps."""
    base = tmp_path_factory.mktemp("light")
    src = base / "src"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    bin_dir = env_dir / "bin"
    pip = _run([bin_dir / "python", "-m", "pip", "install", "--quiet", str(src)])
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert "ERROR" not in pip.stderr, pip.stderr[-3000:]
    check = _run([bin_dir / "python", "-m", "pip", "check"])
    assert check.returncode == 0, check.stdout + check.stderr
    return bin_dir


def test_validate_works_without_tensorflow(light):
    result = _run([light / "cnnbuild", "validate", CONFIGS], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "files checked" in result.stdout
    for module in ("tensorflow", "keras", "numpy"):
        imported = _run([light / "python", "-c", f"import {module}"])
        assert imported.returncode == 1
        assert f"No module named '{module}'" in imported.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["trace", CONFIGS / "shapes_demo.yaml"],
        ["summary", "--static", CONFIGS / "shapes_demo.yaml"],
        ["diff", CONFIGS / "cifar10_tutorial.yaml", CONFIGS / "cifar10_bn_gap.yaml"],
        ["schema"],
        ["layers", "Conv2D"],
        ["--version"],
    ],
)
def test_static_commands_work_without_tensorflow(light, args):
    result = _run([light / "cnnbuild", *args], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip()


def test_diff_and_baseline_work_without_tensorflow(light, tmp_path):
    """`diff REF:PATH` and `validate --baseline` in a real git repository, light install."""
    model = tmp_path / "model.yaml"
    model.write_text((CONFIGS / "cifar10_tutorial.yaml").read_text())
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "model.yaml"], ["commit", "-qm", "base"]):
        assert _run([*git, *args], cwd=tmp_path).returncode == 0
    model.write_text(
        model.read_text().replace("filters: 32,", "filters: 48,")
        + "budget:\n  growth: {params: 1%}\n"
    )
    diff = _run(
        [light / "cnnbuild", "diff", "HEAD:model.yaml", "model.yaml", "--format", "json"],
        cwd=tmp_path,
    )
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert '"changed": 3' in diff.stdout  # the conv, the pool after it, the next conv
    review = _run(
        [light / "cnnbuild", "validate", "--baseline", "HEAD", ".", "--format", "markdown"],
        cwd=tmp_path,
    )
    assert review.returncode == 1, review.stdout + review.stderr
    assert "| `model.yaml` (`cifar10_tutorial`) |" in review.stdout
    assert "over the fail limit of 1%" in review.stdout


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["summary", CONFIGS / "shapes_demo.yaml"], "pip install 'cnnbuild[train]'"),
        (["build", CONFIGS / "shapes_demo.yaml", "-o", "/nonexistent/x.keras"], "cnnbuild[train]"),
        (["trace", "--run", CONFIGS / "shapes_demo.yaml"], "cnnbuild[train]"),
        (["trace", "--grads", CONFIGS / "shapes_demo.yaml"], "cnnbuild[train]"),
        (["show", "nowhere", "image.png"], "cnnbuild[train]"),
        (["report", "nowhere"], "cnnbuild[train]"),
        (["plot", CONFIGS / "shapes_demo.yaml", "-o", "/nonexistent/m.png"], "cnnbuild[train]"),
        (
            ["tune", CONFIGS / "shapes_tune.yaml"],
            "tune needs tensorflow, keras, optuna, which are not installed; "
            "install them with: pip install 'cnnbuild[train]'",
        ),
        (
            ["export", "nowhere.keras", "--format", "onnx"],
            "needs tensorflow, tf2onnx, onnx, onnxruntime, which are not installed; "
            "install them with: pip install 'cnnbuild[train,export]'",
        ),
    ],
)
def test_tensorflow_commands_say_how_to_install_it(light, args, hint):
    result = _run([light / "cnnbuild", *args], cwd=ROOT)
    assert result.returncode == 2, result.stdout + result.stderr
    assert hint in result.stderr
    assert "Traceback" not in result.stderr


def test_predict_says_how_to_install_tensorflow(light, tmp_path):
    (tmp_path / "model.keras").write_bytes(b"PK")
    result = _run([light / "cnnbuild", "predict", tmp_path, tmp_path], cwd=ROOT)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "needs TensorFlow and Keras" in result.stderr
    assert "pip install 'cnnbuild[train]'" in result.stderr


def test_a_saved_model_is_read_without_tensorflow_or_numpy(light, tmp_path):
    """`summary --static`, `trace` and `diff` read a .keras file as data: its config.json,
    through runs.saved_config, with no TensorFlow and no numpy in the environment."""
    import keras

    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.Flatten()]
    )
    model.save(tmp_path / "a.keras")
    keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(6, 3), keras.layers.Flatten()]
    ).save(tmp_path / "b.keras")
    summary = _run([light / "cnnbuild", "summary", "--static", tmp_path / "a.keras"])
    assert summary.returncode == 0, summary.stdout + summary.stderr
    assert f"{model.count_params():,}" in summary.stdout
    assert _run([light / "cnnbuild", "trace", tmp_path / "a.keras"]).returncode == 0
    diff = _run([light / "cnnbuild", "diff", tmp_path / "a.keras", tmp_path / "b.keras"])
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert "changed" in diff.stdout
