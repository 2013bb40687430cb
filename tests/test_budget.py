"""The `budget:` section: amounts (1.5M, 10G, 64MiB, 10%), warn/fail tiers, ceiling
findings at the position of their key, the JSON Schema, and views that are not blocked."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from cnnbuild.schema.jsonschema import json_schema
from cnnbuild.schema.sections import BudgetConfig, Limit, format_amount, parse_amount
from cnnbuild.validate import check_file

MODEL = """\
name: small
input: [32, 32, 3]
layers:
  - Conv2D: {filters: 32, kernel_size: 3, activation: relu}
  - GlobalAveragePooling2D
  - Dense: {units: 10}
"""
# 1,226 parameters, 777,920 MACs, 4,904 bytes of float32 weights


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (1500000, "count", 1_500_000),
        ("1.5M", "count", 1_500_000),
        ("10G", "count", 10_000_000_000),
        ("250K", "count", 250_000),
        (" 2 T ", "count", 2_000_000_000_000),
        ("64MiB", "bytes", 64 * 2**20),
        ("1.5GiB", "bytes", 1.5 * 2**30),
        ("512KiB", "bytes", 512 * 1024),
        ("3M", "bytes", 3_000_000),
        ("10%", "percent", 10),
        (7.5, "percent", 7.5),
        ("0%", "percent", 0),
    ],
)
def test_amounts(value, unit, expected):
    assert parse_amount(value, unit) == expected


@pytest.mark.parametrize(
    ("value", "unit", "message"),
    [
        ("1.5X", "count", "unknown suffix 'X' in '1.5X'; suffixes: K, M, G, T"),
        ("64MiB", "count", "unknown suffix 'MiB'"),
        ("10%", "count", "expected a number or a string like 1.5M; received '10%'"),
        ("10M", "percent", "unknown suffix 'M' in '10M'; suffixes: none (a number or N%)"),
        (-1, "count", "expected a number >= 0; received -1"),
        (True, "count", "received True"),
        ("", "bytes", "expected a number or a string like 64MiB"),
        ([1], "count", "received [1]"),
        (float("nan"), "count", "expected a number >= 0"),
        # found by the stranger tests: a YAML integer too big for a float was a traceback
        (10**400, "count", "expected a number >= 0; received an integer too big"),
        ("9" * 400, "count", "expected a finite number; received 400 digits"),
        ("10%", "count", "(a percent is a growth limit: budget.growth)"),
        ("2e6", "count", "received '2e6' (YAML 1.1 reads 2e6 as text: write 2000000 or 1.5M)"),
        ("1e-3", "percent", "(YAML 1.1 reads 1e-3 as text: write 0.001 or 10%)"),
    ],
)
def test_bad_amounts(value, unit, message):
    with pytest.raises(ValueError) as exc:
        parse_amount(value, unit)
    assert message in str(exc.value)


def test_a_growth_that_is_not_a_mapping_says_what_it_takes(write):
    _, _, findings = check_file(write(MODEL + "budget:\n  growth: 10%\n"))
    assert [(f.line, f.column, f.path) for f in findings] == [(8, 11, "budget.growth")]
    assert findings[0].message == (
        "growth must be a mapping of a figure to a percent, e.g. {params: 10%, macs: 5%}; "
        "received '10%'"
    )


def test_a_huge_integer_limit_is_a_finding_not_a_traceback(cli, write):
    result = cli("validate", write(MODEL + "budget:\n  params: " + "9" * 400 + "\n"))
    assert result.exit_code == 1
    assert "8:11: error: budget.params: expected a number >= 0" in result.stdout


def test_tiers():
    cfg = BudgetConfig(
        params="1.5M", macs={"warn": "1G", "fail": "10G"}, growth={"params": {"warn": "5%"}}
    )
    assert cfg.params == Limit(warn=None, fail=1_500_000)
    assert cfg.macs == Limit(warn=1e9, fail=1e10)
    assert cfg.growth.params == Limit(warn=5.0, fail=None)
    assert format_amount(1_500_000, "count") == "1,500,000 (1.5M)"
    assert format_amount(64 * 2**20, "bytes") == "67,108,864 bytes (64 MiB)"
    assert format_amount(999, "count") == "999"
    assert format_amount(12.5, "percent") == "12.5%"


def budget_findings(write, budget: str):
    path = write(MODEL + budget)
    _, _, findings = check_file(path)
    return [f for f in findings if f.rule == "budget"]


def test_ceilings_written_with_suffixes_are_understood(write):
    found = budget_findings(write, "budget:\n  params: 1.2K\n  macs: 0.5M\n  weights: 64MiB\n")
    assert [(f.line, f.column, f.severity, f.path) for f in found] == [
        (8, 3, "error", "budget.params"),
        (9, 3, "error", "budget.macs"),
    ]
    assert found[0].message == ("parameters: 1,226 (1.226K), over the fail limit of 1,200 (1.2K)")
    assert found[1].message == (
        "MACs per image: 777,920 (777.9K), over the fail limit of 500,000 (500K)"
    )
    assert budget_findings(write, "budget:\n  params: 1.5M\n  macs: 10G\n") == []


def test_warn_tier_is_a_warning_fail_tier_an_error(write):
    budget = "budget:\n  params: {warn: 1K, fail: 2K}\n  activation_memory: {warn: 1KiB}\n"
    found = budget_findings(write, budget)
    assert [(f.path, f.severity) for f in found] == [
        ("budget.params", "warning"),
        ("budget.activation_memory", "warning"),
    ]
    assert "over the warn limit of 1,000 (1K)" in found[0].message
    assert budget_findings(write, "budget:\n  params: {warn: 1K, fail: 1.1K}\n")[0].severity == (
        "error"
    )


def test_validate_fails_and_views_still_show_the_model(cli, write):
    path = write(MODEL + "budget:\n  params: 1K\n")
    result = cli("validate", path)
    assert result.exit_code == 1, result.output
    assert f"{path}:8:3: error: budget.params: parameters: 1,226" in result.stdout
    view = cli("summary", "--static", path)
    assert view.exit_code == 0, view.output
    assert "Total params: 1,226" in view.stdout
    assert cli("validate", "--ignore", "budget", path).exit_code == 0
    ignored = write(MODEL + "budget:\n  params: 1K\nlint: {ignore: [budget]}\n", "ign.yaml")
    assert cli("validate", ignored).exit_code == 0


def test_json_schema_takes_budgets_and_refuses_bad_ones():
    schema = json_schema()
    good = yaml.safe_load(
        MODEL
        + "budget:\n  params: 1.5M\n  macs: {warn: 1G, fail: 10G}\n  activation_memory: 64MiB\n"
        "  weights: 1000000\n  growth: {params: 10%, macs: 5}\n"
    )
    jsonschema.validate(good, schema)
    for bad in ({"params": "1.5X"}, {"flops": 1}, {"growth": {"params": "10M"}}, {"macs": -1}):
        data = {**good, "budget": bad}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(data, schema)


def test_summary_and_trace_show_weight_bytes_and_receptive_field(cli, write):
    path = write(MODEL)
    data = json.loads(cli("summary", "--static", "--json", path).stdout)
    assert data["weight_bytes"] == {"float32": 4904, "bfloat16": 2452, "int8": 1226}
    assert data["receptive_field"] == "whole"
    assert data["activation_bytes"] == 4 * (32 * 32 * 3 * 2 + 30 * 30 * 32 + 32 + 10)
    text = cli("summary", "--static", path).stdout
    assert "Weights: 4.8 KiB float32, 2.4 KiB bfloat16, 1.2 KiB int8" in text
    assert "Receptive field of the output: whole image (cumulative stride 1x1)" in text
    trace = cli("trace", path).stdout
    assert "Weights: 4.8 KiB float32, 2.4 KiB bfloat16, 1.2 KiB int8" in trace
    tjson = json.loads(cli("trace", "--json", path).stdout)
    assert tjson["weight_bytes"]["int8"] == 1226
    assert tjson["receptive_field"] == "whole"


FREE = MODEL.replace("input: [32, 32, 3]", "input: [null, null, 3]")


def test_a_size_limit_on_a_free_input_size_is_never_a_silent_pass(write):
    # found by the stranger tests: with a free height/width the free-size layers count 0
    # MACs, so `macs: 100` passed a model whose convolution costs 864 MACs per pixel
    budget = "budget:\n  params: 1.5K\n  macs: 100\n  activation_memory: {warn: 1KiB}\n"
    _, _, findings = check_file(write(FREE + budget))
    found = [f for f in findings if f.rule == "budget"]
    assert [(f.line, f.path, f.severity) for f in found] == [
        (9, "budget.macs", "error"),
        (10, "budget.activation_memory", "warning"),
    ]
    assert found[0].message.startswith(
        "cannot check MACs per image: it depends on the image size, and the input "
        "(None, None, 3) of "
    )
    assert found[0].hint == "give the input a fixed size, or remove the limit"


def test_a_growth_limit_on_a_free_input_size_is_never_a_silent_pass(write):
    from cnnbuild.checks import growth_findings
    from cnnbuild.validate import load_traced

    budget = "budget:\n  growth: {params: 500%, macs: {warn: 10%}}\n"
    _, old = load_traced(write(FREE + budget, "old.yaml"))
    _, new = load_traced(write(FREE.replace("units: 10", "units: 20") + budget, "new.yaml"))
    found = growth_findings(new, old, "HEAD")
    assert [(f.path, f.severity) for f in found] == [("budget.growth.macs", "warning")]
    assert "cannot check MACs per image" in found[0].message


@pytest.mark.parametrize(
    ("budget", "column", "path", "message"),
    [
        ("{params: }", 17, "budget.params", "the limit is empty; give an amount (e.g. 1.5M)"),
        ("{params: {warn: null, fail: null}}", 18, "budget.params", "warn and fail are empty"),
        ("{macs: {warn: 5M, fail: }}", 16, "budget.macs", "fail is empty"),
        (
            "{growth: {params: }}",
            26,
            "budget.growth.params",
            "the limit is empty; give an amount (e.g. 10%)",
        ),
        ("{growth: }", 17, "budget.growth", "growth must be a mapping"),
    ],
)
def test_an_empty_or_null_limit_is_an_error_at_its_key(write, budget, column, path, message):
    _, _, findings = check_file(write(MODEL + f"budget: {budget}\n"))
    assert [(f.severity, f.line, f.path) for f in findings] == [("error", 7, path)]
    assert message in findings[0].message
    assert findings[0].column == column


def test_an_unknown_growth_key_gets_a_did_you_mean(cli, write):
    result = cli("validate", write(MODEL + "budget:\n  growth: {parms: 10%}\n"))
    assert result.exit_code == 1
    assert "budget.growth: unknown growth limit 'parms'; did you mean 'params'?" in result.stdout
