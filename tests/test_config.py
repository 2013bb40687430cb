"""Config parsing and expansion: golden error files with exact FILE:LINE:COL messages,
the canonical example, sugar, and safety (no tags, no code)."""

from __future__ import annotations

import pytest

from cnnbuild.config import from_document
from cnnbuild.source import parse_text, read_document
from cnnbuild.validate import check_file
from tests.conftest import ROOT

ERRORS = sorted((ROOT / "tests" / "data" / "errors").glob("*.yaml"))


@pytest.mark.parametrize("path", ERRORS, ids=[p.stem for p in ERRORS])
def test_golden_error_files(cli, path, monkeypatch):
    """Each bad config next to the exact messages it must produce (reviewed by hand)."""
    monkeypatch.chdir(ROOT)
    rel = path.relative_to(ROOT)
    result = cli("validate", rel)
    assert result.exit_code == 1
    assert result.output == path.with_suffix(".txt").read_text()


def test_canonical_example_from_the_issue():
    cfg, tr, findings = check_file(ROOT / "tests" / "data" / "canonical.yaml")
    assert findings == []
    assert [n.kind for n in cfg.nodes] == [
        "Rescaling",  # input_scaling: the default 1/255, inside the model
        "Conv2D",
        "MaxPooling2D",
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
        "Dense",
        "Dropout",
        "Dense",
    ]
    assert tr.output_shape == (10,)
    assert cfg.compile.optimizer == {"adam": {"learning_rate": 0.001}}
    assert cfg.train.epochs == 10 and cfg.train.validation_split == 0.1


def test_every_problem_is_reported_not_just_the_first():
    cfg, _, findings = check_file(ROOT / "tests" / "data" / "errors" / "types_and_ranges.yaml")
    assert len([f for f in findings if f.severity == "error"]) == 9


def test_python_tags_never_run(tmp_path):
    marker = tmp_path / "ran"
    text = f'name: !!python/object/apply:os.system ["touch {marker}"]\ninput: [8, 8, 1]\n'
    doc = parse_text(text, "x.yaml")
    assert doc.findings and doc.findings[0].rule == "yaml"
    assert not marker.exists()


def test_alias_bomb_is_refused_quickly():
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 10):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    doc = parse_text("\n".join(lines) + "\n", "bomb.yaml")
    assert doc.findings and "alias" in doc.findings[0].message.lower()


def test_positions_point_at_keys_and_values(write):
    path = write("""
        name: pos
        input: [16, 16, 3]
        layers:
          - Conv2D:
              filters: 8
              kernel_size: 9
              padding: valid
          - MaxPooling2D: {pool_size: 16}
    """)
    doc = read_document(path)
    cfg = from_document(doc)
    assert doc.locate(("layers", 0, "Conv2D", "kernel_size"), "value").line == 6
    assert doc.locate(("layers", 0, "Conv2D", "kernel_size"), "value").column == 20
    _, _, findings = check_file(path)
    shape = [f for f in findings if f.rule == "shape"]
    assert [(f.line, f.column) for f in shape] == [(8, 20)]  # the pool_size key
    assert "(8, 8, 8)" in shape[0].message and "pool_size" in shape[0].message
    assert cfg is not None


def test_bare_names_and_auto_names_follow_keras(write):
    path = write("""
        name: names
        input: [8, 8, 3]
        layers:
          - Conv2D: {filters: 4, kernel_size: 3, activation: relu}
          - Conv2D: {filters: 4, kernel_size: 3, activation: relu, name: second}
          - Conv2D: {filters: 4, kernel_size: 1, activation: relu}
          - GlobalAveragePooling2D
          - Dense: {units: 3, activation: softmax}
    """)
    cfg, _, findings = check_file(path)
    assert [n.name for n in cfg.nodes] == [
        "input_scaling",
        "conv2d",
        "second",
        "conv2d_1",
        "global_average_pooling2d",
        "dense",
    ]
    assert not [f for f in findings if f.severity == "error"]


def test_free_height_and_width(write):
    path = write("""
        name: free
        input: [null, null, 3]
        layers:
          - Conv2D: {filters: 4, kernel_size: 3, activation: relu}
          - GlobalAveragePooling2D
          - Dense: {units: 2, activation: softmax}
    """)
    cfg, tr, findings = check_file(path)
    assert tr.output_shape == (2,) and tr.rows[1].shape == (None, None, 4)
    assert not findings


def test_configs_directory_is_clean(cli, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = cli("validate", "configs/")
    assert result.exit_code == 0, result.output
    n = len(list((ROOT / "configs").rglob("*.yaml")))
    summary = result.output.strip().splitlines()[-1]
    assert summary.startswith(f"{n} files checked: ") and "error" not in summary
    assert "error:" not in result.output


def test_input_scaling_goes_after_leading_augmentation_unless_the_config_scales(write):
    path = write("""
        name: aug
        input: [8, 8, 3]
        layers:
          - RandomFlip
          - Conv2D: {filters: 4, kernel_size: 3, name: c}
          - Conv2D: {filters: 4, kernel_size: 3, inputs: [c]}
          - GlobalAveragePooling2D
          - Dense: {units: 2}
    """)
    cfg, _, _ = check_file(path)
    assert [(n.name, n.inputs) for n in cfg.nodes[:3]] == [
        ("random_flip", ["input"]),
        ("input_scaling", ["random_flip"]),
        ("c", ["input_scaling"]),
    ]
    assert cfg.nodes[1].args.scale == 1 / 255
    path = write("""
        name: scaled
        input: [8, 8, 3]
        layers:
          - RandomFlip
          - Rescaling: {scale: 0.00392156862745098}
          - Conv2D: {filters: 4, kernel_size: 3}
    """)
    cfg, _, _ = check_file(path)
    assert "input_scaling" not in [n.name for n in cfg.nodes]


def test_input_scaling_none_takes_inputs_as_they_are_and_other_values_are_refused(write):
    body = """
        input: [8, 8, 3]
        input_scaling: {mode}
        layers:
          - Conv2D: {{filters: 4, kernel_size: 3, name: c}}
    """
    cfg, _, _ = check_file(write(body.format(mode="none")))
    assert cfg.ok and cfg.input_scaling == "none"
    assert [(n.name, n.inputs) for n in cfg.nodes] == [("c", ["input"])]
    cfg, _, _ = check_file(write(body.format(mode="auto")))
    assert [n.name for n in cfg.nodes] == ["input_scaling", "c"]
    for bad in ("null", "off", "1"):
        cfg, _, _ = check_file(write(body.format(mode=bad)))
        (finding,) = [f for f in cfg.findings if f.severity == "error"]
        assert finding.message.startswith("input_scaling must be 'auto'")
        assert (finding.line, finding.path) == (2, "input_scaling")


@pytest.mark.parametrize(
    ("ignore", "message"),
    [
        ("dead-layer", "ignore is a list of rule ids: write [dead-layer]; received 'dead-layer'"),
        ("5", "ignore is a list of rule ids, e.g. [dead-layer]; received 5"),
    ],
)
def test_lint_ignore_that_is_not_a_list_says_how_to_write_it(write, ignore, message):
    # found by the stranger tests: `ignore: dead-layer` gave pydantic's "Input should be a
    # valid list"
    text = f"input: [8, 8, 1]\nlayers:\n  - Flatten\nlint: {{ignore: {ignore}}}\n"
    _, _, findings = check_file(write(text))
    assert [(f.line, f.column, f.path, f.message) for f in findings] == [
        (4, 16, "lint.ignore", message)
    ]


@pytest.mark.parametrize(
    ("optimizer", "message"),
    [
        (
            "{adam: {learning_rate: 1e-4}}",
            "adam.learning_rate must be a number or true/false; "
            "received '1e-4' (YAML reads 1e-4 as text: write 0.0001)",
        ),
        (
            "{sgd: {momentum: 9e-1}}",
            "sgd.momentum must be a number or true/false; "
            "received '9e-1' (YAML reads 9e-1 as text: write 0.9)",
        ),
        (
            "{adam: {epsilon: 1e-20}}",
            "adam.epsilon must be a number or true/false; "
            "received '1e-20' (YAML reads 1e-20 as text: write 1.0e-20)",
        ),
    ],
)
def test_an_optimizer_argument_in_e_notation_says_how_to_write_it(write, optimizer, message):
    # `learning_rate: 1e-4` is text to YAML 1.1; layer arguments and the tune space said
    # so, the optimizer did not
    text = f"input: [8, 8, 1]\nlayers:\n  - Flatten\ncompile: {{optimizer: {optimizer}}}\n"
    _, _, findings = check_file(write(text))
    assert [f.message for f in findings if f.severity == "error"] == [message]
