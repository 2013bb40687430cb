"""``cnnbuild layers`` and ``--version``: the registry as the validator sees it."""

from __future__ import annotations

import json

import pytest

import cnnbuild
from cnnbuild.catalog import REGISTRY
from cnnbuild.validate import check_file


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"cnnbuild {cnnbuild.__version__}"


def test_list_has_every_registered_layer(cli):
    result = cli("layers", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["name"], r["group"], r["doc"]) for r in rows] == [
        (k.name, k.group, k.doc) for k in REGISTRY.values()
    ]
    table = cli("layers")
    assert table.exit_code == 0
    for kind in REGISTRY.values():
        assert kind.name in table.stdout


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_layer_lists_its_pydantic_fields(cli, name):
    result = cli("layers", name.lower(), "--json")
    assert result.exit_code == 0, result.output
    detail = json.loads(result.stdout)
    fields = REGISTRY[name].args.model_fields
    assert [a["name"] for a in detail["args"]] == list(fields)
    for arg in detail["args"]:
        field = fields[arg["name"]]
        assert arg["required"] == field.is_required(), arg
        if not arg["required"]:
            assert arg["default"] == json.loads(json.dumps(field.default)), arg
        assert arg["type"], arg


def _conv(write, value: str):
    path = write(
        f"""
        name: m
        input: [32, 32, 3]
        layers:
          - Conv2D: {{filters: 4, kernel_size: 3, {value}}}
          - GlobalAveragePooling2D
          - Dense: {{units: 10}}
        compile: {{optimizer: adam, loss: sparse_categorical_crossentropy, from_logits: true}}
        """
    )
    return [f for f in check_file(path, frozenset())[2] if f.severity == "error"]


def test_shown_ranges_and_choices_are_what_validate_enforces(cli, write):
    detail = json.loads(cli("layers", "Conv2D", "--json").stdout)
    types = {a["name"]: a["type"] for a in detail["args"]}
    assert types["groups"] == "int in [1, 2147483647]"
    assert types["padding"] == "one of: valid, same"
    assert types["strides"] == "int in [1, 2147483647] | [int in [1, 2147483647]] x 2"
    assert _conv(write, "groups: 1") == []
    assert _conv(write, "groups: 0")
    assert _conv(write, "groups: 2147483648")
    assert _conv(write, "padding: same") == []
    assert _conv(write, "padding: causal")
    assert _conv(write, "strides: [2, 1]") == []
    assert _conv(write, "strides: [2, 0]")


def test_unknown_layer_suggests(cli):
    result = cli("layers", "Conv2d3")
    assert result.exit_code == 2
    assert "unknown layer 'Conv2d3'; did you mean 'Conv2D'?" in result.stderr


@pytest.mark.parametrize("name", ["Input", "InputLayer"])
def test_keras_input_is_not_a_layer_and_says_where_it_goes(cli, name):
    # found by the stranger tests: `layers Input` suggested 'Dropout'
    result = cli("layers", name)
    assert result.exit_code == 2
    assert f"unknown layer '{name}'; a config's input is not a layer: give it once" in (
        result.stderr
    )
    assert "Dropout" not in result.stderr


def test_an_alias_shows_its_keras_class(cli):
    result = cli("layers", "MaxPool2D", "--json")
    assert result.exit_code == 0, result.output
    detail = json.loads(result.stdout)
    assert detail["name"] == "MaxPooling2D" and "MaxPool2D" in detail["aliases"]
    assert cli("layers", "maxpool2d", "--json").exit_code == 0
