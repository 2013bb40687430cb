"""Findings in the formats CI systems read (cnnbuild/findings_format.py): JSON, GitHub
workflow commands, SARIF."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from tests.test_cli import LINT


def test_json_format(cli):
    result = cli("validate", LINT / "softmax-logits.yaml", "--format", "json")
    assert result.exit_code == 1
    (finding,) = json.loads(result.output)
    assert finding["line"] == 5 and finding["column"] == 24
    assert finding["end_line"] == 5 and finding["end_column"] == 34
    assert finding["severity"] == "error" and finding["rule"] == "softmax-logits"
    assert finding["file"].endswith("softmax-logits.yaml")


def test_github_format(cli):
    result = cli("validate", LINT / "linear-stack.yaml", "--format", "github")
    assert result.exit_code == 0
    line = result.output.strip()
    assert line.startswith(f"::warning file={LINT / 'linear-stack.yaml'},line=4,col=5,")
    assert "title=cnnbuild linear-stack::" in line
    result = cli("validate", LINT / "softmax-logits.yaml", "--format", "github")
    assert result.output.startswith("::error file=")


def test_sarif_format_is_valid_sarif(cli):
    """Checked against the official OASIS SARIF 2.1.0 schema (tests/data/sarif-schema-2.1.0.md)."""
    jsonschema = pytest.importorskip("jsonschema")
    result = cli(
        "validate",
        LINT / "bias-before-bn.yaml",
        LINT / "huge-dense.yaml",
        ROOT / "tests/data/errors",
        "--format",
        "sarif",
    )
    log = json.loads(result.output)
    official = json.loads((ROOT / "tests/data/sarif-schema-2.1.0.json").read_text())
    validator = jsonschema.Draft4Validator(official)
    assert [e.message for e in validator.iter_errors(log)] == []
    assert log["version"] == "2.1.0"
    results = log["runs"][0]["results"]
    assert {"bias-before-bn", "huge-dense", "schema", "yaml"} <= {r["ruleId"] for r in results}
    assert {r["level"] for r in results} == {"note", "warning", "error"}
    region = results[0]["locations"][0]["physicalLocation"]["region"]
    assert region["startLine"] >= 1 and region["startColumn"] >= 1
    ids = [r["id"] for r in log["runs"][0]["tool"]["driver"]["rules"]]
    for r in results:
        assert ids[r["ruleIndex"]] == r["ruleId"]
    # the schema is strict enough to catch a broken log
    broken = {**log, "runs": [{"results": results}]}
    assert list(validator.iter_errors(broken))
