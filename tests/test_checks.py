"""Lint rules: each has a YAML that triggers it (at an exact line and column) and the
same YAML fixed, which does not. Plus ignoring, --strict, and the rules table."""

from __future__ import annotations

import pytest

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
    "bias-before-bn": (4, 5, "info", [("kernel_size: 3}", "kernel_size: 3, use_bias: false}")]),
    "duplicate-name": (
        5,
        66,
        "error",
        [("relu, name: c}\n  - GlobalAverage", "relu, name: d}\n  - GlobalAverage")],
    ),
    "duplicate-key": (7, 1, "error", [("name: dup_keys_again\n", "")]),
}


def findings_of(path, rule):
    _, _, findings = check_file(path)
    return [f for f in findings if f.rule == rule]


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_triggers_at_the_exact_position(rule):
    line, column, severity, _ = CASES[rule]
    found = findings_of(LINT / f"{rule}.yaml", rule)
    assert [(f.line, f.column, f.severity) for f in found] == [(line, column, severity)]
    if RULES[rule].check is not None:  # core rules word their own hints
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
    assert {r.id for r in RULES.values() if r.check is not None} <= set(CASES)


@pytest.mark.parametrize(
    ("loss", "units", "activation", "message"),
    [
        ("binary_crossentropy", 10, None, "binary_crossentropy"),
        ("categorical_crossentropy", 10, None, "one-hot"),
    ],
)
def test_loss_that_does_not_fit_the_labels(write, loss, units, activation, message):
    path = write(f"""
        name: loss_check
        input: [32, 32, 3]
        layers:
          - GlobalAveragePooling2D
          - Dense: {{units: {units}}}
        compile: {{loss: {loss}, from_logits: true}}
        train: {{dataset: cifar10}}
    """)
    found = findings_of(path, "classes-mismatch")
    assert found and message in found[0].message, [f.message for f in found]


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
