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


HINT = "pip install 'cnnbuild[train"  # [train] or [train,export]
WORKS = "works"
DEMO = CONFIGS / "shapes_demo.yaml"

# How each command is run in the light install, and what it must do there: WORKS (exit 0)
# or the install hint it must print (exit 2). MODEL is a real .keras file, IMAGE a real
# PNG, RUN a run directory holding both; OUT a folder to write into.
INVOCATIONS: dict[str, list[tuple[list, str]]] = {
    "validate": [(["validate", CONFIGS], WORKS)],
    "diff": [(["diff", CONFIGS / "cifar10_tutorial.yaml", CONFIGS / "cifar10_bn_gap.yaml"], WORKS)],
    "summary": [(["summary", "--static", DEMO], WORKS), (["summary", DEMO], HINT)],
    "trace": [
        (["trace", DEMO], WORKS),
        (["trace", "--run", DEMO], HINT),
        (["trace", "--grads", DEMO], HINT),
    ],
    "schema": [(["schema"], WORKS)],
    "layers": [(["layers", "Conv2D"], WORKS)],
    "plot": [
        (["plot", DEMO, "-o", "OUT/m.dot", "--engine", "dot"], WORKS),
        (["plot", DEMO, "-o", "OUT/m.png"], HINT),
    ],
    "build": [(["build", DEMO, "-o", "OUT/x.keras"], HINT)],
    "import": [
        (["import", "MODEL", "-o", "OUT/imported.yaml"], WORKS),  # config.json read as data
        (["import", "keras.applications.MobileNetV2", "--input-shape", "64,64,3"], HINT),
    ],
    "train": [
        (["train", DEMO, "--dataset", "shapes", "--epochs", "1", "--out", "OUT/run"], HINT),
        (["train", DEMO, "--workers", "2", "--out", "OUT/run2"], HINT),
    ],
    "evaluate": [(["evaluate", "RUN"], HINT), (["evaluate", "MODEL", "--dataset", "shapes"], HINT)],
    "show": [(["show", "RUN", "IMAGE"], HINT)],
    "report": [(["report", "RUN"], HINT)],
    "predict": [(["predict", "MODEL", "IMAGE"], HINT)],
    "export": [
        (["export", "RUN", "--format", "onnx"], HINT),
        (["export", "MODEL", "--format", "saved_model"], HINT),
    ],
    "tune": [(["tune", CONFIGS / "shapes_tune.yaml"], HINT)],
}


def _commands() -> list[str]:
    """Every command of the Typer app, as ``cnnbuild --help`` lists them."""
    import typer

    from cnnbuild.cli import app

    return sorted(typer.main.get_command(app).commands)


def test_every_command_has_a_light_install_invocation():
    """A new command must say here how it behaves without TensorFlow."""
    assert sorted(INVOCATIONS) == _commands()


@pytest.fixture(scope="module")
def things(tmp_path_factory):
    """A real .keras model, a real PNG and a run directory holding both (made with the
    full install, used by the light one)."""
    import keras
    from PIL import Image

    base = tmp_path_factory.mktemp("things")
    run = base / "run"
    run.mkdir()
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.Flatten()]
    )
    model.save(base / "m.keras")
    model.save(run / "model.keras")
    (run / "config.yaml").write_text(DEMO.read_text())
    Image.new("RGB", (8, 8), (10, 20, 30)).save(base / "i.png")
    return {"MODEL": base / "m.keras", "IMAGE": base / "i.png", "RUN": run}


@pytest.mark.parametrize("command", _commands())
def test_every_command_works_or_says_how_to_install(light, things, tmp_path, command):
    """TF-free commands work; the others exit 2 with the install hint; never a traceback."""
    for args, expected in INVOCATIONS[command]:
        argv = [_placeholder(a, things, tmp_path) for a in args]
        result = _run([light / "cnnbuild", *argv], cwd=ROOT)
        shown = f"cnnbuild {' '.join(map(str, argv))}:\n{result.stdout}{result.stderr}"
        assert "Traceback" not in result.stderr, shown
        if expected == WORKS:
            assert result.returncode == 0, shown
            assert result.stdout.strip() or any(tmp_path.iterdir()), shown
        else:
            assert result.returncode == 2, shown
            assert expected in result.stderr, shown
            assert "is not installed" in result.stderr or "are not installed" in result.stderr
        assert not (tmp_path / "run").exists(), "a refused train left a run directory"


def _placeholder(arg, things: dict, out) -> str:
    text = str(arg)
    if text in things:
        return str(things[text])
    return text.replace("OUT", str(out)) if text.startswith("OUT/") else text


def test_the_version_and_help_work_without_tensorflow(light):
    for args in (["--version"], ["--help"]):
        result = _run([light / "cnnbuild", *args], cwd=ROOT)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip()


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


def test_validate_checks_an_init_source_without_h5py(light, tmp_path):
    """`init: {from: X.keras}` validates in the light install: the source is checked to
    exist and be a model; the weight shapes (read with the train extra's h5py) are not."""
    import keras

    keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="c"), keras.layers.Flatten()]
    ).save(tmp_path / "source.keras")
    config = tmp_path / "tuned.yaml"
    config.write_text(
        "name: tuned\ninput: [8, 8, 1]\ninit: {from: source.keras}\nfreeze: {until: c}\n"
        "layers:\n  - Conv2D: {filters: 4, kernel_size: 3, name: c}\n  - Flatten\n"
        "  - Dense: {units: 2, name: head}\n",
        encoding="utf-8",
    )
    ok = _run([light / "cnnbuild", "validate", config])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    missing = config.read_text().replace("source.keras", "gone.keras")
    config.write_text(missing, encoding="utf-8")
    bad = _run([light / "cnnbuild", "validate", config])
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "gone.keras does not exist" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr
