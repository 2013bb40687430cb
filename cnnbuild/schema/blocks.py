"""Typed block syntax: ``Residual``, ``Parallel`` and the templates of ``blocks:``.

The expander (:mod:`cnnbuild.expand`) validates each block with these models and walks
the result; the JSON Schema is generated from them. Layer lists stay plain lists here:
each item is a layer, a block or a template use, checked by the expander one by one so
that one bad layer never hides the others.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from cnnbuild.schema.layers import merge_kinds
from cnnbuild.schema.types import Bool, Choice, Int, LayerName

MERGES = merge_kinds()
BLOCK_KINDS = ("Residual", "Parallel")
STRUCTURAL = ("inputs", "repeat")
MAX_REPEAT = 1_000
TEMPLATE_NAME = r"[a-z_][A-Za-z0-9_]*"
PARAM_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# pydantic resolves every "$ref" it generates, so the JSON Schema writer puts the real
# reference to its `layer` definition in place of this marker.
LAYER_REF = {"x-cnnbuild-ref": "layer"}
LAYER_LIST_SCHEMA = {"type": ["array", "null"], "items": LAYER_REF}


def _layer_list(value: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"expected a list of layers; received {type(value).__name__}")
    return value


LayerList = Annotated[list, BeforeValidator(_layer_list), WithJsonSchema(LAYER_LIST_SCHEMA)]
Merge = Choice(MERGES, "merge")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Merged(_Strict):
    name: LayerName | None = None
    axis: Int() | None = None
    trainable: Bool = True  # false: every layer inside is frozen

    @model_validator(mode="after")
    def _axis_for_concatenate(self) -> _Merged:
        if self.axis is not None and self.merge != "Concatenate":
            raise ValueError(f"axis applies to merge: Concatenate, not {self.merge}")
        return self


class ResidualBlock(_Merged):
    """A main path and a shortcut (identity when omitted) from one input, merged (Add)."""

    main: LayerList
    shortcut: LayerList = []
    merge: Merge = "Add"


class ParallelBlock(_Merged):
    """Branches from one input, merged (Concatenate)."""

    branches: Annotated[list[LayerList], Field(min_length=2)]
    merge: Merge = "Concatenate"


BLOCK_MODELS: dict[str, type[_Merged]] = {"Residual": ResidualBlock, "Parallel": ParallelBlock}


def _params(value: Any) -> dict[str, Any]:
    """``[filters, {strides: 1}]`` (bare names are required) or ``{strides: 1}``.

    Returns:
        Name -> default, with :data:`REQUIRED` for a parameter that has none.
    """
    if value is None:
        return {}
    entries = list(value.items()) if isinstance(value, dict) else value
    if not isinstance(entries, list):
        raise ValueError("params is a list of names and {name: default} mappings")
    out: dict[str, Any] = {}
    for entry in entries:
        if isinstance(entry, str):
            key, default = entry, REQUIRED
        elif isinstance(entry, tuple):
            key, default = entry
        elif isinstance(entry, dict) and len(entry) == 1:
            ((key, default),) = entry.items()
        else:
            raise ValueError(f"a parameter is a name or {{name: default}}; received {entry!r}")
        if not isinstance(key, str) or not re.fullmatch(PARAM_NAME, key):
            raise ValueError(f"a parameter name is letters, digits and '_'; received {key!r}")
        if key in ("name", *STRUCTURAL):
            raise ValueError(f"{key!r} is reserved and cannot be a block parameter")
        out[key] = default
    return out


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

Params = Annotated[
    dict,
    BeforeValidator(_params),
    WithJsonSchema(
        {
            "description": "parameter names ([filters, {strides: 1}]) or {name: default}",
            "type": ["array", "object", "null"],
        }
    ),
]


class Template(_Strict):
    """A reusable block of ``blocks:``, used like a layer: ``- name: {param: value}``.

    Attributes:
        params: parameter names and defaults; the layers refer to them as ``$name`` or in
            integer arithmetic (``$filters * 4``).
        inputs: names for the tensors the block reads, e.g. ``[x, skip]``; a use gives
            as many layer names in ``inputs:``. Default: one input, named ``input``.
        layers: the layers; the first reads the first input unless it says otherwise.
    """

    params: Params = {}
    inputs: Annotated[list[LayerName], Field(min_length=1)] | None = None
    layers: LayerList
    description: str | None = None

    @model_validator(mode="after")
    def _distinct(self) -> Template:
        names = self.inputs or []
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"input {name!r} is named twice")
            if name in self.params:
                raise ValueError(f"{name!r} is both an input and a parameter")
        return self

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs or ["input"])
