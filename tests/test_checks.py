"""Lint rules: each has a YAML that triggers it (at an exact line and column) and the
same YAML fixed, which does not. Plus ignoring, --strict, and the rules table."""

from __future__ import annotations

import pytest

from cnnbuild.catalog import LOSSES, loss_spec, one_hot_classes, resolved_compile
from cnnbuild.checks import RULES
from cnnbuild.validate import check_file
from tests.conftest import ROOT

LINT = ROOT / "tests" / "data" / "lint"

# rule -> (line, column, severity, the fix as (old, new) text replacements)
CASES = {
    "dense-on-4d": (5, 5, "warning", [("  - Dense", "  - Flatten\n  - Dense")]),
    "softmax-logits": (5, 24, "error", [("from_logits: true", "from_logits: false")]),
    "classes-mismatch": (5, 13, "error", [("units: 100", "units: 10")]),
    "collapse-1x1": (5, 5, "warning", [("kernel_size: 3, strides: 2", "kernel_size: 3")]),
    "window-exceeds-input": (4, 20, "warning", [("pool_size: 8", "pool_size: 2")]),
    "stride-exceeds-kernel": (4, 42, "warning", [("strides: 3", "strides: 2")]),
    "linear-stack": (4, 5, "warning", [("kernel_size: 3}", "kernel_size: 3, activation: relu}")]),
    "huge-dense": (
        6,
        5,
        "warning",
        [("max_dense_params_million: 1", "max_dense_params_million: 40")],
    ),
    "stacked-scaling": (
        5,
        17,
        "warning",
        [("  - Rescaling: {scale: 0.00392156862745098}\n  - Rescaling", "  - Rescaling")],
    ),
    "bias-before-bn": (4, 5, "info", [("kernel_size: 3}", "kernel_size: 3, use_bias: false}")]),
    "duplicate-name": (
        5,
        66,
        "error",
        [("relu, name: c}\n  - GlobalAverage", "relu, name: d}\n  - GlobalAverage")],
    ),
    "duplicate-key": (7, 1, "error", [("name: dup_keys_again\n", "")]),
    "budget": (9, 3, "error", [("params: 1.2K", "params: 1.5K")]),
}


def findings_of(path, rule):
    _, _, findings = check_file(path)
    return [f for f in findings if f.rule == rule]


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_triggers_at_the_exact_position(rule):
    line, column, severity, _ = CASES[rule]
    found = findings_of(LINT / f"{rule}.yaml", rule)
    assert [(f.line, f.column, f.severity) for f in found] == [(line, column, severity)]
    if RULES[rule].lint:  # core rules word their own hints
        assert found[0].hint == RULES[rule].hint
    assert found[0].format().endswith(f"[{rule}]")


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_does_not_trigger_on_the_fixed_config(rule, tmp_path):
    text = (LINT / f"{rule}.yaml").read_text()
    for old, new in CASES[rule][3]:
        assert old in text
        text = text.replace(old, new)
    fixed = tmp_path / f"{rule}.yaml"
    fixed.write_text(text)
    assert findings_of(fixed, rule) == []
    _, _, everything = check_file(fixed)
    assert not [f for f in everything if f.severity == "error"], everything


def test_every_lint_rule_has_a_case():
    assert {r.id for r in RULES.values() if r.lint} <= set(CASES)


def _loss_config(write, loss: str, units: int, extra: str = "") -> list:
    path = write(f"""
        name: loss_check
        input: [32, 32, 3]
        layers:
          - GlobalAveragePooling2D
          - Dense: {{units: {units}}}
        compile: {{loss: {loss}{extra}}}
        train: {{dataset: cifar10}}
    """)
    return findings_of(path, "classes-mismatch")


@pytest.mark.parametrize(
    ("loss", "units", "message"),
    [
        ("binary_crossentropy", 10, "binary_crossentropy is for one yes/no output"),
        ("hinge", 1, "hinge is for one yes/no output"),
        ("categorical_crossentropy", 100, "the last layer needs units: 10"),
        ("sparse_categorical_crossentropy", 9, "the last layer needs units: 10"),
    ],
)
def test_loss_that_does_not_fit_the_labels(write, loss, units, message):
    found = _loss_config(write, loss, units)
    assert [message in f.message for f in found] == [True], [f.message for f in found]


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_lint_agrees_with_the_trainers_label_form(write, loss):
    """A loss fits integer-labelled cifar10 exactly when its label form lets the
    trainer feed it: one-hot losses are one-hot encoded by the trainer, so no error."""
    found = _loss_config(write, loss, 10)
    assert bool(found) == (loss_spec(loss).labels == "binary"), [f.message for f in found]
    assert one_hot_classes(loss, 10) == (10 if loss_spec(loss).labels == "one_hot" else None)


@pytest.mark.parametrize(
    ("activation", "written", "error"),
    [
        ("softmax", None, False),
        (None, None, False),
        ("softmax", "true", True),
        ("sigmoid", "true", True),
        (None, "false", True),
        ("softmax", "false", False),
        (None, "true", False),
        ("log_softmax", "true", False),
    ],
)
def test_softmax_logits_fires_only_on_a_written_contradiction(write, activation, written, error):
    act = f", activation: {activation}" if activation else ""
    logits = f", from_logits: {written}" if written else ""
    path = write(f"""
        name: head
        input: [4, 4, 1]
        layers:
          - Flatten
          - Dense: {{units: 3{act}}}
        compile: {{loss: sparse_categorical_crossentropy{logits}}}
    """)
    assert bool(findings_of(path, "softmax-logits")) == error
    cfg, _, _ = check_file(path)
    resolved = resolved_compile(cfg)
    expected = {"true": True, "false": False}.get(written, activation not in ("softmax",))
    assert resolved["from_logits"] is expected
    assert resolved["loss"] == "sparse_categorical_crossentropy"


@pytest.mark.parametrize(
    ("layers", "fires"),
    [
        (["Rescaling: {scale: 0.00392156862745098}", "Normalization"], False),
        (["Rescaling: {scale: 0.00392156862745098}", "Rescaling: {scale: 2}"], True),
        (["Normalization", "Normalization"], True),
        (["Rescaling: {scale: 0.5}", "RandomFlip", "Rescaling: {scale: 0.5}"], True),
        (
            [
                "Rescaling: {scale: 0.5, name: input_scaling}",
                "Conv2D: {filters: 2, kernel_size: 1, activation: relu}",
                "Rescaling: {scale: [0.0039, 0.0039]}",
            ],
            True,
        ),
        (
            [
                "Rescaling: {scale: 0.5}",
                "Conv2D: {filters: 2, kernel_size: 1, activation: relu}",
                "Rescaling: {scale: 3}",
            ],
            False,
        ),
        (["Rescaling: {scale: [0.5, 0.25]}"], False),
    ],
)
def test_stacked_scaling(write, layers, fires):
    body = "\n".join(f"          - {layer}" for layer in layers)
    path = write(f"""
        name: scalings
        input: [4, 4, 2]
        layers:
{body}
          - Flatten
          - Dense: {{units: 3}}
    """)
    found = findings_of(path, "stacked-scaling")
    assert len(found) == int(fires), [f.format() for f in found]


def test_ignore_in_config_and_on_the_command_line(cli, write):
    text = (LINT / "linear-stack.yaml").read_text()
    quiet = write(text + "lint: {ignore: [linear-stack]}\n")
    assert findings_of(quiet, "linear-stack") == []
    loud = write(text, "loud.yaml")
    result = cli("validate", loud)
    assert result.exit_code == 0 and "[linear-stack]" in result.output
    result = cli("validate", loud, "--ignore", "linear-stack")
    assert result.exit_code == 0 and "[linear-stack]" not in result.output
    result = cli("validate", loud, "--strict")
    assert result.exit_code == 1
    result = cli("validate", loud, "--ignore", "no-such-rule")
    assert result.exit_code == 2 and "not a lint rule id" in result.output


def test_unknown_rule_in_config_is_reported(write):
    path = write((LINT / "linear-stack.yaml").read_text() + "lint: {ignore: [linear-stak]}\n")
    _, _, findings = check_file(path)
    assert [
        (f.line, f.column, f.severity)
        for f in findings
        if "did you mean 'linear-stack'" in f.message
    ] == [(9, 17, "warning")]


def test_core_rules_cannot_be_ignored(cli):
    result = cli("validate", LINT / "duplicate-key.yaml", "--ignore", "duplicate-key")
    assert result.exit_code == 2


def test_a_decoder_lints_like_keras_models_are_written(write):
    """A transposed convolution wider than its 1x1 input is how decoders start (no
    window warning); a convolution feeding another through UpSampling2D with no
    activation is still one linear map."""
    path = write("""
        name: decoder
        input: [1, 1, 8]
        layers:
          - Conv2DTranspose: {filters: 8, kernel_size: 4, activation: relu}
          - Conv2D: {filters: 4, kernel_size: 1}
          - UpSampling2D
          - Conv2D: {filters: 2, kernel_size: 3, padding: same, activation: relu}
    """)
    _, tr, findings = check_file(path)
    assert tr.output_shape == (8, 8, 2)
    assert [(f.rule, f.line) for f in findings] == [("linear-stack", 5)]
