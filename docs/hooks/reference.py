"""MkDocs hook: the reference pages' tables, generated from the code at build time.

A page holds a marker such as ``<!-- generated: layers -->``; :func:`on_page_markdown`
replaces it with Markdown made from the source of truth:

- ``layers``: the catalog (:data:`cnnbuild.catalog.REGISTRY`) and each kind's argument
  model, through :mod:`cnnbuild.layers_doc` (what ``cnnbuild layers NAME`` prints);
- ``commands``: the Typer app (``typer.main.get_command``), every command and option;
- ``lint-rules``: the rule table :data:`cnnbuild.checks.RULES`;
- ``schema``: the JSON Schema generated from the config models.

An unknown marker fails the build, and so does a page that lost its marker.
"""

from __future__ import annotations

import json
import re
from enum import Enum

import typer

from cnnbuild.catalog import REGISTRY
from cnnbuild.checks import RULES
from cnnbuild.cli import app
from cnnbuild.cli_help import LOOK, SHIP, TRAIN, WRITE
from cnnbuild.escape import markdown_cell as cell
from cnnbuild.layers_doc import layer_detail, readme_table
from cnnbuild.schema.jsonschema import json_schema_text

MARKER = re.compile(r"<!-- generated: ([a-z-]+) -->")


def layers() -> str:
    """Every layer kind: the summary table, then one section per kind with its arguments."""
    parts = [readme_table()]
    for kind in REGISTRY.values():
        detail = layer_detail(kind)
        traits = [f"group `{detail['group']}`"]
        if detail["aliases"]:
            traits.append("Keras alias " + ", ".join(f"`{a}`" for a in detail["aliases"]))
        if detail["merge"]:
            traits.append("merges several inputs")
        parts.append(f"\n## {kind.name}\n\n{cell(detail['doc'])} ({'; '.join(traits)})\n")
        rows = ["| argument | type / allowed values | default | |", "|---|---|---|---|"]
        for arg in detail["args"]:
            default = (
                "(required)" if arg["required"] else cell(json.dumps(arg["default"]), code=True)
            )
            rows.append(
                f"| `{arg['name']}` | {cell(arg['type'], code=True)} | {default} | "
                f"{cell(arg.get('doc', ''))} |"
            )
        parts.append("\n" + "\n".join(rows) + "\n")
    return "".join(parts)


def _default(param) -> str:
    if param.required:
        return "required"
    value = param.default
    if value is None or value in ([], ()) or param.show_default is False:
        return ""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return "on" if value else "off"
    return cell(value, code=True)


def _command(name: str, command, parent) -> str:
    ctx = typer._click.Context(command, info_name=name, parent=parent)
    usage = " ".join(["cnnbuild", name, *command.collect_usage_pieces(ctx)])
    rows = ["| argument or option | type | default | |", "|---|---|---|---|"]
    for param in command.get_params(ctx):
        names = " / ".join(
            ", ".join(f"`{n}`" for n in opts) for opts in (param.opts, param.secondary_opts) if opts
        )
        if param.param_type_name == "argument":
            names = f"`{param.display_name_raw}`"
        kind = param.display_type_rich(ctx) or ""
        kind = cell(kind, code=True) if kind else ""
        rows.append(f"| {names} | {kind} | {_default(param)} | {cell(param.help or '')} |")
    help_text = "\n\n".join(cell(p) for p in (command.help or "").split("\n\n"))
    return f"\n### cnnbuild {name}\n\n```\n{usage}\n```\n\n{help_text}\n\n" + "\n".join(rows) + "\n"


def commands() -> str:
    """Every command, panel by panel, with its usage, help and options."""
    group = typer.main.get_command(app)
    root = typer._click.Context(group, info_name="cnnbuild")
    parts = []
    for panel in (WRITE, TRAIN, LOOK, SHIP):
        names = [n for n in group.list_commands(root) if group.commands[n].rich_help_panel == panel]
        parts.append(
            f"\n## {panel}\n\n" + ", ".join(f"[`{n}`](#cnnbuild-{n})" for n in names) + "\n"
        )
        parts.extend(_command(n, group.commands[n], root) for n in names)
    return "".join(parts)


def lint_rules() -> str:
    """The rule table: id, severity, whether it can be ignored, what it catches, the fix."""
    rows = [
        "| id | severity | can be ignored | what it catches | fix hint |",
        "|---|---|---|---|---|",
    ]
    for rule in RULES.values():
        rows.append(
            f"| `{rule.id}` | {rule.severity} | {'yes' if rule.ignorable else 'no'} | "
            f"{cell(rule.summary)} | {cell(rule.hint)} |"
        )
    return "\n".join(rows) + "\n"


def schema() -> str:
    """The JSON Schema, as ``cnnbuild schema`` prints it."""
    return "```json\n" + json_schema_text().rstrip("\n") + "\n```\n"


GENERATORS = {"layers": layers, "commands": commands, "lint-rules": lint_rules, "schema": schema}


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace each ``<!-- generated: NAME -->`` marker with its generated Markdown."""

    def generate(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_path}: unknown generated section {name!r}")
        return GENERATORS[name]()

    return MARKER.sub(generate, markdown)
