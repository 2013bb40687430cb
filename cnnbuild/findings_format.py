"""Findings in the formats CI systems read: text, JSON, GitHub workflow commands, SARIF."""

from __future__ import annotations

import json
from pathlib import Path

from cnnbuild import __version__
from cnnbuild.checks import RULES
from cnnbuild.errors import Finding

FORMATS = ("text", "json", "github", "sarif")
_SARIF_LEVEL = {"error": "error", "warning": "warning", "info": "note"}
_GITHUB_LEVEL = {"error": "error", "warning": "warning", "info": "notice"}
_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def text_lines(findings: list[Finding], color: bool = False) -> list[str]:
    """``FILE:LINE:COL: severity: message [RULE]``, with rich markup when ``color``."""
    from cnnbuild.escape import rich as escape
    from cnnbuild.escape import terminal

    if not color:
        return [terminal(f.format()) for f in findings]
    out = []
    for f in findings:
        where = f"{f.path}: " if f.path else ""
        hint = f" [dim]({escape(f.hint)})[/dim]" if f.hint else ""
        out.append(
            f"[bold]{escape(f'{f.file}:{f.line}:{f.column}')}:[/bold] "
            f"[{_STYLE[f.severity]}]{f.severity}[/]: {escape(where + f.message)}{hint} "
            f"[dim]\\[{f.rule}][/dim]"
        )
    return out


def to_json(findings: list[Finding]) -> str:
    return json.dumps([f.to_dict() for f in findings], indent=2)


def _gh_escape(text: str, prop: bool = False) -> str:
    """``text`` for a workflow command: :func:`cnnbuild.escape.terminal` first (the log
    viewer acts on ESC; a byte that is not UTF-8 cannot be printed), then GitHub's escapes."""
    from cnnbuild.escape import terminal

    text = terminal(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def to_github(findings: list[Finding]) -> str:
    """GitHub Actions workflow commands (``::error file=...,line=...::message``)."""
    lines = []
    for f in findings:
        props = [f"file={_gh_escape(f.file, True)}"]
        if f.line:
            props += [f"line={f.line}", f"col={f.column}"]
            if f.end_line:
                props += [f"endLine={f.end_line}", f"endColumn={f.end_column}"]
        props.append(f"title={_gh_escape(f'cnnbuild {f.rule}', True)}")
        body = f.message + (f" ({f.hint})" if f.hint else "")
        lines.append(f"::{_GITHUB_LEVEL[f.severity]} {','.join(props)}::{_gh_escape(body)}")
    return "\n".join(lines)


def _uri(file: str) -> str:
    path = Path(file)
    return path.resolve().as_uri() if path.is_absolute() else path.as_posix()


def to_sarif(findings: list[Finding]) -> str:
    """A SARIF 2.1.0 log with one run; every rule is described in the driver."""
    rule_ids = list(RULES)
    rules = [
        {
            "id": r.id,
            "name": "".join(w.capitalize() for w in r.id.split("-")),
            "shortDescription": {"text": r.summary},
            "help": {"text": r.hint},
            "defaultConfiguration": {"level": _SARIF_LEVEL[r.severity]},
        }
        for r in RULES.values()
    ]
    results = []
    for f in findings:
        result: dict = {
            "ruleId": f.rule,
            "level": _SARIF_LEVEL[f.severity],
            "message": {"text": f.message + (f" ({f.hint})" if f.hint else "")},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": _uri(f.file)}}}],
        }
        if f.rule in RULES:
            result["ruleIndex"] = rule_ids.index(f.rule)
        if f.line >= 1:
            region = {"startLine": f.line, "startColumn": max(f.column, 1)}
            if f.end_line:
                region.update(endLine=f.end_line, endColumn=f.end_column)
            result["locations"][0]["physicalLocation"]["region"] = region
        results.append(result)
    log = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "cnnbuild",
                        "version": __version__,
                        "informationUri": "https://github.com/cnnbuild/cnnbuild",
                        "rules": rules,
                    }
                },
                "results": results,
            }
        ],
    }
    return json.dumps(log, indent=2)


def print_text(console, findings: list[Finding], n_files: int) -> None:
    """Findings, then a one-line count, on a rich console."""
    for line in text_lines(findings, color=console.is_terminal):
        console.print(line, highlight=False, markup=console.is_terminal, soft_wrap=True)
    counts = {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")}
    parts = [f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items() if n]
    console.print(
        f"{n_files} file{'s' if n_files != 1 else ''} checked: "
        + (", ".join(parts) if parts else "no problems"),
        highlight=False,
        markup=False,
    )
