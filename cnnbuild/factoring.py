"""What the importer need not write: repeated runs as templates, automatic names.

Both keep the config exact: the same layers, with the same names and arguments.

Used by :mod:`cnnbuild.importer` on the layer list it writes.

Templates (:func:`factor`): a run of consecutive
top-level items whose names all start with one prefix (``block_3_expand``,
``block_3_project_BN``, ...) is an instance named by that prefix (``block_3``): a
template use named ``block_3`` gives its layers the names ``block_3_`` + the name written
in the template, which is how :mod:`cnnbuild.expand` names them. Runs with the same
structure (kinds, names after the prefix, argument keys) become uses of one template;
an argument whose value differs between uses becomes a parameter.

A run is factored only when nothing outside it reads a layer inside it. ``repeat`` is
not written: it would name the layers ``NAME_1``, ``NAME_2``, ... where Keras' differ.

Names (:func:`drop_automatic_names`): a written name equal to the one cnnbuild would
give the layer anyway is left out, unless ``inputs:`` reads it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from cnnbuild.catalog import REGISTRY
from cnnbuild.schema.blocks import BLOCK_KINDS, PARAM_NAME, STRUCTURAL

LAYER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,99}")
MIN_LAYERS = 4  # a template of a few layers reads worse than the layers themselves
_BLOCK_LISTS = ("main", "shortcut")
_LITERAL = ("name", "merge")


def _names(item: dict) -> list[str]:
    """Every layer name inside an item, blocks' merges and branches included."""
    ((_, args),) = item.items()
    args = args or {}
    out = [args["name"]] if isinstance(args.get("name"), str) else []
    for key in _BLOCK_LISTS:
        for inner in args.get(key, []):
            out += _names(inner)
    for branch in args.get("branches", []):
        for inner in branch:
            out += _names(inner)
    return out


def _map_items(items: list, fn) -> list:
    return [_map_item(item, fn) for item in items]


def _map_item(item: dict, fn) -> dict:
    """``item`` with ``fn(key, value)`` applied to every layer argument, recursively."""
    ((kind, args),) = item.items()
    if args is None:
        return {kind: None}
    out: dict[str, Any] = {}
    for key, value in args.items():
        if kind in BLOCK_KINDS and key in _BLOCK_LISTS:
            out[key] = _map_items(value, fn)
        elif kind in BLOCK_KINDS and key == "branches":
            out[key] = [_map_items(branch, fn) for branch in value]
        else:
            out[key] = fn(key, value)
    return {kind: out}


def _strip(item: dict, prefix: str) -> dict:
    return _map_item(item, lambda k, v: v.removeprefix(prefix) if k == "name" else v)


def _shape(item: dict) -> str:
    """The structure of an item: kinds, names and argument keys, not argument values."""
    return repr(_map_item(item, lambda k, v: v if k in _LITERAL else "*"))


def _slots(item: dict) -> list[Any]:
    """The argument values of an item, in a fixed order (what a template may vary)."""
    found: list[Any] = []

    def take(key: str, value: Any) -> Any:
        if key not in _LITERAL:
            found.append(value)
        return value

    _map_item(item, take)
    return found


def _prefixes(name: str) -> list[str]:
    parts = name.split("_")
    return ["_".join(parts[:k]) for k in range(len(parts) - 1, 0, -1)]


@dataclass
class _Run:
    start: int
    end: int
    prefix: str
    shape: tuple[str, ...]


def _runs(items: list, names: list[list[str]], blocked: set[int]) -> list[_Run]:
    """Every maximal run of items sharing a name prefix, with its stripped structure."""
    everything = {n for group in names for n in group}
    runs = []
    for i, group in enumerate(names):
        if i in blocked or not group:
            continue
        for prefix in _prefixes(group[0]):
            head = prefix + "_"
            if prefix in everything or not LAYER_NAME.fullmatch(prefix):
                continue

            def inside(k: int, head: str = head) -> bool:
                return (
                    k not in blocked
                    and bool(names[k])
                    and all(
                        n.startswith(head) and LAYER_NAME.fullmatch(n[len(head) :])
                        for n in names[k]
                    )
                )

            if i > 0 and inside(i - 1):
                continue  # not where the run starts
            end = i
            while end < len(items) and inside(end):
                end += 1
            if end > i and sum(len(names[k]) for k in range(i, end)) >= MIN_LAYERS:
                shape = tuple(_shape(_strip(items[k], head)) for k in range(i, end))
                runs.append(_Run(i, end, prefix, shape))
    return runs


def _template_name(prefix: str, taken: set[str]) -> str:
    base = re.sub(r"_+", "_", re.sub(r"[^a-z_]", "", prefix.lower().replace("-", "_")))
    base = base.strip("_") or "block"
    if base in REGISTRY or base in BLOCK_KINDS:
        base = f"{base}_block"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _slot_keys(items: list) -> list[tuple[str, str]]:
    """``(layer name, argument key)`` of each slot, in the order of :func:`_slots`."""
    out: list[tuple[str, str]] = []
    for item in items:
        ((kind, args),) = item.items()
        args = args or {}
        for key, value in args.items():
            if kind in BLOCK_KINDS and key in _BLOCK_LISTS:
                out += _slot_keys(value)
            elif kind in BLOCK_KINDS and key == "branches":
                for branch in value:
                    out += _slot_keys(branch)
            elif key not in _LITERAL:
                out.append((str(args.get("name", "")), key))
    return out


def _param_names(body: list, varying: list[int]) -> dict[int, str]:
    """A parameter name per varying slot: the argument's key, or the layer's name and
    the key where two layers vary the same argument (``expand_filters``)."""
    keys = _slot_keys(body)
    twice = Counter(keys[slot][1] for slot in varying)
    out: dict[int, str] = {}
    for slot in varying:
        owner, key = keys[slot]
        name = key if twice[key] == 1 else re.sub(r"[^A-Za-z0-9_]", "_", f"{owner}_{key}")
        if not re.fullmatch(PARAM_NAME, name) or name in ("name", *STRUCTURAL):
            name = f"p_{name}"
        base, k = name, 2
        while name in out.values():
            name, k = f"{base}_{k}", k + 1
        out[slot] = name
    return out


def _make_template(instances: list[list[dict]]) -> tuple[dict, list[dict[str, Any]]]:
    """A template for runs of one structure, and each run's parameter values."""
    slots = [[v for item in run for v in _slots(item)] for run in instances]
    varying = [s for s in range(len(slots[0])) if any(r[s] != slots[0][s] for r in slots)]
    params = _param_names(instances[0], varying)
    counter = iter(range(len(slots[0])))

    def fill(key: str, value: Any) -> Any:
        if key in _LITERAL:
            return value
        slot = next(counter)
        return f"${params[slot]}" if slot in params else value

    body = _map_items(instances[0], fill)
    values = [{params[s]: run[s] for s in varying} for run in slots]
    return {"params": list(params.values()), "layers": body}, values


def factor(items: list) -> tuple[dict[str, dict], list]:
    """Repeated runs of ``items`` as templates.

    Args:
        items: a top-level layer list, every layer named (what the importer writes).

    Returns:
        ``(templates, items)``: the ``blocks:`` mapping (empty when nothing repeats) and
        the layer list using it.
    """
    names = [_names(item) for item in items]
    read = {n for item in items for n in _listed((next(iter(item.values())) or {}).get("inputs"))}
    blocked = {
        i
        for i, item in enumerate(items)
        if "inputs" in (next(iter(item.values())) or {}) or read & set(names[i])
    }
    runs = _runs(items, names, blocked)
    counts = Counter(run.shape for run in runs)
    chosen: list[_Run] = []
    at = 0
    size = {id(run): sum(len(names[k]) for k in range(run.start, run.end)) for run in runs}
    # where runs overlap, the one whose template would cover the most layers wins
    for run in sorted(runs, key=lambda r: (r.start, -counts[r.shape] * size[id(r)])):
        if run.start >= at and counts[run.shape] >= 2:
            chosen.append(run)
            at = run.end
    split = Counter(run.prefix for run in chosen)  # an instance cut in parts by other layers
    groups: dict[tuple, list[_Run]] = {}
    for run in (r for r in chosen if split[r.prefix] == 1):
        groups.setdefault(run.shape, []).append(run)
    templates: dict[str, dict] = {}
    uses: dict[int, tuple[int, dict]] = {}
    for group in groups.values():
        if len(group) < 2:
            continue
        bodies = [[_strip(items[k], r.prefix + "_") for k in range(r.start, r.end)] for r in group]
        name = _template_name(group[0].prefix, set(templates))
        templates[name], values = _make_template(bodies)
        for run, args in zip(group, values, strict=True):
            uses[run.start] = (run.end, {name: {"name": run.prefix, **args}})
    out, k = [], 0
    while k < len(items):
        if k in uses:
            k, use = uses[k]
            out.append(use)
        else:
            out.append(items[k])
            k += 1
    return templates, out


def _listed(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return list(value) if isinstance(value, list) else []


class _Names:
    """cnnbuild's automatic layer names, replayed in expansion order (see
    :func:`cnnbuild.expand._auto_name`): a written name equal to the one cnnbuild would
    give anyway can be left out."""

    def __init__(self, templates: dict[str, dict], keep: set[str]) -> None:
        self.templates, self.keep = templates, keep
        self.taken: set[str] = {"input"}
        self.counters: Counter = Counter()

    def auto(self, stem: str, commit: bool) -> str:
        count = self.counters[stem]
        while True:
            name = stem + (f"_{count}" if count else "")
            count += 1
            if name not in self.taken:
                if commit:
                    self.counters[stem] = count
                return name

    def layer(self, kind: str, args: dict) -> dict:
        name = args.get("name")
        stem = REGISTRY[kind].snake
        if isinstance(name, str) and name not in self.keep and self.auto(stem, False) == name:
            self.auto(stem, True)
            args = {k: v for k, v in args.items() if k != "name"}
        self.taken.add(name if isinstance(name, str) else self.auto(stem, True))
        return args

    def items(self, items: list) -> list:
        return [self.item(item) for item in items]

    def item(self, item: dict) -> dict:
        ((kind, args),) = item.items()
        if kind in self.templates:
            body = self.templates[kind]["layers"]
            self.taken |= {f"{args['name']}_{n}" for inner in body for n in _names(inner)}
            return item
        if kind not in BLOCK_KINDS:
            return {kind: self.layer(kind, args or {}) or None}
        out = dict(args)
        if "main" in args:  # expanded main path first, then the shortcut, then the merge
            out["main"] = self.items(args["main"])
            if "shortcut" in args:
                out["shortcut"] = self.items(args["shortcut"])
        else:
            out["branches"] = [self.items(branch) for branch in args["branches"]]
        merge = args.get("merge", "Add" if kind == "Residual" else "Concatenate")
        named = self.layer(merge, {"name": args["name"]} if "name" in args else {})
        if "name" not in named:
            out.pop("name", None)
        return {kind: out}


def drop_automatic_names(items: list, templates: dict[str, dict]) -> list:
    """``items`` without the names cnnbuild would give the same layers anyway
    (``conv2d_3``, ``re_lu``): every layer keeps its name, fewer are written.

    A name that ``inputs:`` reads stays written (only written names can be read).
    """
    keep = {n for item in items for n in _listed((next(iter(item.values())) or {}).get("inputs"))}
    return _Names(templates, keep).items(items)
