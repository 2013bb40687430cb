"""``cnnbuild layers``: the layer registry as tables, read from what the validator uses.

Names, groups and descriptions come from :data:`cnnbuild.catalog.REGISTRY`; each
argument's type, default and allowed range from the JSON Schema of its pydantic model,
so a layer or an argument added to the registry shows up here with no other change.
"""

from __future__ import annotations

import json
from typing import Any

from cnnbuild.catalog import (
    ALIASES,
    INPUT_LAYERS,
    INPUT_WAY,
    REGISTRY,
    LayerKind,
    near_kinds,
    resolve,
)
from cnnbuild.errors import UsageError

_TYPES = {"integer": "int", "number": "float", "boolean": "bool", "string": "str", "null": "null"}


def lookup(name: str) -> LayerKind:
    """The registry entry of ``name`` (case-insensitive).

    Raises:
        UsageError: for an unknown name, with the closest names.
    """
    if resolve(name) is not None:
        return resolve(name)
    folded = {key.lower(): REGISTRY[ALIASES.get(key, key)] for key in (*REGISTRY, *ALIASES)}
    if name.lower() in folded:
        return folded[name.lower()]
    near = near_kinds(name, n=6, cutoff=0.5)
    close = list(dict.fromkeys(ALIASES.get(c, c) for c in near))[:3]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    if name in INPUT_LAYERS:
        hint = f"; a config's input is not a layer: {INPUT_WAY}"
    raise UsageError(
        f"unknown layer {name!r}{hint} (`cnnbuild layers` lists the {len(REGISTRY)} layers)"
    )


def readme_table() -> str:
    """The layers table (Markdown), one row per registered kind: the docs site's layer
    reference opens with it (``docs/hooks/reference.py`` generates the page at build time;
    ``tests/test_docs_site.py`` checks it lists every kind)."""
    rows = [
        "| Layer | Group | What it does | Required | Keras aliases |",
        "|---|---|---|---|---|",
    ]
    for kind in REGISTRY.values():
        required = [n for n, f in kind.args.model_fields.items() if f.is_required()]
        rows.append(
            f"| {kind.name} | {kind.group} | {kind.doc} | {', '.join(required) or '-'} | "
            f"{', '.join(kind.aliases) or '-'} |"
        )
    return "\n".join(rows) + "\n"


def layer_list() -> list[dict]:
    """One row per registered layer: name, group, description."""
    return [{"name": k.name, "group": k.group, "doc": k.doc} for k in REGISTRY.values()]


def _range(node: dict, kind: str) -> str:
    low = node.get("minimum", node.get("exclusiveMinimum"))
    high = node.get("maximum", node.get("exclusiveMaximum"))
    if low is None and high is None:
        return kind
    if high is None:
        return f"{kind} {'>' if 'exclusiveMinimum' in node else '>='} {low}"
    if low is None:
        return f"{kind} {'<' if 'exclusiveMaximum' in node else '<='} {high}"
    left = "(" if "exclusiveMinimum" in node else "["
    right = ")" if "exclusiveMaximum" in node else "]"
    return f"{kind} in {left}{low}, {high}{right}"


def describe_type(node: Any, defs: dict | None = None) -> str:
    """A JSON Schema node as a short, readable type: ``int >= 1``, ``[int >= 1] x 2``,
    ``one of: valid, same``, ``float in [0.0, 1.0)``."""
    defs = defs or {}
    if not isinstance(node, dict):
        return "any"
    if "$ref" in node:
        return describe_type(defs.get(node["$ref"].rsplit("/", 1)[-1], {}), defs)
    for key in ("oneOf", "anyOf"):
        if key in node:
            parts = list(dict.fromkeys(describe_type(sub, defs) for sub in node[key]))
            return " | ".join(parts)
    if "enum" in node:
        names = [json.dumps(v) if not isinstance(v, str) else v for v in node["enum"]]
        return "one of: " + ", ".join(names)
    if "const" in node:
        return json.dumps(node["const"])
    kind = node.get("type")
    if isinstance(kind, list):
        return " | ".join(_TYPES.get(k, k) for k in kind)
    if kind in ("integer", "number"):
        return _range(node, _TYPES[kind])
    if kind == "array":
        items = node.get("items", {})
        if isinstance(items, list):  # draft-07 tuple form
            return "[" + ", ".join(describe_type(i, defs) for i in items) + "]"
        if "prefixItems" in node:
            return "[" + ", ".join(describe_type(i, defs) for i in node["prefixItems"]) + "]"
        size = node.get("minItems")
        count = f" x {size}" if size is not None and size == node.get("maxItems") else ""
        return f"[{describe_type(items, defs)}]{count}"
    if kind == "object":
        names = node.get("propertyNames", {})
        if "enum" in names:
            return "{NAME: {args}} with NAME " + describe_type(names, defs)
        if "properties" in node:
            return "{" + ", ".join(node["properties"]) + "}"
        return "mapping"
    if kind == "string" and "pattern" in node:
        return f"str matching {node['pattern']}"
    return _TYPES.get(kind, kind or "any")


def layer_detail(kind: LayerKind) -> dict:
    """One layer's arguments: name, type (with allowed values/ranges), default, required."""
    schema = kind.args.model_json_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    args = []
    for arg, node in schema.get("properties", {}).items():
        field = kind.args.model_fields.get(arg)
        entry = {"name": arg, "type": describe_type(node, defs), "required": arg in required}
        if arg not in required:
            default = field.default if field is not None else node.get("default")
            entry["default"] = list(default) if isinstance(default, tuple) else default
        if field is not None and field.description:
            entry["doc"] = field.description
        args.append(entry)
    return {
        "name": kind.name,
        "group": kind.group,
        "doc": kind.doc,
        "merge": kind.merge,
        "augment": kind.augment,
        "aliases": list(kind.aliases),
        "args": args,
    }


def layer_table(rows: list[dict]) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{len(rows)} layers (`cnnbuild layers NAME` for its arguments)")
    for column in ("layer", "group", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(Text(row[key]) for key in ("name", "group", "doc")))
    return table


def arg_table(detail: dict) -> Any:
    from rich.table import Table
    from rich.text import Text

    also = f"; Keras alias: {', '.join(detail['aliases'])}" if detail["aliases"] else ""
    table = Table(title=Text(f"{detail['name']} ({detail['group']}): {detail['doc']}{also}"))
    for column in ("argument", "type / allowed values", "default"):
        table.add_column(column, overflow="fold")
    for arg in detail["args"]:
        default = "(required)" if arg["required"] else json.dumps(arg["default"])
        table.add_row(Text(arg["name"]), Text(arg["type"]), Text(default))
    return table
