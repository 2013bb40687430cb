"""Keep the README true: its first commands, rules table and zoo table follow the code."""

from __future__ import annotations

import re

from cnnbuild.catalog import REGISTRY
from cnnbuild.checks import RULES
from tests.conftest import CONFIGS, ROOT

README = (ROOT / "README.md").read_text()


def test_first_two_commands_are_demo_and_test():
    block = README.split("```", 2)[1].strip().splitlines()
    assert [line.split()[:2] for line in block[:2]] == [["make", "demo"], ["make", "test"]]


def test_every_rule_is_in_the_rules_table_with_its_severity():
    for rule in RULES.values():
        assert re.search(rf"^\| `{re.escape(rule.id)}` \| {rule.severity} \|", README, re.M), (
            rule.id
        )


def test_every_layer_and_zoo_config_is_documented():
    for kind in REGISTRY:
        assert f"| {kind} |" in README, kind
    for path in (CONFIGS / "zoo").glob("*.yaml"):
        assert f"`{path.name}`" in README, path.name
