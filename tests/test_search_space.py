"""The search space (``cnnbuild/search_space.py``): paths, and the static check of a space
that ``validate`` runs, without TensorFlow or Optuna."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from cnnbuild.search_space import MAX_CORNERS, PathError, _combinations, assign, parse_path
from cnnbuild.validate import check_file, load_config
from tests.conftest import CONFIGS, ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}

# -- paths ------------------------------------------------------------------------------

DATA = {
    "layers": [{"Conv2D": {"filters": 8}}, "BatchNormalization", {"ReLU": None}],
    "blocks": {"stage": {"params": ["filters", {"width": 16}], "layers": []}},
    "compile": {"optimizer": "adam"},
    "train": {"batch_size": 32},
}


@pytest.mark.parametrize(
    "path, value, where, expected",
    [
        ("layers[0].Conv2D.filters", 16, ("layers", 0), {"Conv2D": {"filters": 16}}),
        ("layers[0].Conv2D.strides", 2, ("layers", 0), {"Conv2D": {"filters": 8, "strides": 2}}),
        (
            "layers[1].BatchNormalization.momentum",
            0.9,
            ("layers", 1),
            {"BatchNormalization": {"momentum": 0.9}},
        ),
        ("layers[2].ReLU.max_value", 6.0, ("layers", 2), {"ReLU": {"max_value": 6.0}}),
        (
            "blocks.stage.params.width",
            32,
            ("blocks", "stage", "params"),
            ["filters", {"width": 32}],
        ),
        (
            "blocks.stage.params.filters",
            8,
            ("blocks", "stage", "params"),
            [{"filters": 8}, {"width": 16}],
        ),
        (
            "compile.optimizer.adam.learning_rate",
            0.01,
            ("compile", "optimizer"),
            {"adam": {"learning_rate": 0.01}},
        ),
        ("train.batch_size", 64, ("train",), {"batch_size": 64}),
        ("lint.max_dense_params_million", 1.0, ("lint",), {"max_dense_params_million": 1.0}),
    ],
)
def test_assign_writes_the_value_at_the_path_and_nothing_else(path, value, where, expected):
    out = assign(DATA, parse_path(path), value)
    node = out
    for step in where:
        node = node[step]
    assert node == expected
    assert DATA["layers"][0] == {"Conv2D": {"filters": 8}}  # the original is untouched


@pytest.mark.parametrize(
    "path, message",
    [
        ("layers[5].Conv2D.filters", "layers has 3 entries; index 5 is past its end"),
        ("layers[0].Conv2d.filters", "layers[0] has no key 'Conv2d'; did you mean 'Conv2D'?"),
        ("blocks.stage.params.depth", "blocks.stage.params has no entry 'depth'"),
        ("compile.optimiser.adam.learning_rate", "did you mean 'optimizer'?"),
        ("train.early_stopping.patience", "train.early_stopping is not written; write it first"),
        ("train.early_stoping.patience", "did you mean 'early_stopping'?"),
        ("train.batch_size.x", "train.batch_size is 32; .x cannot follow it"),
        ("model.depth", "the config has no key 'model'; its keys are layers, blocks"),
        ("depth", "the config has no 'depth' section"),
    ],
)
def test_paths_that_lead_nowhere_are_refused(path, message):
    with pytest.raises(PathError) as info:
        assign(DATA, parse_path(path), 1)
    assert message in str(info.value)


def test_parse_path_reads_the_finding_path_syntax():
    assert parse_path("layers[2].Residual.main[0].Conv2D.kernel_size") == (
        "layers",
        2,
        "Residual",
        "main",
        0,
        "Conv2D",
        "kernel_size",
    )
    for bad in ("layers..x", "[0].x", "layers[a]", "layers[0]Conv2D", ""):
        with pytest.raises(PathError):
            parse_path(bad)


# -- the static check -------------------------------------------------------------------

BAD_SPACE = """
name: bad_space
input: [16, 16, 3]
layers:
  - Conv2D: {filters: 8, kernel_size: 3, activation: relu}
  - MaxPooling2D: {pool_size: 2}
  - Conv2D: {filters: 8, kernel_size: 3, activation: relu}
  - GlobalAveragePooling2D
  - Dense: {units: 10}
compile:
  from_logits: true
tune:
  space:
    layers[7].Conv2D.filters: {choice: [8, 16]}
    layers[0].Conv2D.filters: {float: [4, 16]}
    layers[2].Conv2D.kernel_size: {choice: [3, 5, 9]}
    layers[0].Conv2D.filter: {int: [4, 16]}
    train.batch_size: {choice: [32, 64]}
"""


def _pos(text: str, line_text: str, token: str, nth: int = 0) -> tuple[int, int]:
    """1-based line and column of ``token`` on the line containing ``line_text``."""
    lines = text.splitlines()
    line = next(i for i, ln in enumerate(lines) if line_text in ln)
    col = -1
    for _ in range(nth + 1):
        col = lines[line].index(token, col + 1)
    return line + 1, col + 1


def test_validate_refuses_a_bad_space_at_the_offending_entry(cli, write):
    path = write(BAD_SPACE)
    text = path.read_text()
    result = cli("validate", path)
    assert result.exit_code == 1, result.output
    errors = [ln for ln in result.output.splitlines() if ": error: " in ln]
    expected = [
        (
            _pos(text, "layers[7].Conv2D.filters", "layers[7]"),
            "tune.space.layers[7].Conv2D.filters: unknown path: layers has 5 entries; "
            "index 7 is past its end",
        ),
        (
            _pos(text, "layers[0].Conv2D.filters:", "float"),
            "tune.space.layers[0].Conv2D.filters: a float range samples values such as 4.0, "
            "but layers[0].Conv2D.filters (line 4) takes an integer (use int: [4, 16])",
        ),
        (
            _pos(text, "layers[2].Conv2D.kernel_size", "9"),
            "tune.space.layers[2].Conv2D.kernel_size: choice 9 makes the model invalid: "
            "layers[2].Conv2D.kernel_size (line 6): layer 'conv2d_1' (Conv2D) cannot take "
            "input (7, 7, 8): output H would be -1",
        ),
        (
            _pos(text, "layers[0].Conv2D.filter:", "layers"),
            "tune.space.layers[0].Conv2D.filter: unknown path: unknown argument 'filter' "
            "for Conv2D; did you mean 'filters'?",
        ),
    ]
    assert len(errors) == len(expected), result.output
    for got, ((line, col), message) in zip(errors, expected, strict=True):
        assert got.startswith(f"{path}:{line}:{col}: error: {message}"), got
    assert "train.batch_size" not in result.output  # a sound entry says nothing


def test_a_corner_that_only_fails_in_combination_is_found(write):
    path = write(
        BAD_SPACE.split("tune:")[0]
        + textwrap.dedent(
            """
            tune:
              space:
                layers[0].Conv2D.kernel_size: {int: [3, 7]}
                layers[2].Conv2D.kernel_size: {int: [3, 6]}
            """
        )
    )
    findings = [f for f in check_file(path)[2] if f.severity == "error"]
    assert len(findings) == 1, [f.format() for f in findings]
    f = findings[0]
    assert f.path == "tune.space" and (f.line, f.column) == _pos(path.read_text(), "space:", "s")
    assert f.message.startswith(
        "the corner layers[0].Conv2D.kernel_size = 7, layers[2].Conv2D.kernel_size = 6 "
        "makes the model invalid: layers[2].Conv2D.kernel_size (line 6): layer 'conv2d_1'"
    )


@pytest.mark.parametrize(
    "entry, message",
    [
        ("{float: [1e-4, 1.0e-2]}", "received '1e-4' (YAML reads 1e-4 as text"),
        ("{int: [16, 60], step: 16}", "the largest value reached would be 48; set high to 48"),
        ("{float: [0.0, 1.0], log: true}", "a log scale needs low > 0; received low=0.0"),
        ("{choice: [1]}", "expected a list of at least 2 values"),
        ("{int: [4, 16], choice: [1, 2]}", "give exactly one of float"),
        ("{float: [0.1, 0.01]}", "expected low < high; received [0.1, 0.01]"),
        (f"{{int: [1, {10**400}]}}", "expected [low, high], 2 integers; received 1000"),
        ("{float: [-1.0e+308, 1.0e+308], step: 1.0e-300}", "step 1e-300 is too small"),
        ("{float: [0.0, 1.0], step: 1.0e-320}", "give a larger step"),
    ],
)
def test_malformed_space_entries_are_schema_errors(write, entry, message):
    text = BAD_SPACE.split("tune:")[0] + f"tune:\n  space:\n    train.batch_size: {entry}\n"
    findings = [f for f in check_file(write(text))[2] if f.severity == "error"]
    assert len(findings) == 1 and message in findings[0].message, [f.format() for f in findings]
    assert findings[0].line == len(text.strip().splitlines())


def test_the_shipped_tune_config_validates_without_tensorflow_or_optuna():
    code = (
        "import sys, json\nfrom cnnbuild.validate import check_file\n"
        "f = check_file('configs/shapes_tune.yaml')[2]\n"
        "print(json.dumps([len(f), 'tensorflow' in sys.modules, 'optuna' in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [0, False, False], out.stderr
    assert load_config(CONFIGS / "shapes_tune.yaml").tune.space


def test_the_json_schema_knows_the_tune_section():
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    schema = json.loads((ROOT / "schema" / "cnnbuild.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    good = yaml.safe_load((CONFIGS / "shapes_tune.yaml").read_text())
    assert not list(validator.iter_errors(good))
    for space in (
        {"layers[0]..filters": {"choice": [8, 16]}},  # not a path
        {"train.batch_size": {"choice": [32, 64], "int": [1, 2]}},  # two kinds
        {"train.batch_size": {"range": [32, 64]}},  # an unknown kind
    ):
        bad = {**good, "tune": {**good["tune"], "space": space}}
        assert list(validator.iter_errors(bad)), space


def test_a_large_space_checks_a_seeded_sample_of_its_corners(write):
    options = [[(i, v) for i, v in enumerate(range(5))] for _ in range(4)]  # 625 corners
    drawn = _combinations(options)
    assert 0 < len(drawn) <= MAX_CORNERS and drawn == _combinations(options)
    path = write(
        BAD_SPACE.split("tune:")[0]
        + "tune:\n  space:\n"
        + "".join(
            f"    layers[{i}].Conv2D.filters: {{choice: [4, 8, 12, 16, 20]}}\n" for i in (0, 2)
        )
        + "    layers[4].Dense.use_bias: {choice: [true, false]}\n"
        + "    train.batch_size: {choice: [8, 16, 32, 64, 128]}\n"
    )
    assert [f for f in check_file(path)[2] if f.severity == "error"] == []


BLOCKS = """
name: blocky
input: [16, 16, 3]
blocks:
  stage:
    params: [filters]
    layers:
      - Conv2D: {filters: $filters, kernel_size: 3, padding: same}
layers:
  - stage: {filters: 8}
  - GlobalAveragePooling2D
  - Dense: {units: 10}
compile:
  from_logits: true
tune:
  space:
"""


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            "layers[0].stage.width: {choice: [8, 16]}",
            "tune.space.layers[0].stage.width: unknown path: unknown parameter 'width' for "
            "block 'stage'",
        ),
        (
            "layers[2].Dense.unit: {choice: [8, 16]}",
            "tune.space.layers[2].Dense.unit: unknown path: unknown argument 'unit' for Dense; "
            "did you mean 'units'?",
        ),
        (
            "layers[0].stage.filters: {float: [8, 16]}",
            "tune.space.layers[0].stage.filters: a float range samples values such as 8.0, "
            "but blocks.stage.layers[0].Conv2D.filters (line 7) takes an integer",
        ),
    ],
)
def test_an_entry_no_value_can_satisfy_gives_one_finding(write, entry, message):
    path = write(BLOCKS + f"    {entry}\n")
    errors = [f for f in check_file(path)[2] if f.severity == "error"]
    assert len(errors) == 1, [f.format() for f in errors]
    assert f"{errors[0].path}: {errors[0].message}".startswith(message), errors[0].format()
