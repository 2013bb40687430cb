"""The JSON Schema (draft-07) of the config format, generated from the pydantic models
the validator uses, for editors (yaml-language-server supports draft-07 and older)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter

from cnnbuild.catalog import ALIASES, REGISTRY
from cnnbuild.config import INPUT_SCALING_MODES, NAME_RULE, TOP_KEYS
from cnnbuild.schema.blocks import BLOCK_KINDS, BLOCK_MODELS, LAYER_REF, Template
from cnnbuild.schema.blocks import TEMPLATE_NAME as _TEMPLATE_NAME
from cnnbuild.schema.sections import (
    BudgetConfig,
    CompileConfig,
    Freeze,
    InitConfig,
    LintConfig,
    TrainConfig,
)
from cnnbuild.schema.tune import TuneSection

DRAFT = "http://json-schema.org/draft-07/schema#"
TEMPLATE_NAME = f"^{_TEMPLATE_NAME}$"


def _draft07(node: Any) -> Any:
    """Rewrite pydantic's 2020-12 output (``$defs``, ``prefixItems``) as draft-07."""
    if node == LAYER_REF:
        return {"$ref": "#/definitions/layer"}
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "prefixItems":
                out["items"] = _draft07(value)
                out["additionalItems"] = False
            elif key == "$ref":
                out[key] = value.replace("#/$defs/", "#/definitions/")
            elif key == "title":
                continue
            else:
                out[key] = _draft07(value)
        return out
    if isinstance(node, list):
        return [_draft07(v) for v in node]
    return node


def _model(model: type, defs: dict, extra: dict | None = None) -> dict:
    schema = model.model_json_schema(ref_template="#/definitions/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        defs[name] = _draft07(sub)
    schema = _draft07(schema)
    if extra:
        schema["properties"].update(extra)
    schema["additionalProperties"] = False
    return schema


_PARAM_NAME = r"\$[A-Za-z_][A-Za-z0-9_]*"
PARAM = {
    "type": "string",
    "pattern": rf"^[\s\d()+*/-]*(?:{_PARAM_NAME}[\s\d()+*/-]*)+$",
    "description": "a parameter of the block ($name) or integer arithmetic ($filters * 4)",
}
NAME_PARAM = {
    "type": "string",
    "pattern": rf"^(?=.*\$)(?:[A-Za-z0-9_.-]|{_PARAM_NAME}|\$\{{[A-Za-z_][A-Za-z0-9_]*\}})+$",
    "description": "a layer name built from the block's parameters: conv_dw_$id, ${stage}_${id}",
}


def _in_template(node: Any, templated: set[str], wrap: bool) -> Any:
    """A definition as used inside ``blocks:``, where any argument may be ``$param``."""
    if isinstance(node, list):
        return [_in_template(v, templated, False) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "$ref" and value.rsplit("/", 1)[-1] in templated:
            out[key] = "#/definitions/template_" + value.rsplit("/", 1)[-1]
        elif key == "properties" and wrap:
            out[key] = {
                k: {
                    "anyOf": [
                        _in_template(v, templated, False),
                        NAME_PARAM if k == "name" else PARAM,
                    ]
                }
                for k, v in value.items()
            }
        else:
            out[key] = _in_template(value, templated, False)
    return out


STRUCTURAL = {
    "inputs": {
        "description": "names of earlier layers to read (default: the previous one)",
        "oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1},
        ],
    },
    "repeat": {"type": "integer", "minimum": 1, "description": "stack this layer N times"},
}


def _layer_kinds(defs: dict) -> dict:
    """One definition per registered kind (into ``defs``); the layer-list properties, a
    Keras alias taking its class's definition."""
    layer_props = {}
    for kind in REGISTRY.values():
        schema = _model(kind.args, defs, STRUCTURAL)
        schema["description"] = f"keras.layers.{kind.name}: {kind.doc}"
        defs[kind.name] = schema
        for name in (kind.name, *kind.aliases):
            layer_props[name] = {
                "oneOf": [{"$ref": f"#/definitions/{kind.name}"}, {"type": "null"}]
            }
    return layer_props


def _layer_definition(layer_props: dict) -> dict:
    """An item of a layer list: a bare name, or ``{KIND: {args}}``, or a block's use."""
    return {
        "oneOf": [
            {
                "type": "string",
                "anyOf": [{"enum": [*REGISTRY, *ALIASES]}, {"pattern": TEMPLATE_NAME}],
            },
            {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "properties": layer_props,
                "patternProperties": {
                    TEMPLATE_NAME: {
                        "type": ["object", "null"],
                        "description": "a block from `blocks:`",
                    }
                },
                "additionalProperties": False,
            },
        ]
    }


def _template_schema(defs: dict) -> dict:
    """A template of ``blocks:``; its layers' definitions (``template_*``, where any
    argument may be a ``$param``) go into ``defs``."""
    templated = {*REGISTRY, *BLOCK_KINDS, "layer"}
    for name in sorted(templated):
        defs[f"template_{name}"] = _in_template(defs[name], templated, name in REGISTRY)
    template_list = {"type": "array", "items": {"$ref": "#/definitions/template_layer"}}
    template = _model(Template, defs)
    template["properties"]["layers"] = template_list
    template["description"] = "a reusable block, used like a layer: `- NAME: {param: value}`"
    return template


def json_schema() -> dict:
    """The whole schema, as a dict."""
    defs: dict[str, Any] = {}
    layer_props = _layer_kinds(defs)
    layer_list = {"type": "array", "items": {"$ref": "#/definitions/layer"}}
    for kind, model in BLOCK_MODELS.items():
        defs[kind] = _model(model, defs, STRUCTURAL)
        defs[kind]["description"] = (model.__doc__ or "").strip()
    for kind in BLOCK_KINDS:
        layer_props[kind] = {"$ref": f"#/definitions/{kind}"}
    defs["layer"] = _layer_definition(layer_props)
    template = _template_schema(defs)
    props = {
        "name": {"type": "string", "pattern": f"^{NAME_RULE.pattern}$"},
        "description": {"type": "string"},
        "input": {
            "type": "array",
            "minItems": 3,
            "maxItems": 3,
            "description": "[height, width, channels]; height/width may be null",
            "items": [
                {"type": ["integer", "null"], "minimum": 1},
                {"type": ["integer", "null"], "minimum": 1},
                {"type": "integer", "minimum": 1},
            ],
        },
        "input_scaling": {
            "enum": list(INPUT_SCALING_MODES),
            "description": "auto: a Rescaling(1/255) named input_scaling is added unless the "
            "model starts with its own Rescaling or Normalization; none: inputs as they are",
        },
        "layers": layer_list,
        "blocks": {
            "type": "object",
            "propertyNames": {"pattern": TEMPLATE_NAME},
            "additionalProperties": template,
        },
        "init": _model(InitConfig, defs),
        "freeze": TypeAdapter(Freeze).json_schema(),
        "compile": _model(CompileConfig, defs),
        "train": _model(TrainConfig, defs),
        "lint": _model(LintConfig, defs),
        "budget": _model(BudgetConfig, defs),
        "tune": _model(TuneSection, defs),
    }
    assert set(props) == set(TOP_KEYS)
    return {
        "$schema": DRAFT,
        "$id": "https://cnnbuild.dev/schema/cnnbuild.schema.json",
        "title": "cnnbuild model config",
        "type": "object",
        "required": ["input", "layers"],
        "additionalProperties": False,
        "properties": props,
        "definitions": defs,
    }


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"
