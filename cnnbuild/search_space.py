"""The search space of ``cnnbuild tune``, checked without TensorFlow or Optuna.

A space entry names a place in the config with the same path syntax findings use:
``layers[0].Conv2D.filters``, ``layers[2].Residual.main[0].Conv2D.kernel_size``,
``blocks.stage.params.width`` (a block parameter's default), ``layers[3].stage.width``
(a block use's argument), ``compile.optimizer.adam.learning_rate`` and
``train.batch_size``. A bare name is addressed as its mapping form (``optimizer: adam``
reaches ``compile.optimizer.adam.learning_rate``; ``- BatchNormalization`` reaches
``layers[4].BatchNormalization.momentum``).

This module sits in the static core, beside ``checks`` and below ``validate``:
:func:`space_findings` checks the paths, then substitutes every corner of the space into
the YAML tree and runs the normal static check, so a value that breaks the model is found
before any training. :func:`substitute` makes a trial's config from its parameters.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import re
from dataclasses import dataclass
from typing import Any

import yaml

from cnnbuild.checks import lint
from cnnbuild.config import ModelConfig, from_document
from cnnbuild.errors import UNKNOWN_KEY, Finding, suggest
from cnnbuild.schema.sections import CompileConfig, LintConfig, TrainConfig
from cnnbuild.schema.tune import PATH_RE, SpaceEntry
from cnnbuild.source import Document, PathKey, format_path
from cnnbuild.trace import trace

MAX_CORNERS = 64
MAX_CORNER_FINDINGS = 3
SPACE = ("tune", "space")
SECTIONS = {"compile": CompileConfig, "train": TrainConfig, "lint": LintConfig}

# -- paths ------------------------------------------------------------------------------


class PathError(ValueError):
    """A space path that does not lead to a value of the config."""


def parse_path(text: str) -> PathKey:
    """``"layers[0].Conv2D.filters"`` -> ``("layers", 0, "Conv2D", "filters")``.

    Raises:
        PathError: the text is not a path.
    """
    if not isinstance(text, str) or not PATH_RE.fullmatch(text):
        raise PathError(
            f"{text!r} is not a config path; write it as findings show paths, e.g. "
            "layers[0].Conv2D.filters, blocks.stage.params.width, "
            "compile.optimizer.adam.learning_rate or train.batch_size"
        )
    parts: list[str | int] = []
    for name, index in re.findall(r"\.?([A-Za-z_$][A-Za-z0-9_]*)|\[([0-9]+)\]", text):
        parts.append(int(index) if index else name)
    return tuple(parts)


def _section_keys(section: Any) -> list[str]:
    model = SECTIONS.get(section) if isinstance(section, str) else None
    return list(model.model_fields) if model is not None else []


def _shown(steps: PathKey) -> str:
    return format_path(steps) or "the config"


def assign(data: Any, path: PathKey, value: Any) -> Any:
    """A deep copy of ``data`` with ``value`` written at ``path``.

    A bare name (``adam``, ``- Flatten``) becomes its mapping form on the way, ``null``
    arguments become a mapping, and a block's list-form ``params`` is searched by name.
    Only the last key may be new (an argument left at its default); a missing section
    in the middle is refused, so a search never switches a feature on by itself.

    Raises:
        PathError: the path does not lead into the config.
    """
    root = copy.deepcopy(data)
    holder: Any = {"": root}
    key: Any = ""
    for depth, step in enumerate(path):
        last = depth == len(path) - 1
        node = holder[key]
        if isinstance(node, str) and node == step and not last:
            node = holder[key] = {step: {}}
        if node is None and isinstance(step, str):
            node = holder[key] = {}
        if isinstance(node, dict):
            _into_mapping(node, path, depth)
        elif isinstance(node, list) and isinstance(step, int):
            if step >= len(node):
                raise PathError(
                    f"{_shown(path[:depth])} has {len(node)} entries; index {step} is past its end"
                )
        elif isinstance(node, list) and isinstance(step, str):
            _set_param(node, path, depth, value)  # a block's `params: [filters, {strides: 1}]`
            return root
        else:
            what = "a list" if isinstance(node, list) else repr(node)
            want = f"[{step}]" if isinstance(step, int) else f".{step}"
            raise PathError(f"{_shown(path[:depth])} is {what}; {want} cannot follow it")
        if last:
            node[step] = value
            return root
        holder, key = node, step
    raise PathError("an empty path names nothing")


def _into_mapping(node: dict, path: PathKey, depth: int) -> None:
    """Check that step ``depth`` of ``path`` may enter (or, the last, be added to) ``node``."""
    step, last, here = path[depth], depth == len(path) - 1, _shown(path[:depth])
    if step not in node and depth == 0 and step in SECTIONS and not last:
        node[step] = {}  # an absent section: its defaults apply, now written out
    if step in node:
        return
    known = _section_keys(path[0]) if depth == 1 else []
    if not last and step in known:
        raise PathError(f"{here}.{step} is not written; write it first to search inside it")
    if not last:
        close = suggest(str(step), [str(k) for k in [*node, *known]])
        raise PathError(
            f"{here} has no key {step!r}"
            + (close or (f"; its keys are {', '.join(map(str, node))}" if node else ""))
        )
    if path[:1] == ("blocks",) and len(path) >= 3 and path[2] == "params":
        raise PathError(f"block {path[1]!r} has no parameter {step!r}")
    if depth == 0:
        raise PathError(f"the config has no {step!r} section")


def _set_param(node: list, path: PathKey, depth: int, value: Any) -> None:
    """Write ``value`` into a block's list-form ``params``, found by name."""
    step, here = path[depth], _shown(path[:depth])
    for i, entry in enumerate(node):
        if entry == step or (isinstance(entry, dict) and list(entry) == [step]):
            if depth != len(path) - 1:
                raise PathError(f"{here}.{step} is a parameter value; nothing is inside")
            node[i] = {step: value}
            return
    names = [e if isinstance(e, str) else str(next(iter(e), "?")) for e in node]
    raise PathError(f"{here} has no entry {step!r}{suggest(str(step), names)}")


@dataclass
class Entry:
    """One space entry: its text, parsed path and values."""

    text: str
    path: PathKey
    space: SpaceEntry


def entries(cfg: ModelConfig) -> list[Entry]:
    """The entries of a config's space, in the order written (the space has validated)."""
    assert cfg.tune is not None
    return [Entry(t, parse_path(t), e) for t, e in cfg.tune.space.items()]


def without_tune(data: dict) -> dict:
    """The config's YAML tree without its ``tune:`` section."""
    return {k: v for k, v in data.items() if k != "tune"}


def substitute(data: dict, space: list[Entry], params: dict[str, Any]) -> dict:
    """The config ``data`` with ``params`` (space text -> value) substituted and no
    ``tune:`` section."""
    out = without_tune(data)
    for e in space:
        if e.text in params:
            out = assign(out, e.path, params[e.text])
    return out


def to_yaml(data: dict, header: str = "") -> str:
    """A config tree as YAML text, keys in the order written, after ``header``."""
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


def show_value(value: Any) -> str:
    """A value as a person reads it in YAML: ``0.003``, ``[3, 3]``, ``same``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


# -- the static check -------------------------------------------------------------------


def _checked_entries(cfg: ModelConfig, findings: list[Finding]) -> list[Entry]:
    doc = cfg.doc
    out = []
    assert cfg.tune is not None
    for text, entry in cfg.tune.space.items():
        try:
            path = parse_path(text)
            assign(doc.data, path, entry.corners()[0])
        except PathError as exc:
            findings.append(
                doc.finding(
                    (*SPACE, text), f"unknown path: {exc}", prefer="key", path_text=_label(text)
                )
            )
            continue
        out.append(Entry(text, path, entry))
    return out


def _label(text: str) -> str:
    return f"tune.space.{text}"


def _errors_with(doc: Document, data: Any) -> list[Finding]:
    """Errors of the normal static check (schema, expansion, shapes, lint) on ``data``."""
    trial = Document(doc.file, data, doc.keys, doc.values, [], doc.lines)
    cfg = from_document(trial)
    if cfg is None:
        return list(trial.findings)
    found = list(cfg.findings)
    if cfg.input_shape[2] is not None and not any(f.severity == "error" for f in found):
        tr = trace(cfg)
        found += tr.findings + lint(tr, frozenset(cfg.lint.ignore))
    return [f for f in found if f.severity == "error"]


def _why(f: Finding) -> str:
    where = f" (line {f.line})" if f.line else ""
    return f"{f.path}{where}: {f.message}" if f.path else f.message + where


def _section_findings(cfg: ModelConfig) -> list[Finding] | None:
    """Findings about the section as a whole, or ``None`` when the corners are worth
    checking."""
    assert cfg.tune is not None
    if any(f.severity == "error" and f.path.startswith("tune") for f in cfg.findings):
        return []  # the section itself did not validate: already reported
    if not cfg.tune.space:
        return [
            cfg.doc.finding(
                ("tune",),
                "tune.space is empty: give at least one path to search, e.g. "
                "compile.optimizer.adam.learning_rate: {float: [1.0e-4, 1.0e-2], log: true}",
                prefer="key",
            )
        ]
    return None


def space_findings(cfg: ModelConfig) -> list[Finding]:
    """Check ``cfg.tune``: paths exist, and every corner of the space is a valid model.

    Each problem points at the space entry (or the value in it) that causes it. Without
    TensorFlow: the corners go through the same static check as ``validate``.

    Returns:
        Findings (errors), empty when the space is sound.
    """
    if cfg.tune is None:
        return []
    early = _section_findings(cfg)
    if early is not None:
        return early
    findings = _metric_findings(cfg)
    checked = _checked_entries(cfg, findings)
    if not checked or any(f.severity == "error" for f in cfg.findings):
        return findings  # corners of a config that is already wrong say nothing new
    base = without_tune(cfg.doc.data)
    bad = {e.text: _entry_findings(cfg.doc, base, e, findings) for e in checked}
    if len(checked) >= 2:
        findings += _corner_findings(cfg.doc, base, checked, bad)
    return findings


def _corner_findings(
    doc: Document, base: dict, checked: list[Entry], bad: dict[str, set[int]]
) -> list[Finding]:
    """Combinations of the entries' good corners that make the model invalid together."""
    options = [
        [(i, v) for i, v in enumerate(e.space.corners()) if i not in bad[e.text]] for e in checked
    ]
    findings: list[Finding] = []
    for combo in _combinations(options):
        data = base
        for e, (_, value) in zip(checked, combo, strict=True):
            data = assign(data, e.path, value)
        errors = _errors_with(doc, data)
        if not errors:
            continue
        setting = ", ".join(
            f"{e.text} = {show_value(v)}" for e, (_, v) in zip(checked, combo, strict=True)
        )
        findings.append(
            doc.finding(
                SPACE,
                f"the corner {setting} makes the model invalid: {_why(errors[0])}",
                prefer="key",
                path_text="tune.space",
                hint="narrow the ranges so every combination is a valid model",
            )
        )
        if len(findings) >= MAX_CORNER_FINDINGS:
            break
    return findings


def _combinations(options: list[list]) -> list[tuple]:
    """Every combination of the entries' corners, or MAX_CORNERS of them drawn at random
    (seeded) when there are more."""
    total = math.prod(map(len, options))
    if total <= MAX_CORNERS:
        return list(itertools.product(*options))
    rng = random.Random(0)
    drawn = {tuple(rng.choice(o) for o in options) for _ in range(MAX_CORNERS)}
    return sorted(drawn, key=repr)


def _whole_entry_finding(
    doc: Document, base: dict, e: Entry, first: Finding | None
) -> Finding | None:
    """A finding for an entry none of whose values can work: the key is not an argument
    there, or a float range samples values for an argument that takes an integer."""
    where = (*SPACE, e.text)
    if first is None:
        return None
    if first.path == format_path(e.path) and first.extra.get("code") == UNKNOWN_KEY:
        return doc.finding(
            where, f"unknown path: {first.message}", prefer="key", path_text=_label(e.text)
        )
    if e.space.kind != "float":
        return None
    low, high = e.space.float_range
    if _errors_with(doc, assign(base, e.path, math.ceil(low))):
        return None  # the integer fails too: the float is not what is wrong
    return doc.finding(
        (*where, "float"),
        f"a float range samples values such as {e.space.corners()[0]!r}, but "
        f"{first.path} (line {first.line}) takes an integer",
        prefer="key",
        path_text=_label(e.text),
        hint=f"use int: [{math.ceil(low)}, {math.floor(high)}]",
    )


def _entry_findings(doc: Document, base: dict, e: Entry, findings: list[Finding]) -> set[int]:
    """Each corner of one entry, the others as written; returns the bad corners' indexes."""
    kind = e.space.kind
    corners = e.space.corners()
    results = [_errors_with(doc, assign(base, e.path, value)) for value in corners]
    whole = _whole_entry_finding(doc, base, e, results[0][0] if results[0] else None)
    if whole is not None:
        findings.append(whole)
        return set(range(len(corners)))
    bad: set[int] = set()
    for i, (value, errors) in enumerate(zip(corners, results, strict=True)):
        if not errors:
            continue
        bad.add(i)
        what = (
            f"choice {show_value(value)}"
            if kind == "choice"
            else f"the {'lower' if i == 0 else 'upper'} bound {show_value(value)}"
        )
        findings.append(
            doc.finding(
                (*SPACE, e.text, kind, i),
                f"{what} makes the model invalid: {_why(errors[0])}",
                path_text=_label(e.text),
            )
        )
    return bad


def _metric_findings(cfg: ModelConfig) -> list[Finding]:
    assert cfg.tune is not None
    names = ["loss", *cfg.compile.metrics]
    known = names + [f"val_{n}" for n in names]
    metric = cfg.tune.metric
    if metric in known:
        if metric.startswith("val_") and cfg.train.validation_split == 0:
            return [
                cfg.doc.finding(
                    ("tune", "metric"),
                    f"metric {metric} needs a validation set, but train.validation_split is 0",
                )
            ]
        return []
    return [
        cfg.doc.finding(
            ("tune", "metric"),
            f"unknown metric {metric!r}{suggest(metric, known)}; the epoch logs hold "
            + ", ".join(known),
        )
    ]
