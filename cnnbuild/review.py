"""Model review: what a change does to a model (``cnnbuild diff OLD NEW``) and to each
config against its version at a git revision (``validate --baseline REF``).

Static: both sides are read, traced and compared by the static engine; no TensorFlow.
Layers are aligned by structure (template instances, the place a layer is written in
them), then like lines in a text diff (on kind and arguments, not on Keras' automatic
names, which shift when a layer is inserted).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from cnnbuild.catalog import comparable_arguments
from cnnbuild.checks import growth_findings
from cnnbuild.config import ModelConfig
from cnnbuild.errors import CnnbuildError, Finding, UsageError, shape_str
from cnnbuild.escape import md_code, terminal
from cnnbuild.render import field_str, size_str
from cnnbuild.source import MAX_BYTES, Document, parse_bytes, read_document
from cnnbuild.trace import Row, Trace
from cnnbuild.validate import YAML_SUFFIXES, blocks_build, traced

GIT_TIMEOUT_S = 30
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
CHANGES = ("added", "removed", "changed", "unchanged")
NUMBERS = (
    "total_params",
    "trainable_params",
    "non_trainable_params",
    "macs",
    "activation_bytes",
    "weight_bytes",
)
"""The ``summary --json`` figures a diff subtracts (``weight_bytes`` per storage type)."""
TOTALS = (
    ("Parameters", ("total_params",), "count"),
    ("Trainable parameters", ("trainable_params",), "count"),
    ("Non-trainable parameters", ("non_trainable_params",), "count"),
    ("MACs per image", ("macs",), "count"),
    ("Activation memory per training image", ("activation_bytes",), "bytes"),
    ("Weights, float32", ("weight_bytes", "float32"), "bytes"),
    ("Weights, bfloat16", ("weight_bytes", "bfloat16"), "bytes"),
    ("Weights, int8", ("weight_bytes", "int8"), "bytes"),
    ("Receptive field of the output", ("receptive_field",), "field"),
    ("Output shape", ("output_shape",), "shape"),
)
"""The totals a diff shows, in order: label, key path in ``summary --json``, kind."""


# -- reading a side: a file, or REF:PATH from git ----------------------------------------


def _git(args: list[str]) -> subprocess.CompletedProcess:
    """Run git in the current directory, bounded in time, never prompting."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, timeout=GIT_TIMEOUT_S, env=env, check=False
        )
    except FileNotFoundError:
        raise UsageError(
            "REF:PATH and --baseline read files with git, which is not installed"
        ) from None
    except subprocess.TimeoutExpired:
        raise CnnbuildError(f"git {args[0]} did not finish within {GIT_TIMEOUT_S} s") from None
    except OSError as exc:
        raise CnnbuildError(f"cannot run git: {exc.strerror or exc}") from None


def verify_ref(ref: str) -> None:
    """Check that ``ref`` names a commit of the repository of the current directory.

    Raises:
        UsageError: not in a git repository, or no such revision.
    """
    if not ref or ref.startswith("-"):
        raise UsageError(f"{ref!r} is not a git revision (e.g. HEAD, main, origin/main)")
    result = _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"])
    if b"not a git repository" in result.stderr:
        raise UsageError(
            f"{os.getcwd()} is not in a git repository; REF:PATH and --baseline read "
            "files at a revision of the current directory's repository"
        )
    if result.returncode != 0 and result.stderr.strip():  # e.g. "dubious ownership"
        said = result.stderr.decode(errors="replace").strip().splitlines()[0]
        raise UsageError(f"git cannot read revision {ref!r}: {said}")
    if result.returncode != 0:
        raise UsageError(
            f"unknown git revision {ref!r} (try HEAD, a branch or a commit){_shallow()}"
        )


def _shallow() -> str:
    """Advice when the repository is a shallow clone, where a base commit is often missing."""
    if _git(["rev-parse", "--is-shallow-repository"]).stdout.strip() != b"true":
        return ""
    return (
        "; this clone is shallow, so the commit may not have been fetched: fetch it "
        "(actions/checkout with `fetch-depth: 0`, or `git fetch --deepen=100`, or "
        "`git fetch origin BRANCH`)"
    )


def read_git(ref: str, path: str) -> Document | None:
    """The config ``path`` as it is at revision ``ref`` (``git show REF:PATH``), for a
    revision already checked with :func:`verify_ref`.

    ``path`` is relative to the repository's root, or to the current directory when it
    starts with ``./``, as git reads it. The size is checked before the blob is read.

    Returns:
        The parsed document (with a finding when it is too big or not UTF-8), or
        ``None`` when ``path`` does not exist at ``ref``.

    Raises:
        UsageError: a folder at ``path``.
    """
    spec = f"{ref}:{path}"
    kind = _git(["cat-file", "-t", spec])
    if kind.returncode != 0 and not _submodule(ref, path):
        return None
    if kind.stdout.strip() != b"blob":
        raise UsageError(f"{spec}: is a {kind.stdout.decode().strip() or 'submodule'}, not a file")
    size = _git(["cat-file", "-s", spec])
    nbytes = int(size.stdout) if size.returncode == 0 else MAX_BYTES + 1
    if nbytes > MAX_BYTES:  # refused unread, as read_document refuses a big file
        message = f"the file is {nbytes} bytes; a model config is at most {MAX_BYTES} bytes"
        return Document(spec, findings=[Finding(spec, 0, 0, "error", "yaml", message)])
    blob = _git(["cat-file", "blob", spec])
    if blob.returncode != 0:
        raise CnnbuildError(f"git could not read {spec}: {blob.stderr.decode().strip()}")
    return parse_bytes(blob.stdout, spec)


def _submodule(ref: str, path: str) -> bool:
    """Whether ``path`` is a submodule (a gitlink, whose commit is not in this
    repository) at ``ref``."""
    listed = _git(
        [
            "ls-tree",
            "-z",
            ref,
            "--",
            f":(literal){path}" if path.startswith("./") else f":(top,literal){path}",
        ]
    )
    return listed.returncode == 0 and listed.stdout.startswith(b"160000 commit ")


def read_side(spec: str) -> Document:
    """One side of a diff: a config file, or ``REF:PATH`` for a file at a git revision.

    An existing file wins (a path may hold ``:``); ``C:\\...`` is always a path.

    Raises:
        UsageError: no such file, or a git problem (see :func:`read_git`).
    """
    path = Path(spec)
    if path.is_dir():
        raise UsageError(f"{spec}: is a folder; give a config file or REF:PATH")
    if path.exists():
        return read_document(path)
    ref, colon, inner = spec.partition(":")
    if colon and ref and not inner:
        message = f"no such config file: {spec!r}; read as REF:PATH, it names no path"
        raise UsageError(f"{message} (e.g. {ref}:configs/model.yaml)")
    if not colon or _DRIVE.match(spec):
        raise UsageError(f"no such config file: {spec!r} (or give REF:PATH, e.g. HEAD:{spec})")
    try:
        verify_ref(ref)
    except UsageError as exc:
        message = f"no such config file: {spec!r}; read as REF:PATH: {exc.message}"
        raise UsageError(message) from None
    doc = read_git(ref, inner)
    if doc is None:
        raise UsageError(f"{spec}: {inner!r} does not exist at revision {ref!r}")
    return doc


def load_side(spec: str) -> tuple[ModelConfig, Trace]:
    """Read and trace one side.

    Raises:
        ConfigError: the side does not validate (exit 1, with its findings).
    """
    return traced(read_side(spec))


# -- comparing two traces -----------------------------------------------------------------


def _figures(tr: Trace, file: str) -> dict:
    """``summary --static --json`` without the layers, with the file it came from."""
    data = tr.summary_dict()
    data.pop("layers")
    return {"file": file, **data}


def _subtract(old: Any, new: Any) -> Any:
    if isinstance(old, dict):
        return {k: _subtract(old[k], new[k]) for k in old}
    return new - old


def _percent(old: Any, new: Any) -> Any:
    """``(new - old) / old`` in percent, ``None`` when old is 0 (there is no ratio)."""
    if isinstance(old, dict):
        return {k: _percent(old[k], new[k]) for k in old}
    return None if old == 0 else round(100.0 * (new - old) / old, 4)


SIZE_FIGURES = ("macs", "activation_bytes")
"""The figures that depend on the image size: with a free height or width on either side,
the static engine counts only part of them, so they are not comparable."""


def _free(figures: dict) -> bool:
    return any(d is None for d in figures["input_shape"][:2])


def _arguments(row: Row) -> dict:
    if row.node.args is None:
        return {}
    return comparable_arguments(row.node.args)


def _compared(old: Row, new: Row) -> tuple[dict, dict]:
    """Both layers' arguments, with the names when the config gives one on either side:
    a renamed layer is changed, while automatic names, which shift when a layer is
    inserted, never change a row (nor align one: see :func:`_signature`)."""
    a, b = _arguments(old), _arguments(new)
    if any(r.node.args is not None and r.node.args.name is not None for r in (old, new)):
        a["name"], b["name"] = old.node.name, new.node.name
    return a, b


def _role(row: Row) -> tuple:
    """Where a layer is written: its path inside a template (a shortcut's
    BatchNormalization is not a main branch's), or inside a top-level statement without
    the statement's index (which shifts when a layer is inserted), whether its arguments
    are written or not."""
    path = tuple(row.node.path)
    if path[:1] in (("layers",), ("input",)):  # a top-level layer, the input's scaling
        path = path[2:]
    return path[:-1] if path[-1:] == (row.node.kind,) else path  # `- Kind` or `- Kind: {}`


def _signature(row: Row) -> str:
    return json.dumps([row.node.kind, _role(row), _arguments(row)], sort_keys=True, default=str)


def _units(rows: list[Row]) -> list[list[int]]:
    """The rows in units of structure: one template instance (one use, one repetition),
    or one layer written at the top level."""
    units: list[list[int]] = []
    last = None
    for i, row in enumerate(rows):
        node = row.node
        key = None if node.use is None else (tuple(node.use), node.scope[:1])
        if key is not None and key == last:
            units[-1].append(i)
        else:
            units.append([i])
        last = key
    return units


def _unit_name(rows: list[Row], unit: list[int]) -> str:
    node = rows[unit[0]].node
    return json.dumps(node.use[-1] if node.use is not None else [node.kind, _role(rows[unit[0]])])


def _pairs(old: list[Row], new: list[Row]) -> list[tuple[int | None, int | None]]:
    """Align two layer lists by structure first, then like a text diff: units (template
    instances, top-level layers) on their layers' signatures; inside a replaced run,
    units of the same template (or layers of the same kind and place) pair up and are
    aligned layer by layer, and the rest are removed/added whole."""
    out: list[tuple[int | None, int | None]] = []
    ou, nu = _units(old), _units(new)

    def signatures(rows: list[Row], units: list[list[int]]) -> list[str]:
        return [json.dumps([_signature(rows[i]) for i in unit]) for unit in units]

    matcher = SequenceMatcher(None, signatures(old, ou), signatures(new, nu), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for a, b in zip(ou[i1:i2], nu[j1:j2], strict=True):
                out += zip(a, b, strict=True)
            continue
        names = SequenceMatcher(
            None,
            [_unit_name(old, u) for u in ou[i1:i2]],
            [_unit_name(new, u) for u in nu[j1:j2]],
            autojunk=False,
        )
        for sub, a1, a2, b1, b2 in names.get_opcodes():
            if sub == "equal":
                for a, b in zip(ou[i1 + a1 : i1 + a2], nu[j1 + b1 : j1 + b2], strict=True):
                    out += _row_pairs(old, new, a, b)
                continue
            out += [(i, None) for u in ou[i1 + a1 : i1 + a2] for i in u]
            out += [(None, j) for u in nu[j1 + b1 : j1 + b2] for j in u]
    return out


def _row_pairs(
    old: list[Row], new: list[Row], a: list[int], b: list[int]
) -> list[tuple[int | None, int | None]]:
    """Rows ``a`` of ``old`` and ``b`` of ``new`` aligned on signatures, then, inside a
    replaced run, on kind and place (a changed layer); the rest removed/added."""
    out: list[tuple[int | None, int | None]] = []
    matcher = SequenceMatcher(
        None, [_signature(old[i]) for i in a], [_signature(new[j]) for j in b], autojunk=False
    )
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            out += zip(a[i1:i2], b[j1:j2], strict=True)
            continue
        kinds = SequenceMatcher(
            None,
            [json.dumps([old[i].node.kind, _role(old[i])]) for i in a[i1:i2]],
            [json.dumps([new[j].node.kind, _role(new[j])]) for j in b[j1:j2]],
            autojunk=False,
        )
        for sub, a1, a2, b1, b2 in kinds.get_opcodes():
            if sub == "equal":
                out += zip(a[i1 + a1 : i1 + a2], b[j1 + b1 : j1 + b2], strict=True)
                continue
            out += [(i, None) for i in a[i1 + a1 : i1 + a2]]
            out += [(None, j) for j in b[j1 + b1 : j1 + b2]]
    return out


def _layer_rows(old: Trace, new: Trace) -> list[dict]:
    """One row per aligned layer: ``{"change", "old", "new"}``, plus ``"arguments"``
    (``{name: {"old", "new"}}``) for a changed layer whose arguments differ."""
    old_layers, new_layers = old.to_dict()["layers"], new.to_dict()["layers"]
    rows = []
    for i, j in _pairs(old.rows, new.rows):
        before = None if i is None else old_layers[i]
        after = None if j is None else new_layers[j]
        row: dict[str, Any] = {"change": "", "old": before, "new": after}
        if before is None or after is None:
            row["change"] = "added" if before is None else "removed"
        else:
            a, b = _compared(old.rows[i], new.rows[j])
            args = {k: {"old": a.get(k), "new": b.get(k)} for k in {*a, *b} if a.get(k) != b.get(k)}
            same = all(before[k] == after[k] for k in ("output_shape", "params", "macs"))
            row["change"] = "unchanged" if same and not args else "changed"
            if args:
                row["arguments"] = dict(sorted(args.items()))
        rows.append(row)
    return rows


def compare(old: Trace, new: Trace, old_name: str, new_name: str) -> dict:
    """The ``diff --format json`` form of two traced models.

    Returns:
        ``{"old", "new"}``: each side's ``summary --static --json`` totals and figures
        (no layers) with ``"file"``; ``"delta"`` and ``"percent"``: new minus old for
        :data:`NUMBERS` (percent ``None`` when old is 0); ``"not_comparable"``: the
        :data:`SIZE_FIGURES` when either input has a free size (their delta and percent
        ``None``, shown as "not comparable"); ``"layers"``:
        aligned rows (see :func:`_layer_rows`); ``"counts"``: rows per change.
    """
    before, after = _figures(old, old_name), _figures(new, new_name)
    layers = _layer_rows(old, new)
    apart = list(SIZE_FIGURES) if _free(before) or _free(after) else []
    return {
        "old": before,
        "new": after,
        "delta": {k: None if k in apart else _subtract(before[k], after[k]) for k in NUMBERS},
        "percent": {k: None if k in apart else _percent(before[k], after[k]) for k in NUMBERS},
        "not_comparable": apart,
        "layers": layers,
        "counts": {c: sum(r["change"] == c for r in layers) for c in CHANGES},
    }


def is_changed(result: dict) -> bool:
    """Whether a comparison shows any difference in the layers or the totals."""
    if any(r["change"] != "unchanged" for r in result["layers"]):
        return True
    keys = (*NUMBERS, "receptive_field", "output_shape", "input_shape")
    return any(result["old"][k] != result["new"][k] for k in keys)


# -- rendering ---------------------------------------------------------------------------


def _get(data: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def _value(value: Any, kind: str) -> str:
    if kind == "count":
        return f"{value:,}"
    if kind == "bytes":
        return size_str(value)
    if kind == "field":
        return field_str(value)
    if kind == "shape":
        return shape_str(value)
    return str(value)


def _signed(value: float, kind: str) -> str:
    sign = "+" if value > 0 else "-" if value < 0 else "±"
    return sign + _value(abs(value), kind)


def _pct(old: float, new: float) -> str:
    if old == 0:
        return "" if new == 0 else "new"
    return f"{100.0 * (new - old) / old:+.1f}%"


NOT_COMPARABLE = "not comparable"


def total_rows(result: dict) -> list[tuple[str, str, str, str, str]]:
    """``(label, old, new, difference, percent)`` for each of :data:`TOTALS`."""
    rows = []
    for label, path, kind in TOTALS:
        old, new = _get(result["old"], path), _get(result["new"], path)
        if path[0] in result["not_comparable"]:
            rows.append((label, NOT_COMPARABLE, NOT_COMPARABLE, "", ""))
            continue
        if kind in ("count", "bytes"):
            delta = _signed(new - old, kind)
            pct = _pct(old, new)
        else:
            delta, pct = ("", "") if old == new else ("changed", "")
        rows.append((label, _value(old, kind), _value(new, kind), delta, pct))
    return rows


def _plain(text: str) -> str:
    return text


def _cell(row: dict, key: str, kind: str, show: Callable[[str], str] = _plain) -> str:
    sides = [row[s][key] for s in ("old", "new") if row[s] is not None]
    if len(sides) == 2 and sides[0] != sides[1]:
        return f"{show(_value(sides[0], kind))} → {show(_value(sides[1], kind))}"
    return show(_value(sides[0], kind))


def _written(value: Any) -> str:
    """An argument's value as a person writes it: text bare, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def changed_arguments(row: dict, show: Callable[[str], str] = _plain) -> str:
    """``activation relu → gelu; strides 1 → 2``: the arguments a changed layer changed."""
    return "; ".join(
        f"{name} {show(_written(v['old']))} → {show(_written(v['new']))}"
        for name, v in row.get("arguments", {}).items()
    )


def _layer_cells(row: dict, apart: list[str], show: Callable[[str], str] = _plain) -> list[str]:
    """Name, type, output shape, params, MACs, changed arguments; ``old → new`` where they
    differ. ``show`` escapes what the config controls (names, types, argument values);
    ``apart``: the result's ``not_comparable`` figures."""
    return [
        _cell(row, "name", "name", show),
        _cell(row, "type", "name", show),
        _cell(row, "output_shape", "shape"),
        _cell(row, "params", "count"),
        NOT_COMPARABLE if "macs" in apart else _cell(row, "macs", "count"),
        changed_arguments(row, show),
    ]


_STYLES = {"added": "green", "removed": "red", "changed": "yellow", "unchanged": "dim"}
_MARKS = {"added": "+", "removed": "-", "changed": "~", "unchanged": ""}


def diff_tables(result: dict) -> tuple[Table, Table]:
    """The layer table and the totals table of ``cnnbuild diff``. Every text is a rich
    ``Text`` made with :func:`terminal`: no markup is read, no control character passes."""
    old, new = result["old"], result["new"]
    title = Text(terminal(f"{old['file']} → {new['file']}"))
    layers = Table(title=title, title_justify="left")
    for col in ("", "Layer", "Type", "Output shape", "Params", "MACs", "Changed arguments"):
        layers.add_column(col, justify="right" if col in ("Params", "MACs") else "left")
    for row in result["layers"]:
        style = _STYLES[row["change"]]
        cells = [Text(c) for c in _layer_cells(row, result["not_comparable"], terminal)]
        layers.add_row(Text(_MARKS[row["change"]], style=style), *cells, style=style)
    counts = ", ".join(f"{n} {c}" for c, n in result["counts"].items() if n)
    layers.caption = Text(f"layers: {counts}")
    totals = Table(title="Totals", title_justify="left")
    for col in ("", "Old", "New", "Difference", "%"):
        totals.add_column(col, justify="left" if not col else "right")
    for label, *cells in total_rows(result):
        totals.add_row(label, *map(Text, cells))
    return layers, totals


def _md(text: str) -> str:
    """A figure the code computed, for a markdown table cell (``|`` escaped, one line).
    Text a user controls goes through :func:`cnnbuild.escape.md_code` instead."""
    return text.replace("|", "\\|").replace("\n", " ")


def diff_markdown(result: dict) -> str:
    """``diff --format markdown``: every layer row and the totals, as GitHub tables."""
    old, new = result["old"], result["new"]
    counts = ", ".join(f"{n} {c}" for c, n in result["counts"].items() if n)
    lines = [
        f"### cnnbuild diff: {md_code(old['file'])} → {md_code(new['file'])}",
        "",
        f"Layers: {counts}.",
        "",
        "| Change | Layer | Type | Output shape | Params | MACs | Changed arguments |",
        "|---|---|---|---|--:|--:|---|",
    ]
    for row in result["layers"]:
        change = row["change"] if row["change"] == "unchanged" else f"**{row['change']}**"
        cells = _layer_cells(row, result["not_comparable"], md_code)
        lines.append(
            "| " + " | ".join([change, *cells[:2], *map(_md, cells[2:5]), cells[5]]) + " |"
        )
    lines += ["", "| Total | Old | New | Difference | % |", "|---|--:|--:|--:|--:|"]
    for label, *cells in total_rows(result):
        lines.append("| " + " | ".join(_md(c) for c in (label, *cells)) + " |")
    return "\n".join(lines) + "\n"


# -- validate --baseline REF -----------------------------------------------------------


@dataclass
class BaselineReview:
    """One config compared with its version at a revision.

    Attributes:
        file: the config's path as given.
        status: ``changed``, ``unchanged``, ``new`` (not at the revision, or a folder
            there), ``removed`` (at the revision, deleted since), or ``skipped`` (one
            side does not build; see the findings).
        result: the :func:`compare` result, when both sides build.
        findings: growth-limit findings and notes.
    """

    file: str
    status: str
    result: dict | None = None
    findings: list[Finding] = field(default_factory=list)


def _note(file: str, message: str) -> Finding:
    return Finding(file, 0, 0, "info", "budget", message)


def _repo_path(file: Path, top: Path) -> str | None:
    try:
        return file.resolve().relative_to(top).as_posix()
    except ValueError:
        return None


def repo_root() -> Path:
    """The root of the current directory's git repository.

    Raises:
        UsageError: not in a git repository.
    """
    result = _git(["rev-parse", "--show-toplevel"])
    if result.returncode != 0:
        raise UsageError(
            f"{os.getcwd()} is not in a git repository; --baseline compares each config "
            "with its version at a revision of this repository"
        )
    return Path(os.fsdecode(result.stdout.strip())).resolve()


def review_against(
    file: Path,
    checked: tuple[ModelConfig | None, Trace | None, list[Finding]],
    ref: str,
    top: Path,
    ignore: frozenset[str] = frozenset(),
) -> BaselineReview:
    """Compare one checked config with its version at ``ref``; apply ``budget.growth``.

    Args:
        file: the config file.
        checked: what :func:`cnnbuild.validate.check_file` returned for it.
        ref: the baseline revision, already checked with :func:`verify_ref`.
        top: the repository's root (:func:`repo_root`).
        ignore: rule ids to skip (``--ignore``).
    """
    name = str(file)
    cfg, tr, findings = checked
    if cfg is None or tr is None or any(blocks_build(f) for f in findings):
        return BaselineReview(name, "skipped")
    inner = _repo_path(file, top)
    try:
        doc = None if inner is None else read_git(ref, inner)
        notes = []
        if doc is None and inner is not None and (before := renamed_from(ref, inner)) is not None:
            doc = read_git(ref, before)
            notes.append(_note(name, f"renamed from {before} since {ref}: compared with it"))
    except UsageError as exc:  # a folder or a submodule at the revision
        note = _note(name, f"{exc.message}; no baseline to compare with")
        return BaselineReview(name, "new", findings=[note])
    if doc is None:
        where = "outside the repository" if inner is None else f"not in {ref}"
        note = _note(name, f"{where}: a new config, no baseline to compare with")
        return BaselineReview(name, "new", findings=[note])
    try:
        _, old = traced(doc)
    except CnnbuildError:
        note = _note(name, f"its version at {ref} does not validate; growth limits not checked")
        return BaselineReview(name, "skipped", findings=[*notes, note])
    result = compare(old, tr, doc.file, name)
    growth = growth_findings(tr, old, ref, ignore)
    status = "changed" if is_changed(result) else "unchanged"
    return BaselineReview(name, status, result, [*notes, *growth])


def removed_since(ref: str, paths: list[str], top: Path) -> list[BaselineReview]:
    """The configs under ``paths`` (validate's arguments) that were at ``ref`` and are gone
    now (``git diff --diff-filter=D REF``; a renamed config is compared with its old
    path by :func:`review_against`, not reported here): one ``removed`` review each, with
    a note. Names are relative to the current directory, like validate's."""
    args = ["diff", "--name-only", "-z", "-M", "--diff-filter=D", ref, "--", *paths]
    result = _git(args)
    if result.returncode != 0:
        return []
    out = []
    for raw in filter(None, result.stdout.split(b"\0")):
        path = Path(os.path.relpath(top / os.fsdecode(raw)))
        if path.suffix in YAML_SUFFIXES and ".pre-commit" not in path.name and not path.exists():
            note = _note(str(path), f"removed since {ref}: the config was deleted")
            out.append(BaselineReview(str(path), "removed", findings=[note]))
    return out


def renamed_from(ref: str, inner: str) -> str | None:
    """The path the file ``inner`` had at ``ref``, when git's rename detection sees it as
    renamed since (``git diff -M REF``: ``REF`` against the work tree's tracked files);
    ``None`` when it does not. Paths are relative to the repository's root.

    Without this a renamed config would be "new" and escape its growth limits.
    """
    result = _git(["diff", "--name-status", "-z", "-M", "--diff-filter=R", ref, "--"])
    if result.returncode != 0:
        return None
    parts = result.stdout.split(b"\0")
    for i in range(0, len(parts) - 2, 3):
        status, old, new = parts[i : i + 3]
        if status.startswith(b"R") and os.fsdecode(new) == inner:
            return os.fsdecode(old)
    return None


def _baseline_cell(result: dict, path: tuple[str, ...], kind: str) -> str:
    old, new = _get(result["old"], path), _get(result["new"], path)
    if path[0] in result["not_comparable"]:
        return NOT_COMPARABLE
    if old == new:
        return _value(new, kind)
    delta = _signed(new - old, kind)
    return f"{_value(old, kind)} → {_value(new, kind)} ({delta}, {_pct(old, new)})"


_BASELINE_FIGURES = (
    ("Parameters", ("total_params",), "count"),
    ("MACs", ("macs",), "count"),
    ("Activation memory", ("activation_bytes",), "bytes"),
    ("Weights (float32)", ("weight_bytes", "float32"), "bytes"),
)


def _counts_text(result: dict) -> str:
    counts = [f"{n} {c}" for c, n in result["counts"].items() if n and c != "unchanged"]
    return ", ".join(counts) or "none"


def _baseline_row(r: BaselineReview) -> str:
    if r.result is None:
        what = "removed" if r.status == "removed" else "new config"
        return f"| {md_code(r.file)} | {what} |" + " |" * len(_BASELINE_FIGURES)
    cells = [_baseline_cell(r.result, path, kind) for _, path, kind in _BASELINE_FIGURES]
    cells.append(_counts_text(r.result))
    model = md_code(r.result["new"]["name"])
    return f"| {md_code(r.file)} ({model}) | " + " | ".join(map(_md, cells)) + " |"


def _finding_item(f: Finding) -> str:
    """One finding as a list item: its place and its message in code spans (a message
    quotes config values, which must not become links or mentions)."""
    where = f"{f.file}:{f.line}:{f.column}"
    message = f"{f.path}: {f.message}" if f.path else f.message
    return f"- {md_code(where)} {f.severity}: {md_code(message)} \\[{f.rule}\\]"


MAX_MARKDOWN = 65_536
"""The most characters of markdown ``validate --format markdown`` writes: GitHub refuses a
pull-request comment longer than this."""


def _size(lines: list[str]) -> int:
    return sum(len(line) + 1 for line in lines)


def _fit(items: list[str], room: int, noun: str) -> list[str]:
    """``items``, or as many as fit in ``room`` characters followed by a blank line and
    ``N more NOUN: see the job summary`` (cut at an item: a table row stays whole)."""
    if _size(items) <= room:
        return items
    more = ["", f"{len(items)} more {noun}: see the job summary"]  # the longest it can be
    kept: list[str] = []
    for item in items:
        if _size([*kept, item, *more]) > room:
            break
        kept.append(item)
    gap = [""] if kept else []  # a blank line ends a table
    return [*kept, *gap, f"{len(items) - len(kept)} more {noun}: see the job summary"]


def baseline_markdown(
    reviews: list[BaselineReview],
    findings: list[Finding],
    ref: str | None,
    limit: int | None = MAX_MARKDOWN,
) -> str:
    """``validate --baseline REF --format markdown``, for a job summary or a sticky PR
    comment: the verdict first, then the findings that fail or warn, then one row per
    changed, new or removed config, then the notes. Without a ``ref`` (no
    ``--baseline``), the verdict and the findings only.

    Args:
        reviews: one per config (:func:`review_against`), and one per removed config.
        findings: every finding of the run.
        ref: the ``--baseline`` revision.
        limit: the most characters to write (``None``: no limit). Over it, the findings
            and then the table are cut at an item, with "N more ...: see the job summary".
    """
    failing = [f for f in findings if f.severity in ("error", "warning")]
    errors = sum(f.severity == "error" for f in failing)
    verdict = "fails" if errors else "passes"
    title = (
        "### cnnbuild validate" if ref is None else f"### cnnbuild: models against {md_code(ref)}"
    )
    head = [
        title,
        "",
        f"**validate {verdict}**: {errors} error(s), {len(failing) - errors} warning(s).",
    ]
    items = list(map(_finding_item, failing))
    table: list[str] = []
    notes: list[str] = []
    if ref is not None:
        shown = [r for r in reviews if r.status in ("changed", "new", "removed")]
        notes = [_finding_item(f) for r in reviews for f in r.findings if f.severity == "info"]
        if not shown:
            head += [
                "",
                f"No model changed against {md_code(ref)} ({len(reviews)} configs checked).",
            ]
        table = list(map(_baseline_row, shown))
    room = (limit or 0) - _size(head) - 400  # 400: the table's header, titles, trailers
    if limit is not None:
        items = _fit(items, room, "findings")
        table = _fit(table, room - _size(items), "configs")
        notes = _fit(notes, room - _size(items) - _size(table), "notes")
    lines = [*head, *([""] + items if items else [])]
    if table:
        labels = [label for label, _, _ in _BASELINE_FIGURES]
        lines += ["", "| Config | " + " | ".join(labels) + " | Layers changed |"]
        lines += ["|---|" + "--:|" * len(labels) + "---|", *table]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def baseline_lines(reviews: list[BaselineReview], ref: str) -> list[str]:
    """For ``validate --baseline`` as text: one line per changed config, every name made
    safe for a terminal (:func:`terminal`)."""
    lines = []
    for r in reviews:
        if r.status != "changed" or r.result is None:
            continue
        cells = [
            f"{label.lower()} {_baseline_cell(r.result, path, kind)}"
            for label, path, kind in _BASELINE_FIGURES
            if _get(r.result["old"], path) != _get(r.result["new"], path)
        ]
        cells.append(f"layers {_counts_text(r.result)}")
        lines.append(terminal(f"{r.file}: against {ref}: " + "; ".join(cells)))
    return lines
