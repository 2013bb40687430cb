"""Located YAML -> a typed model config: a flat graph of layer nodes.

A plain ``layers:`` list is a chain. Graph features (templates with parameters,
``repeat``, ``Residual`` and ``Parallel`` blocks, named outputs with ``inputs:``) all
expand here into the same flat list of :class:`Node`, in topological order, so the
static engine, the lint rules and the Keras builder each walk one simple structure.

Every problem becomes a :class:`~cnnbuild.errors.Finding` pointing at the YAML; nothing
here raises on bad input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from cnnbuild.catalog import REGISTRY
from cnnbuild.errors import Finding
from cnnbuild.schema.config import CompileConfig, LintConfig, TrainConfig
from cnnbuild.schema.layers import LayerArgs
from cnnbuild.schema.tune import SpaceEntry, TuneSection
from cnnbuild.schema.types import is_int
from cnnbuild.source import Document, PathKey, format_path

TOP_KEYS = (
    "name",
    "description",
    "input",
    "layers",
    "blocks",
    "compile",
    "train",
    "lint",
    "tune",
)
BLOCK_KINDS = ("Residual", "Parallel")
MERGES = ("Add", "Concatenate", "Multiply")
STRUCTURAL = ("inputs", "repeat")
MAX_NODES = 5_000
MAX_REPEAT = 1_000
INPUT = "input"
CODE_LAYERS = ("Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer")


@dataclass
class Node:
    """One Keras layer of the expanded graph.

    Attributes:
        name: the unique Keras layer name.
        kind: the Keras class name (a key of the registry).
        args: validated arguments, or ``None`` when they did not validate.
        inputs: names of the nodes (or ``"input"``) it reads.
        path: where the layer is written in the YAML, e.g. ``("layers", 3, "Conv2D")``.
        scope: the blocks it sits in, outermost first, for display.
        use: for a layer expanded from a template, where the template was used.
    """

    name: str
    kind: str
    args: LayerArgs | None
    inputs: list[str]
    path: PathKey
    scope: tuple[str, ...] = ()
    use: PathKey | None = None

    @property
    def depth(self) -> int:
        return len(self.scope)


@dataclass
class ModelConfig:
    """A parsed, schema-checked config (shapes are checked by :mod:`cnnbuild.trace`)."""

    file: str
    doc: Document
    name: str
    input_shape: tuple
    nodes: list[Node]
    output: str
    compile: CompileConfig
    train: TrainConfig
    lint: LintConfig
    findings: list[Finding] = field(default_factory=list)
    tune: TuneSection | None = None  # the search space of `cnnbuild tune` (cnnbuild.tune)

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


@dataclass
class _Scope:
    prefix: str
    names: dict[str, str]
    display: tuple[str, ...] = ()
    params: dict[str, Any] | None = None
    use: PathKey | None = None
    counters: dict[str, int] = field(default_factory=dict)
    stack: tuple[str, ...] = ()

    def child(self, label: str) -> _Scope:
        """Same names (so a branch's named layers stay visible), one more display level."""
        return _Scope(
            self.prefix,
            self.names,
            (*self.display, label),
            self.params,
            self.use,
            self.counters,
            self.stack,
        )


def _suggest(word: str, options: list[str] | tuple[str, ...]) -> str:
    close = get_close_matches(word, list(options), n=1, cutoff=0.6)
    if not close:
        close = [o for o in options if o.lower() == word.lower()]
    return f"; did you mean {close[0]!r}?" if close else ""


def _clean(msg: str) -> str:
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def pydantic_findings(
    doc: Document, exc: ValidationError, base: PathKey, data: Any, what: str, note: str = ""
) -> list[Finding]:
    """Turn a pydantic error into findings at the YAML location of each bad value.

    pydantic's ``loc`` may hold union-member segments that are not in the document;
    only segments that exist in ``data`` are kept (so a location is always a real path).
    """
    out: list[Finding] = []
    seen: set[PathKey] = set()
    for err in exc.errors():
        path: list = []
        node = data
        loc = list(err["loc"])
        for seg in loc:
            if (isinstance(node, dict) and seg in node) or (
                isinstance(node, list) and isinstance(seg, int) and 0 <= seg < len(node)
            ):
                path.append(seg)
                node = node[seg]
        full = (*base, *path)
        if full in seen:
            continue
        seen.add(full)
        typ = err["type"]
        if typ == "extra_forbidden":
            key = loc[-1]
            fields = list(err.get("ctx", {}).get("fields", [])) or _fields_of(exc)
            msg = f"unknown argument {key!r} for {what}{_suggest(str(key), fields)}"
            out.append(doc.finding(full, msg + note, prefer="key"))
        elif typ == "missing":
            out.append(doc.finding(full, f"{what} needs `{loc[-1]}`{note}", prefer="key"))
        else:
            out.append(doc.finding(full, _clean(err["msg"]) + note))
    return out


def _fields_of(exc: ValidationError) -> list[str]:
    model = _MODELS.get(exc.title)
    return list(model.model_fields) if model else []


_MODELS: dict[str, type[BaseModel]] = {k.args.__name__: k.args for k in REGISTRY.values()}
_MODELS.update(
    {m.__name__: m for m in (CompileConfig, TrainConfig, LintConfig, TuneSection, SpaceEntry)}
)


class _Expander:
    def __init__(self, doc: Document, blocks: dict[str, dict], findings: list[Finding]) -> None:
        self.doc = doc
        self.blocks = blocks
        self.findings = findings
        self.nodes: list[Node] = []
        self.taken: dict[str, PathKey] = {INPUT: ()}
        self.block_uses: dict[str, int] = {}
        self._seen: set[tuple] = set()

    # -- findings ---------------------------------------------------------------------
    def error(
        self, path: PathKey, msg: str, scope: _Scope, rule: str = "schema", prefer: str = "value"
    ) -> None:
        note = self._note(scope)
        key = (path, msg)
        if key in self._seen:
            return
        self._seen.add(key)
        self.findings.append(self.doc.finding(path, msg + note, rule=rule, prefer=prefer))

    def _note(self, scope: _Scope) -> str:
        if scope.use is None:
            return ""
        pos = self.doc.locate(scope.use, "key")
        return f" (in block {scope.prefix.rstrip('_')!r} used at line {pos.line})"

    # -- expansion --------------------------------------------------------------------
    def seq(self, items: Any, path: PathKey, prev: str, scope: _Scope) -> str:
        if not isinstance(items, list):
            self.error(path, f"expected a list of layers; received {type(items).__name__}", scope)
            return prev
        for i, item in enumerate(items):
            prev = self.item(item, (*path, i), prev, scope)
        return prev

    def item(self, item: Any, path: PathKey, prev: str, scope: _Scope) -> str:
        if isinstance(item, str):
            kind, args, args_path = item, {}, path
        elif isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item)), str):
            kind, args = next(iter(item.items()))
            args_path = (*path, kind)
            if args is None:
                args = {}
            elif not isinstance(args, dict):
                self.error(
                    args_path,
                    f"the arguments of {kind} must be a mapping; received {args!r}",
                    scope,
                )
                return prev
        else:
            self.error(
                path,
                "a layer is a name (`- Flatten`) or a mapping with one layer "
                "name (`- Conv2D: {filters: 32, kernel_size: 3}`); received "
                + (f"a mapping with keys {list(item)}" if isinstance(item, dict) else repr(item)),
                scope,
            )
            return prev
        if kind.startswith("$"):
            self.error(
                path, f"a layer kind cannot be a template parameter ({kind})", scope, prefer="key"
            )
            return prev
        args = self.subst(args, args_path, scope)
        args = dict(args)
        repeat = args.pop("repeat", 1)
        inputs = args.pop("inputs", None)
        if not is_int(repeat) or not 1 <= repeat <= MAX_REPEAT:
            self.error(
                (*args_path, "repeat"),
                f"repeat must be an integer from 1 to {MAX_REPEAT}; received {repeat!r}",
                scope,
            )
            repeat = 1
        name = args.get("name")
        for r in range(repeat):
            if len(self.nodes) > MAX_NODES:
                self.error(path, f"the model expands to more than {MAX_NODES} layers", scope)
                return prev
            if repeat > 1 and isinstance(name, str):
                args["name"] = f"{name}_{r + 1}"
            sources = (
                self.resolve(inputs, args_path, prev, scope) if r == 0 or inputs is None else [prev]
            )
            if sources is None:
                return prev
            prev = self.one(kind, args, path, args_path, sources, scope)
        return prev

    def subst(self, value: Any, path: PathKey, scope: _Scope) -> Any:
        if scope.params is None:
            return value
        if isinstance(value, str) and value.startswith("$"):
            key = value[1:]
            if key in scope.params:
                return scope.params[key]
            self.error(
                path,
                f"unknown template parameter {value!r}{_suggest(key, list(scope.params))}",
                scope,
            )
            return value
        if isinstance(value, dict):
            return {k: self.subst(v, (*path, k), scope) for k, v in value.items()}
        if isinstance(value, list):
            return [self.subst(v, (*path, i), scope) for i, v in enumerate(value)]
        return value

    def resolve(self, inputs: Any, path: PathKey, prev: str, scope: _Scope) -> list[str] | None:
        if inputs is None:
            return [prev]
        names = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            self.error(
                (*path, "inputs"),
                f"inputs must be a layer name or a list of layer names; received {inputs!r}",
                scope,
            )
            return None
        out = []
        for i, n in enumerate(names):
            if n not in scope.names:
                where = (*path, "inputs", i) if isinstance(inputs, list) else (*path, "inputs")
                self.error(
                    where,
                    f"unknown input {n!r}: no earlier layer has that name"
                    f"{_suggest(n, list(scope.names))}",
                    scope,
                )
                return None
            out.append(scope.names[n])
        return out

    def auto_name(self, stem: str, scope: _Scope) -> str:
        while True:
            count = scope.counters.get(stem, 0)
            scope.counters[stem] = count + 1
            name = f"{scope.prefix}{stem}" + (f"_{count}" if count else "")
            if name not in self.taken:
                return name

    def claim(self, user: str | None, stem: str, path: PathKey, scope: _Scope) -> str | None:
        if user is None:
            return self.auto_name(stem, scope)
        full = scope.prefix + user
        if full in self.taken:
            first = self.taken[full]
            where = (
                f" by {format_path(first)} (line {self.doc.locate(first, 'key').line})"
                if first
                else " (it names the model input)"
            )
            self.error(
                (*path, "name"),
                f"duplicate layer name {full!r}: already used{where}",
                scope,
                rule="duplicate-name",
            )
            return None
        return full

    def one(
        self,
        kind: str,
        args: dict,
        path: PathKey,
        args_path: PathKey,
        sources: list[str],
        scope: _Scope,
    ) -> str:
        prev = sources[0] if len(sources) == 1 else sources[-1]
        if kind in BLOCK_KINDS:
            return self.block(kind, args, args_path, sources, scope)
        if kind in self.blocks:
            return self.template(kind, args, path, args_path, sources, scope)
        spec = REGISTRY.get(kind)
        if spec is None:
            options = [*REGISTRY, *BLOCK_KINDS, *self.blocks]
            short = kind.rsplit(".", 1)[-1]
            if kind in CODE_LAYERS:
                why = ": layers that run code are not allowed in configs"
            elif short != kind:
                why = "; configs name layers, not import paths" + (
                    f": use {short!r}" if short in options else _suggest(short, options)
                )
            else:
                why = _suggest(kind, options)
            self.error(
                path, f"unknown layer {kind!r}{why}", scope, rule="unknown-layer", prefer="key"
            )
            return prev
        try:
            parsed = spec.args(**args)
        except ValidationError as exc:
            for f in pydantic_findings(self.doc, exc, args_path, args, kind, self._note(scope)):
                key = (f.path, f.message)
                if key not in self._seen:
                    self._seen.add(key)
                    self.findings.append(f)
            parsed = None
        except TypeError:
            self.error(args_path, f"the argument names of {kind} must be strings", scope)
            parsed = None
        if spec.merge and len(sources) < 2:
            self.error(
                args_path,
                f"{kind} merges several tensors: give `inputs:` a list of at least 2 layer names",
                scope,
            )
        if not spec.merge and len(sources) > 1:
            self.error(
                (*args_path, "inputs"),
                f"{kind} takes one input; received "
                f"{len(sources)}; merge them first with Add or "
                "Concatenate",
                scope,
            )
        user = args.get("name") if isinstance(args.get("name"), str) else None
        name = self.claim(user, spec.snake, args_path, scope) or self.auto_name(spec.snake, scope)
        self.taken[name] = args_path
        if user is not None:
            scope.names[user] = name
        self.nodes.append(Node(name, kind, parsed, sources, args_path, scope.display, scope.use))
        return name

    def block(self, kind: str, args: dict, path: PathKey, sources: list[str], scope: _Scope) -> str:
        x = sources[0]
        allowed = {
            "Residual": ("main", "shortcut", "merge", "name", "axis"),
            "Parallel": ("branches", "merge", "name", "axis"),
        }[kind]
        for key in args:
            if key not in allowed:
                self.error(
                    (*path, key),
                    f"unknown key {key!r} for {kind}"
                    f"{_suggest(str(key), allowed)}; expected " + ", ".join(allowed),
                    scope,
                    prefer="key",
                )
        if len(sources) > 1:
            self.error((*path, "inputs"), f"{kind} takes one input; received {len(sources)}", scope)
        merge = args.get("merge", "Add" if kind == "Residual" else "Concatenate")
        if merge not in MERGES:
            self.error(
                (*path, "merge"),
                f"merge must be one of {', '.join(MERGES)}; "
                f"received {merge!r}{_suggest(str(merge), MERGES)}",
                scope,
            )
            return x
        label = args.get("name") if isinstance(args.get("name"), str) else kind.lower()
        inner = scope.child(label)
        if kind == "Residual":
            if "main" not in args:
                self.error(
                    path,
                    "Residual needs `main`: the list of layers of the main path",
                    scope,
                    prefer="key",
                )
                return x
            main = self.seq(args["main"], (*path, "main"), x, inner.child("main"))
            short = args.get("shortcut") or []
            shortcut = self.seq(short, (*path, "shortcut"), x, inner.child("shortcut"))
            branches = [shortcut, main]
        else:
            given = args.get("branches")
            if not isinstance(given, list) or len(given) < 2:
                self.error(
                    (*path, "branches"),
                    "Parallel needs `branches`: a list of at least 2 lists of layers",
                    scope,
                    prefer="key",
                )
                return x
            branches = [
                self.seq(b or [], (*path, "branches", i), x, inner.child(f"branch {i}"))
                for i, b in enumerate(given)
            ]
        merge_args = {k: args[k] for k in ("name", "axis") if k in args}
        if "axis" in merge_args and merge != "Concatenate":
            self.error((*path, "axis"), f"axis applies to merge: Concatenate, not {merge}", scope)
            merge_args.pop("axis")
        return self.one(merge, merge_args, path, path, branches, inner)

    def template(
        self,
        kind: str,
        args: dict,
        path: PathKey,
        args_path: PathKey,
        sources: list[str],
        scope: _Scope,
    ) -> str:
        x = sources[0]
        if kind in scope.stack:
            self.error(
                path,
                f"block {kind!r} uses itself: " + " -> ".join((*scope.stack, kind)),
                scope,
                prefer="key",
            )
            return x
        spec = self.blocks[kind]
        params = dict(spec["defaults"])
        user_name = args.pop("name", None)
        for key, value in args.items():
            if key not in spec["params"]:
                self.error(
                    (*args_path, key),
                    f"unknown parameter {key!r} for block {kind!r}"
                    f"{_suggest(str(key), spec['params'])}; its "
                    "parameters are " + ", ".join(spec["params"]),
                    scope,
                    prefer="key",
                )
                continue
            params[key] = value
        missing = [p for p in spec["params"] if p not in params]
        if missing:
            self.error(
                path,
                f"block {kind!r} needs " + ", ".join(f"`{m}`" for m in missing),
                scope,
                prefer="key",
            )
            return x
        if isinstance(user_name, str):
            instance = scope.prefix + user_name
        else:
            count = self.block_uses.get(kind, 0) + 1
            self.block_uses[kind] = count
            instance = f"{scope.prefix}{kind}_{count}"
        if isinstance(user_name, str):
            scope.names[user_name] = instance  # refers to the block's output, set below
        inner = _Scope(
            f"{instance}_",
            {INPUT: x},
            (*scope.display, instance),
            params,
            scope.use if scope.use is not None else args_path,
            {},
            (*scope.stack, kind),
        )
        out = self.seq(spec["layers"], ("blocks", kind, "layers"), x, inner)
        if isinstance(user_name, str):
            scope.names[user_name] = out
        return out


def _parse_blocks(doc: Document, raw: Any, findings: list[Finding]) -> dict[str, dict]:
    blocks: dict[str, dict] = {}
    if raw is None:
        return blocks
    if not isinstance(raw, dict):
        findings.append(
            doc.finding(
                ("blocks",),
                "blocks must be a mapping of block names to {params: ..., layers: [...]}",
            )
        )
        return blocks
    for name, spec in raw.items():
        path = ("blocks", name)
        if not isinstance(name, str) or not re.fullmatch(r"[a-z_][A-Za-z0-9_]*", name):
            findings.append(
                doc.finding(
                    path,
                    "a block name starts with a lowercase letter or "
                    "'_' (layer kinds are CamelCase), then letters, "
                    f"digits or '_'; received {name!r}",
                    prefer="key",
                )
            )
            continue
        if name in REGISTRY or name in BLOCK_KINDS:
            findings.append(
                doc.finding(
                    path,
                    f"block {name!r} has the name of a built-in layer; choose another name",
                    prefer="key",
                )
            )
            continue
        if not isinstance(spec, dict) or "layers" not in spec:
            findings.append(
                doc.finding(
                    path, f"block {name!r} needs `layers:` (and optional `params:`)", prefer="key"
                )
            )
            continue
        extra = [k for k in spec if k not in ("params", "layers", "description")]
        for key in extra:
            findings.append(
                doc.finding(
                    (*path, key),
                    f"unknown key {key!r} in block {name!r}; expected params, layers, description",
                    prefer="key",
                )
            )
        params, defaults = _parse_params(doc, spec.get("params"), (*path, "params"), findings)
        blocks[name] = {"params": params, "defaults": defaults, "layers": spec["layers"]}
    return blocks


def _parse_params(
    doc: Document, raw: Any, path: PathKey, findings: list[Finding]
) -> tuple[list[str], dict[str, Any]]:
    """``[filters, {strides: 1}]`` (bare names are required) or ``{strides: 1}``."""
    names: list[str] = []
    defaults: dict[str, Any] = {}
    if raw is None:
        return names, defaults
    entries = list(raw.items()) if isinstance(raw, dict) else raw
    if not isinstance(entries, list):
        findings.append(
            doc.finding(path, "params must be a list of names and {name: default} mappings")
        )
        return names, defaults
    for i, entry in enumerate(entries):
        if isinstance(entry, tuple):
            key, default = entry
            names.append(str(key))
            defaults[str(key)] = default
        elif isinstance(entry, str):
            names.append(entry)
        elif isinstance(entry, dict) and len(entry) == 1:
            ((key, default),) = entry.items()
            names.append(str(key))
            defaults[str(key)] = default
        else:
            findings.append(
                doc.finding(
                    (*path, i), f"a parameter is a name or {{name: default}}; received {entry!r}"
                )
            )
    for n in names:
        if n in ("name", *STRUCTURAL):
            findings.append(doc.finding(path, f"{n!r} is reserved and cannot be a block parameter"))
    return names, defaults


def _parse_input(doc: Document, raw: Any, findings: list[Finding]) -> tuple | None:
    ok = (
        isinstance(raw, list)
        and len(raw) == 3
        and all(v is None or (is_int(v) and v > 0) for v in raw[:2])
        and is_int(raw[2])
        and raw[2] > 0
    )
    if not ok:
        findings.append(
            doc.finding(
                ("input",),
                "input must be [height, width, channels]: "
                "positive integers (height and width may be "
                f"null); received {raw!r}",
            )
        )
        return None
    return tuple(raw)


def _section(
    doc: Document, data: dict, key: str, model: type[BaseModel], findings: list[Finding]
) -> Any:
    raw = data.get(key)
    if raw is None:
        return model()
    if not isinstance(raw, dict):
        findings.append(doc.finding((key,), f"{key} must be a mapping; received {raw!r}"))
        return model()
    try:
        return model(**raw)
    except ValidationError as exc:
        findings.extend(pydantic_findings(doc, exc, (key,), raw, f"`{key}`"))
    except TypeError:
        findings.append(doc.finding((key,), f"the keys of {key} must be strings"))
    return model()


def from_document(doc: Document) -> ModelConfig | None:
    """Check a parsed document and expand its layers into nodes.

    Returns:
        The config with ``findings`` (possibly errors), or ``None`` when the document is
        not even a mapping.
    """
    findings = list(doc.findings)
    data = doc.data
    if data is None and not findings:
        findings.append(
            doc.finding(
                (), "the file is empty; expected a mapping with `input:` and `layers:`", rule="yaml"
            )
        )
    if not isinstance(data, dict):
        if data is not None:
            findings.append(
                doc.finding(
                    (),
                    "a config is a mapping with `input:` and "
                    f"`layers:`; received a {type(data).__name__}",
                )
            )
        doc.findings = findings
        return None
    for key in data:
        if key not in TOP_KEYS:
            findings.append(
                doc.finding(
                    (key,),
                    f"unknown key {key!r}"
                    f"{_suggest(str(key), TOP_KEYS)}; expected one "
                    f"of {', '.join(TOP_KEYS)}",
                    prefer="key",
                )
            )
    for key in ("input", "layers"):
        if key not in data:
            findings.append(doc.finding((), f"missing `{key}:`", prefer="key"))
    name = data.get("name", Path(doc.file).stem)
    if not isinstance(name, str) or not name:
        findings.append(doc.finding(("name",), f"name must be a string; received {name!r}"))
        name = Path(doc.file).stem
    input_shape = _parse_input(doc, data.get("input"), findings) if "input" in data else None
    compile_cfg = _section(doc, data, "compile", CompileConfig, findings)
    train_cfg = _section(doc, data, "train", TrainConfig, findings)
    lint_cfg = _section(doc, data, "lint", LintConfig, findings)
    tune_cfg = _section(doc, data, "tune", TuneSection, findings) if "tune" in data else None
    blocks = _parse_blocks(doc, data.get("blocks"), findings)
    expander = _Expander(doc, blocks, findings)
    output = INPUT
    if "layers" in data:
        layers = data["layers"]
        if isinstance(layers, list) and not layers:
            findings.append(
                doc.finding(("layers",), "layers is empty; a model needs at least one layer")
            )
        output = expander.seq(layers, ("layers",), INPUT, _Scope("", {INPUT: INPUT}))
    return ModelConfig(
        doc.file,
        doc,
        name,
        input_shape or (None, None, None),
        expander.nodes,
        output,
        compile_cfg,
        train_cfg,
        lint_cfg,
        findings,
        tune=tune_cfg,
    )
