"""The command line: exit codes, output formats, and TensorFlow staying out of validate."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import CONFIGS, ROOT, run_process

LINT = ROOT / "tests" / "data" / "lint"


ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_validate_never_imports_tensorflow():
    code = (
        "import sys; from cnnbuild.cli import app\n"
        "try:\n    app(['validate', 'configs/', 'tests/data/errors/', '--format', 'json'])\n"
        "except SystemExit as e:\n    code = e.code\n"
        "print(json.dumps({'code': code, 'tf': 'tensorflow' in sys.modules,"
        " 'keras': 'keras' in sys.modules}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json\n" + code],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=120,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"code": 1, "tf": False, "keras": False}


def test_summary_static_and_trace_never_import_tensorflow():
    code = (
        "import sys\nfrom cnnbuild.cli import app\n"
        "for args in (['summary', '--static', 'configs/cifar10_tutorial.yaml'],"
        " ['trace', '--json', 'configs/cifar10_tutorial.yaml']):\n"
        "    try:\n        app(args)\n    except SystemExit:\n        pass\n"
        "print('TF' if 'tensorflow' in sys.modules else 'NO-TF')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "NO-TF"


def test_python_dash_m_and_exit_codes(tmp_path):
    assert run_process("validate", str(CONFIGS / "cifar10_tutorial.yaml")).returncode == 0
    bad = run_process("validate", str(ROOT / "tests/data/errors/unknown_names.yaml"))
    assert bad.returncode == 1 and "did you mean 'Conv2D'?" in bad.stdout
    assert "Traceback" not in bad.stderr
    missing = run_process("validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr
    assert run_process("validate", "--no-such-option", "x").returncode == 2
    bare = run_process()  # no arguments: the help, as a usage error
    assert bare.returncode == 2 and "Usage: " in bare.stdout + bare.stderr


def test_a_tensorflow_command_ends_with_its_output_and_exit_code(cli, tmp_path):
    """Once TensorFlow is loaded the process ends without Python's teardown
    (backend.exit_process): what it printed still arrives whole through a pipe, the
    file it wrote is complete, and a failure keeps its exit code and message."""
    config = CONFIGS / "shapes_demo.yaml"
    out = tmp_path / "demo.keras"
    done = run_process("build", config, "-o", out)
    assert done.returncode == 0, done.stderr
    same = cli("build", config, "-o", tmp_path / "again.keras")
    assert done.stdout.splitlines() == [
        line.replace(str(tmp_path / "again.keras"), str(out)) for line in same.stdout.splitlines()
    ]
    import keras

    assert keras.saving.load_model(out).count_params() > 0
    fake = tmp_path / "fake.keras"
    fake.write_text("not a zip archive")
    failed = run_process("predict", fake, config)
    assert failed.returncode == 1, (failed.stdout, failed.stderr)
    assert "fake.keras" in failed.stderr and "Traceback" not in failed.stderr


def test_validate_directories_and_globs(cli, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = cli("validate", "tests/data/lint/*.yaml")
    n = len(list(LINT.glob("*.yaml")))
    assert result.exit_code == 1 and f"{n} files checked" in result.output
    result = cli("validate", "tests/data/")
    assert "tests/data/errors/unknown_names.yaml:4:5: error:" in result.output


def test_views_show_the_model_despite_lint_errors(cli, write):
    """summary, trace and build are views: a lint error is a note on stderr, exit 0."""
    path = write("""
        input: [8, 8, 1]
        layers:
          - Conv2D: {filters: 4, kernel_size: 3, activation: relu}
          - GlobalAveragePooling2D
          - Dense: {units: 10, activation: softmax}
        compile: {from_logits: true}
    """)
    assert cli("validate", path).exit_code == 1
    for args in (["summary", "--static"], ["trace"], ["trace", "--json"]):
        result = cli(*args, path)
        assert result.exit_code == 0, (args, result.output)
        assert "[softmax-logits]" in result.stderr and "[softmax-logits]" not in result.stdout
        assert "conv2d" in result.stdout
    broken = write("input: [8, 8, 1]\nlayers:\n  - Conv2D: {filters: 4, kernal_size: 3}\n")
    result = cli("summary", "--static", broken)
    assert result.exit_code == 1 and result.stdout == ""
    assert "did you mean 'kernel_size'?" in result.stderr


@pytest.mark.parametrize("shape", ["\u00b2,2,3", "0,2,3", "9,9", "a,b,c"])
def test_import_input_shape_that_is_not_three_positive_integers_is_a_usage_error(
    cli, tmp_path, shape
):
    # "²" passed str.isdigit, and int() raised a ValueError traceback
    result = cli(
        "import",
        "keras.applications.MobileNetV2",
        "--input-shape",
        shape,
        "-o",
        tmp_path / "m.yaml",
    )
    assert result.exit_code == 2, result.output
    assert "--input-shape takes HEIGHT,WIDTH,CHANNELS" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "m.yaml").exists()


def test_summary_static_json(cli):
    result = cli("summary", CONFIGS / "cifar10_tutorial.yaml", "--static", "--json")
    data = json.loads(result.output)
    assert set(data) == {
        "name",
        "input_shape",
        "output_shape",
        "total_params",
        "trainable_params",
        "non_trainable_params",
        "macs",
        "activation_bytes",
        "weight_bytes",
        "receptive_field",
        "cumulative_stride",
        "layers",
    }
    assert data["input_shape"] == [32, 32, 3] and data["output_shape"] == [10]
    assert data["weight_bytes"] == {"float32": 490280, "bfloat16": 245140, "int8": 122570}
    assert data["receptive_field"] == [18, 18] and data["cumulative_stride"] == [4, 4]
    assert set(data["layers"][0]) == {"name", "type", "output_shape", "params", "macs"}
    # the default pixel scaling is a layer of the model, with no parameters
    assert data["layers"][0] == {
        "name": "input_scaling",
        "type": "Rescaling",
        "output_shape": [32, 32, 3],
        "params": 0,
        "macs": 0,
    }
    # conv2d: 3x3x3x32 + 32 params; MACs = 30*30 positions * 32 filters * 27
    assert data["layers"][1]["params"] == 3 * 3 * 3 * 32 + 32
    assert data["layers"][1]["macs"] == 30 * 30 * 32 * 27


def test_summary_table_shows_totals(cli):
    result = cli("summary", CONFIGS / "cifar10_bn_gap.yaml", "--static")
    assert result.exit_code == 0
    for text in ("Total params", "Trainable", "Non-trainable", "MACs", "MiB", "activation"):
        assert text.lower() in result.output.lower(), text


def test_trace_shows_the_arithmetic(cli):
    result = cli("trace", CONFIGS / "cifar10_tutorial.yaml")
    assert result.exit_code == 0
    assert "H: (32 - 3) // 1 + 1 = 30" in result.output
    data = json.loads(cli("trace", CONFIGS / "cifar10_tutorial.yaml", "--json").output)
    assert data["layers"][0]["name"] == "input_scaling"
    first = data["layers"][1]
    assert first["input_shapes"] == [[32, 32, 3]] and first["output_shape"] == [30, 30, 32]
    assert first["arithmetic"][0] == {"axis": "H", "text": "(32 - 3) // 1 + 1 = 30"}


def test_build_saves_a_model_that_loads_back_the_same(cli, tmp_path):
    import keras

    out = tmp_path / "m.keras"
    result = cli("build", CONFIGS / "cifar10_bn_gap.yaml", "-o", out)
    assert result.exit_code == 0, result.output
    model = keras.saving.load_model(out, safe_mode=True)
    keras_json = json.loads(cli("summary", CONFIGS / "cifar10_bn_gap.yaml", "--json").output)
    assert model.count_params() == keras_json["total_params"]
    assert [layer.name for layer in model.layers[1:]] == [
        entry["name"] for entry in keras_json["layers"]
    ]
    assert model.optimizer.__class__.__name__ == "AdamW"
    bad = cli("build", CONFIGS / "cifar10_bn_gap.yaml", "-o", tmp_path / "m.h5")
    assert bad.exit_code == 2


def test_schema_command_and_committed_copy_are_fresh(cli):
    result = cli("schema")
    assert result.exit_code == 0
    committed = (ROOT / "schema" / "cnnbuild.schema.json").read_text()
    assert result.output == committed, "schema/ is stale: run `make schema`"
    assert json.loads(committed)["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_configs_validate_against_the_json_schema():
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    schema = json.loads((ROOT / "schema" / "cnnbuild.schema.json").read_text())
    for path in sorted(CONFIGS.rglob("*.yaml")):
        assert path.read_text().startswith("# yaml-language-server: $schema="), path
        jsonschema.Draft7Validator(schema).validate(yaml.safe_load(path.read_text()))
    bad = yaml.safe_load((ROOT / "tests/data/errors/unknown_names.yaml").read_text())
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))


def test_pre_commit_hook_runs_the_way_pre_commit_calls_it():
    import shlex

    import yaml

    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert {h["id"] for h in hooks} == {"cnnbuild-validate", "cnnbuild-validate-system"}
    import re

    for hook in hooks:
        assert re.search(hook["files"], "configs/cifar10_tutorial.yaml")
        # pre-commit runs `entry` followed by the matching staged file names
        args = shlex.split(hook["entry"])[1:]
        good = run_process(*args, str(CONFIGS / "cifar10_tutorial.yaml"), str(CONFIGS / "zoo"))
        assert good.returncode == 0, good.stdout
        bad = run_process(*args, str(LINT / "softmax-logits.yaml"))
        assert bad.returncode == 1 and "[softmax-logits]" in bad.stdout


def test_validate_needs_neither_numpy_nor_matplotlib():
    """The README's CI snippet installs only typer, PyYAML, rich and pydantic."""
    code = (
        "import sys\nfor m in ('numpy', 'matplotlib', 'tensorflow', 'keras'):\n"
        "    sys.modules[m] = None\n"
        "from cnnbuild.cli import app\n"
        "app(['validate', 'configs/', '--format', 'sarif'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["version"] == "2.1.0"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "--epochs: expected an integer >= 1"),
        (["--dataset", "imagenet"], "--dataset:"),
        (["--validation-split", "1.5"], "--validation-split:"),
    ],
)
def test_bad_flags_are_usage_errors(cli, args, message):
    result = cli("train", CONFIGS / "shapes_demo.yaml", *args)
    assert result.exit_code == 2
    assert message in result.output
