"""The layers of a document -> a flat graph of :class:`Node`, in topological order.

A plain ``layers:`` list is a chain. Templates (``blocks:``) with parameters and
arithmetic, ``repeat``, ``Residual`` and ``Parallel`` blocks and named outputs with
``inputs:`` all expand here, so the static engine, the lint rules and the Keras builder
each walk one simple structure. Then, as Keras does, layers that nothing reads are left
out of the graph (a ``dead-layer`` warning says so), and the model gets its one pixel
scaling (``input_scaling``) unless the config scales.

The size of the expansion is counted before anything is expanded (:func:`budget`), and
template nesting is bounded, so no file can make the expander run long or deep.

Every problem becomes a :class:`~cnnbuild.errors.Finding` pointing at the YAML; nothing
here raises on bad input.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from cnnbuild.catalog import (
    ALIASES,
    INPUT_ARGS,
    INPUT_LAYERS,
    INPUT_WAY,
    PREPROCESS_GROUPS,
    REGISTRY,
    near_kinds,
    resolve,
    scales_input,
)
from cnnbuild.errors import UNKNOWN_KEY, Finding, closest, from_pydantic, suggest
from cnnbuild.expression import MAX_NESTING, ExpressionError, evaluate, interpolate
from cnnbuild.schema.blocks import (
    BLOCK_KINDS,
    BLOCK_MODELS,
    MAX_REPEAT,
    REQUIRED,
    TEMPLATE_NAME,
    Template,
)
from cnnbuild.schema.layers import LayerArgs
from cnnbuild.schema.types import EXPONENT, is_int
from cnnbuild.source import Document, PathKey, format_path

INPUT = "input"
MAX_NODES = 5_000
CODE_LAYERS = ("Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer")
INPUT_SCALING = "input_scaling"
PIXEL_SCALE = 1 / 255


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
    frozen: bool = False  # `trainable: false` on it or on a block or template use around it

    @property
    def depth(self) -> int:
        return len(self.scope)


@dataclass
class _Scope:
    """Where a layer list is expanded: its names, its template parameters."""

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


@dataclass
class _Graph:
    """What an expansion accumulates: the nodes, the names taken, the findings."""

    doc: Document
    templates: dict[str, Template]
    findings: list[Finding]
    nodes: list[Node] = field(default_factory=list)
    taken: dict[str, PathKey] = field(default_factory=lambda: {INPUT: ()})
    uses: dict[str, int] = field(default_factory=dict)
    seen: set[tuple] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)  # values whose template expression failed
    built: set[PathKey] = field(default_factory=set)  # `name:`s built from parameters
    broken: bool = False  # a layer was left out for an unresolved input: connectivity is off
    work: int = 0  # layers and block uses expanded so far: a second bound after budget()


# -- the entry point ----------------------------------------------------------------------


def expand(
    doc: Document, layers: Any, raw_blocks: Any, findings: list[Finding], image: bool = True
) -> tuple[list[Node], str]:
    """Expand ``layers`` (with the templates of ``raw_blocks``) into nodes.

    Args:
        doc: the document, for positions.
        layers: the value of ``layers:``.
        raw_blocks: the value of ``blocks:`` (or ``None``).
        findings: where problems go.
        image: whether the input is an image (it then gets its pixel scaling).

    Returns:
        ``(nodes, output)``: the graph and the name of its output node.
    """
    g = _Graph(doc, parse_templates(doc, raw_blocks, findings), findings)
    size = budget(layers, g.templates)
    if size > MAX_NODES:
        findings.append(
            doc.finding(
                ("layers",),
                f"the model expands to more than {MAX_NODES:,} layers (counting every "
                "repeat and every use of a block); refusing to expand it",
                prefer="key",
            )
        )
        return [], INPUT
    output = _seq(g, layers, ("layers",), INPUT, _Scope("", {INPUT: INPUT}))
    unknown = output.startswith(UNKNOWN)  # the model ends in an unknown layer (an error)
    g.nodes = _live(g, INPUT if unknown else output)
    if image and g.nodes:
        output = _add_input_scaling(g.nodes, output, g.taken)
    return g.nodes, INPUT if unknown else output


# -- templates ------------------------------------------------------------------------------


def parse_templates(doc: Document, raw: Any, findings: list[Finding]) -> dict[str, Template]:
    """The templates of ``blocks:``, each checked by :class:`Template`."""
    out: dict[str, Template] = {}
    if raw is None:
        return out
    if not isinstance(raw, dict):
        findings.append(
            doc.finding(
                ("blocks",), "blocks must be a mapping of block names to {params:, layers:}"
            )
        )
        return out
    for name, spec in raw.items():
        path = ("blocks", name)
        if not isinstance(name, str) or not re.fullmatch(TEMPLATE_NAME, name):
            findings.append(
                doc.finding(
                    path,
                    "a block name starts with a lowercase letter or '_' (layer kinds are "
                    f"CamelCase), then letters, digits or '_'; received {name!r}",
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
        if not isinstance(spec, dict):
            findings.append(
                doc.finding(path, f"block {name!r} needs `layers:` (and optional `params:`)")
            )
            continue
        try:
            out[name] = Template(**spec)
        except ValidationError as exc:
            findings.extend(
                from_pydantic(doc, exc, path, spec, f"block {name!r}", Template.model_fields)
            )
        except TypeError:
            findings.append(doc.finding(path, f"the keys of block {name!r} must be strings"))
    return out


def budget(layers: Any, templates: dict[str, Template]) -> int:
    """How many layers ``layers`` expands to, counted without expanding anything.

    Every use of a block counts one more (so empty blocks repeated a million times are
    refused too). A template's size is computed once per set of parameters; counting
    stops as soon as it passes :data:`MAX_NODES`. Malformed items count one; the
    expander reports them.
    """
    memo: dict[tuple, int] = {}

    def count(items: Any, params: dict | None, depth: int) -> int:
        if not isinstance(items, list) or depth > MAX_NESTING:
            return 0
        total = 0
        for item in items:
            kind, args = _split(item)
            if kind is None:
                total += 1
                continue
            args = _quiet(args, params)
            repeat = args.get("repeat", 1)
            repeat = repeat if is_int(repeat) and 1 <= repeat <= MAX_REPEAT else 1
            one = 1
            if kind == "Residual":
                one += count(args.get("main"), params, depth + 1)
                one += count(args.get("shortcut"), params, depth + 1)
            elif kind == "Parallel":
                branches = args.get("branches")
                for b in branches if isinstance(branches, list) else []:
                    one += count(b, params, depth + 1)
            elif kind in templates:
                spec = templates[kind]
                inner = {**spec.params, **{k: v for k, v in args.items() if k in spec.params}}
                key = (kind, repr(sorted(inner.items())))
                if key not in memo:
                    memo[key] = 0  # a template that uses itself counts once (reported later)
                    memo[key] = count(spec.layers, inner, depth + 1)
                one += memo[key]
            total += repeat * one
            if total > MAX_NODES:
                return total
        return total

    return count(layers, None, 0)


def _quiet(args: dict, params: dict | None) -> dict:
    """``args`` with template parameters filled in where they resolve, for counting."""
    if params is None:
        return args
    out = {}
    for key, value in args.items():
        if isinstance(value, str) and "$" in value:
            with contextlib.suppress(ExpressionError):
                value = evaluate(value, params)
        out[key] = value
    return out


# -- expansion -------------------------------------------------------------------------------


def _error(
    g: _Graph,
    path: PathKey,
    msg: str,
    scope: _Scope,
    rule: str = "schema",
    prefer: str = "value",
    column: int | None = None,
    code: str = "",
) -> None:
    key = (path, msg)
    if key in g.seen:
        return
    g.seen.add(key)
    finding = g.doc.finding(path, msg + _note(g, scope), rule=rule, prefer=prefer)
    if code:
        finding.extra["code"] = code
    if column is not None:
        finding.column, finding.end_line, finding.end_column = column, None, None
    g.findings.append(finding)


def _note(g: _Graph, scope: _Scope) -> str:
    if scope.use is None:
        return ""
    pos = g.doc.locate(scope.use, "key")
    return f" (in block {scope.prefix.rstrip('_')!r} used at line {pos.line})"


def _split(item: Any) -> tuple[str | None, dict]:
    """``- Flatten`` or ``- Conv2D: {...}`` -> (kind, args); (None, {}) when neither."""
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item)), str):
        kind, args = next(iter(item.items()))
        return kind, args if isinstance(args, dict) else {}
    return None, {}


def _seq(g: _Graph, items: Any, path: PathKey, prev: str, scope: _Scope) -> str:
    if not isinstance(items, list):
        _error(g, path, f"expected a list of layers; received {type(items).__name__}", scope)
        return prev
    for i, item in enumerate(items):
        prev = _item(g, item, (*path, i), prev, scope)
    return prev


def _item(g: _Graph, item: Any, path: PathKey, prev: str, scope: _Scope) -> str:
    kind, args = _split(item)
    if kind is None:
        _error(
            g,
            path,
            "a layer is a name (`- Flatten`) or a mapping with one layer name "
            "(`- Conv2D: {filters: 32, kernel_size: 3}`); received "
            + (f"a mapping with keys {list(item)}" if isinstance(item, dict) else repr(item)),
            scope,
        )
        return prev
    args_path = path if isinstance(item, str) else (*path, kind)
    if isinstance(item, dict) and not isinstance(item[kind], dict | None):
        if resolve(kind) is not None:  # Keras' positional habit: `Dropout: 0.5`
            args = _positional(g, kind, item[kind], args_path, scope)
            if args is None:
                g.broken = True  # not read as the identity: the graph is cut here
                return UNKNOWN + kind
        else:
            message = f"the arguments of {kind} must be a mapping; received {item[kind]!r}"
            _error(g, args_path, message, scope)
            return prev
    if kind.startswith("$"):
        _error(
            g, path, f"a layer kind cannot be a template parameter ({kind})", scope, prefer="key"
        )
        return prev
    args = _subst(g, args, args_path, scope)
    repeat = args.pop("repeat", 1)
    inputs = args.pop("inputs", None)
    if not is_int(repeat) or not 1 <= repeat <= MAX_REPEAT:
        _error(
            g,
            (*args_path, "repeat"),
            f"repeat must be an integer from 1 to {MAX_REPEAT}; received {repeat!r}",
            scope,
        )
        repeat = 1
    sources = _resolve(g, inputs, args_path, prev, scope)
    if sources is None:
        return prev
    name = args.get("name")
    for r in range(repeat):
        if g.work > MAX_NODES:
            _error(g, path, f"the model expands to more than {MAX_NODES:,} layers", scope)
            return prev
        if repeat > 1 and isinstance(name, str):
            args["name"] = f"{name}_{r + 1}"
        if r:
            sources = [prev, *sources[1:]]
        prev = _one(g, kind, dict(args), path, args_path, sources, scope)
    return prev


def _positional(g: _Graph, kind: str, value: Any, path: PathKey, scope: _Scope) -> dict | None:
    """``Dropout: 0.5``, Keras' positional argument: an error that names the argument.
    A kind with one required argument (Keras' first) is read as meant, so the layers after
    it are still checked; for another kind, ``None``."""
    required = [n for n, f in resolve(kind).args.model_fields.items() if f.is_required()]
    shown = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(required) == 1:
        write = f"write `{kind}: {{{required[0]}: {shown}}}`"
    else:
        write = f"`{kind}: {{{', '.join(f'{n}: ...' for n in required) or 'argument: value'}}}`"
    message = (
        f"the arguments of {kind} must be a mapping; received {value!r} "
        f"(YAML names each argument: {write})"
    )
    _error(g, path, message, scope)
    return {required[0]: value} if len(required) == 1 else None


def _subst(g: _Graph, value: Any, path: PathKey, scope: _Scope) -> Any:
    """Fill in ``$name`` and arithmetic (text only in a ``name``: ``conv_dw_$id``); a bad
    expression is reported at its character."""
    if scope.params is None:
        return dict(value) if isinstance(value, dict) else value
    if isinstance(value, str) and "$" in value:
        try:
            if path[-1] == "name":
                g.built.add(path)
                return interpolate(value, scope.params)
            if _in_inputs(path) and not re.fullmatch(r"\s*\$\w+\s*", value):
                return interpolate(value, scope.params)  # `$skip` alone may be a list
            return evaluate(value, scope.params)
        except ExpressionError as exc:
            _error(g, path, exc.message, scope, column=_column(g.doc, path, exc.offset))
            g.failed.add(format_path(path))
            # a name not built is left out (an automatic one), never the raw `c_$id` that
            # every other failed use would then duplicate
            return None if path[-1] == "name" else value
    if isinstance(value, dict):
        return {k: _subst(g, v, (*path, k), scope) for k, v in value.items()}
    if isinstance(value, list):
        return [_subst(g, v, (*path, i), scope) for i, v in enumerate(value)]
    return value


def _in_inputs(path: PathKey) -> bool:
    """Whether the value at ``path`` is ``inputs:`` or one of its items: layer names,
    where text is built as in ``name:`` (arithmetic everywhere else)."""
    return path[-1] == "inputs" or (len(path) > 1 and path[-2] == "inputs")


def _column(doc: Document, path: PathKey, offset: int) -> int:
    """The column of character ``offset`` of the string value at ``path``."""
    pos = doc.locate(path, "value")
    line = doc.lines[pos.line - 1] if 0 < pos.line <= len(doc.lines) else ""
    quoted = line[pos.column - 1 : pos.column] in ("'", '"')
    return pos.column + offset + int(quoted)


def _resolve(g: _Graph, inputs: Any, path: PathKey, prev: str, scope: _Scope) -> list[str] | None:
    if inputs is None:
        return [prev]
    names = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        _error(
            g,
            (*path, "inputs"),
            f"inputs must be a layer name or a list of layer names; received {inputs!r}",
            scope,
        )
        return None
    out = []
    for i, n in enumerate(names):
        if n not in scope.names:
            where = (*path, "inputs", i) if isinstance(inputs, list) else (*path, "inputs")
            why = f"no earlier layer has that name{suggest(n, scope.names)}"
            if scope.params is not None and n in g.taken:  # a layer outside the template
                why = (
                    "a block reads only its own layers and its inputs (`input`, or the "
                    "names in the block's `inputs:`); pass it in through `inputs:`"
                )
            _error(g, where, f"unknown input {n!r}: {why}", scope)
            g.broken = True
            return None
        out.append(scope.names[n])
    return out


def _auto_name(g: _Graph, stem: str, scope: _Scope) -> str:
    while True:
        count = scope.counters.get(stem, 0)
        scope.counters[stem] = count + 1
        name = f"{scope.prefix}{stem}" + (f"_{count}" if count else "")
        if name not in g.taken:
            return name


def _claim(g: _Graph, user: str | None, stem: str, path: PathKey, scope: _Scope) -> str:
    if user is None:
        return _auto_name(g, stem, scope)
    full = user if (*path, "name") in g.built else scope.prefix + user
    if full in g.taken:
        first = g.taken[full]
        where = (
            f" by {format_path(first)} (line {g.doc.locate(first, 'key').line})"
            if first
            else " (it names the model input)"
        )
        _error(
            g,
            (*path, "name"),
            f"duplicate layer name {full!r}: already used{where}",
            scope,
            rule="duplicate-name",
        )
        return _auto_name(g, stem, scope)
    return full


def _one(
    g: _Graph,
    kind: str,
    args: dict,
    path: PathKey,
    args_path: PathKey,
    sources: list[str],
    scope: _Scope,
) -> str:
    g.work += 1
    if kind in BLOCK_KINDS or kind in g.templates:
        start = len(g.nodes)
        if kind in BLOCK_KINDS:
            out = _block(g, kind, args, args_path, sources, scope)
        else:
            out = _template(g, kind, args, path, args_path, sources, scope)
        if _frozen_use(g, kind, args, args_path, scope):
            for node in g.nodes[start:]:
                node.frozen = True
        return out
    spec = resolve(kind)
    if spec is None:
        return _unknown(g, kind, args, path, scope)
    args = _python_habits(g, args, args_path, scope)
    for key in INPUT_ARGS:
        if key in args:  # Keras' Sequential habit: refused with the config's way
            args.pop(key)
            message = f"{key} is not a layer argument in a config: {INPUT_WAY}"
            _error(g, (*args_path, key), message, scope, prefer="key")
    parsed = _layer_args(g, spec.args, kind, args, args_path, scope)
    if spec.merge and len(sources) < 2:
        _error(
            g,
            args_path,
            f"{kind} merges several tensors: give `inputs:` a list of at least 2 layer names",
            scope,
        )
    if not spec.merge and len(sources) > 1:
        _error(
            g,
            (*args_path, "inputs"),
            f"{kind} takes one input; received {len(sources)}; merge them first with Add or "
            "Concatenate",
            scope,
        )
    user = args.get("name") if isinstance(args.get("name"), str) else None
    name = _claim(g, user, spec.snake, args_path, scope)
    g.taken[name] = args_path
    if user is not None:
        scope.names[user] = name
    frozen = parsed is not None and not parsed.trainable
    g.nodes.append(
        Node(name, spec.name, parsed, sources, args_path, scope.display, scope.use, frozen)
    )
    return name


def _frozen_use(g: _Graph, kind: str, args: dict, path: PathKey, scope: _Scope) -> bool:
    """Whether a block or template use says ``trainable: false`` (then every layer inside
    is frozen); a value other than true or false is reported."""
    value = args.get("trainable", True)
    if kind in g.templates and "trainable" in g.templates[kind].params:
        return False  # the template's own parameter
    if isinstance(value, bool):
        return not value
    if kind in g.templates:  # a block model reports it itself
        message = f"trainable must be true or false; received {value!r}"
        _error(g, (*path, "trainable"), message, scope)
    return False


UNKNOWN = "unknown:"
"""The prefix of what an unknown layer gives the layers after it: no node has that name,
so nothing after it gets a shape, and the lint rules do not reason through it."""


def _unknown(g: _Graph, kind: str, args: dict, path: PathKey, scope: _Scope) -> str:
    """Report a kind the registry does not know; the layers after it read a tensor no
    node makes (not the layer before, as if the unknown one were the identity)."""
    options = [*REGISTRY, *ALIASES, *BLOCK_KINDS, *g.templates]
    short = kind.rsplit(".", 1)[-1]

    def _suggest_kind(name: str, options: list[str]) -> str:
        close = near_kinds(name, options)
        return f"; did you mean {close[0]!r}?" if close else ""

    if kind in CODE_LAYERS:
        why = ": layers that run code are not allowed in configs"
    elif kind in INPUT_LAYERS:
        why = f"; a config's input is not a layer: {INPUT_WAY}"
    elif short != kind:
        why = "; configs name layers, not import paths" + (
            f": use {short!r}" if short in options else _suggest_kind(short, options)
        )
    else:
        why = _suggest_kind(kind, options)
    _error(g, path, f"unknown layer {kind!r}{why}", scope, rule="unknown-layer", prefer="key")
    g.broken = True  # keep every layer: the graph is cut here
    out = UNKNOWN + kind
    if isinstance(args.get("name"), str):
        scope.names[args["name"]] = out
    return out


_INT = r"\s*[-+]?\d+\s*"
_TUPLE = re.compile(rf"\s*\(({_INT}(?:,{_INT})*),?\s*\)\s*")
_NUMBER = r"\s*(\d+\.?\d*|\.\d+)\s*"
_FRACTION = re.compile(rf"{_NUMBER}/{_NUMBER}")


def _habit(text: str) -> tuple[Any, str] | None:
    """What a Python spelling that YAML reads as text means, and how to write it in YAML:
    ``(3, 3)``, ``None``, ``1./255``, ``1e-3``; ``None`` when ``text`` is none of them."""
    if m := _TUPLE.fullmatch(text):
        items = [int(v) for v in m.group(1).split(",")]
        return items, f"write {items}: YAML has no tuples"
    if text.strip() == "None":
        return None, "write null, or leave the argument out: YAML's null is not None"
    if (m := _FRACTION.fullmatch(text)) and float(m.group(2)) != 0:
        value = float(m.group(1)) / float(m.group(2))
        return value, f"write the number {_decimal(value)}: YAML does no arithmetic"
    if EXPONENT.fullmatch(text):
        value = float(text)
        return value, f"write {_decimal(value)}: YAML 1.1 reads {text.strip()} as text"
    return None


def _decimal(value: float) -> str:
    """``value`` as YAML 1.1 reads a float (digits and a dot, no exponent)."""
    from decimal import Decimal

    text = format(Decimal(repr(value)), "f")
    return text if "." in text else text + ".0"


def _python_habits(g: _Graph, args: dict, path: PathKey, scope: _Scope) -> dict:
    """``args`` with Python spellings YAML reads as text (``kernel_size: (3, 3)``,
    ``activation: None``, ``scale: 1./255``) read as meant, each reported once as an
    error with the YAML way to write it.

    In a flow mapping (``{kernel_size: (3, 3)}``) YAML splits a tuple at its commas into
    the value ``'(3'`` and a key ``'3)'``; the pieces are put back together first.
    """
    items = list(args.items())
    out: dict = {}
    i = 0
    while i < len(items):
        key, value = items[i]
        i += 1
        if not isinstance(value, str):
            out[key] = value
            continue
        text, j = value, i
        while text.lstrip().startswith("(") and not text.rstrip().endswith(")"):
            if j >= len(items) or items[j][1] is not None or not isinstance(items[j][0], str):
                break
            if not re.fullmatch(r"\s*[-+]?\d+\s*\)?\s*", items[j][0]):
                break
            text, j = f"{text}, {items[j][0].strip()}", j + 1
        habit = _habit(text)
        if habit is None:
            out[key] = value
            continue
        i = j
        out[key] = habit[0]
        where = (*path, key)
        if (where, "habit") not in g.seen:
            g.seen.add((where, "habit"))
            g.findings.append(
                g.doc.finding(
                    where,
                    f"YAML reads {text.strip()!r} as text" + _note(g, scope),
                    hint=habit[1],
                )
            )
    return out


def _layer_args(
    g: _Graph, model: type[LayerArgs], kind: str, args: dict, path: PathKey, scope: _Scope
) -> LayerArgs | None:
    """Validate a layer's arguments; on failure report them and try a repair.

    A misspelt argument (``kernal_size``) is read as the one it most likely means, and
    unknown ones are dropped, so the shapes and lint rules still check the layers that
    follow (the config stays refused: the finding is an error). ``None`` when even the
    repaired arguments do not validate.
    """
    try:
        return model(**args)
    except TypeError:
        _error(g, path, f"the argument names of {kind} must be strings", scope)
        return None
    except ValidationError as exc:
        for f in from_pydantic(g.doc, exc, path, args, kind, model.model_fields, _note(g, scope)):
            if f.path not in g.failed and (f.path, f.message) not in g.seen:
                g.seen.add((f.path, f.message))
                g.findings.append(f)
    fields = model.model_fields
    repaired: dict = {}
    for key, value in args.items():
        meant = key if key in fields else closest(str(key), fields)
        if meant is not None and meant not in args:
            repaired[meant] = value
        elif meant == key:
            repaired[key] = value
    try:
        return model(**repaired)
    except (ValidationError, TypeError):
        return None


def _block(
    g: _Graph, kind: str, args: dict, path: PathKey, sources: list[str], scope: _Scope
) -> str:
    x = sources[0]
    if len(sources) > 1:
        _error(g, (*path, "inputs"), f"{kind} takes one input; received {len(sources)}", scope)
    model = BLOCK_MODELS[kind]
    try:
        block = model(**args)
    except (ValidationError, TypeError) as exc:
        if isinstance(exc, TypeError):
            _error(g, path, f"the keys of {kind} must be strings", scope)
        else:
            for f in from_pydantic(
                g.doc, exc, path, args, kind, model.model_fields, _note(g, scope)
            ):
                g.findings.append(f)
        return x
    label = block.name or kind.lower()
    inner = scope.child(label)
    if kind == "Residual":
        main = _seq(g, block.main, (*path, "main"), x, inner.child("main"))
        shortcut = _seq(g, block.shortcut, (*path, "shortcut"), x, inner.child("shortcut"))
        branches = [shortcut, main]
    else:
        branches = [
            _seq(g, b, (*path, "branches", i), x, inner.child(f"branch {i}"))
            for i, b in enumerate(block.branches)
        ]
    merge_args = {k: args[k] for k in ("name", "axis") if k in args}
    return _one(g, block.merge, merge_args, path, path, branches, inner)


def _template(
    g: _Graph,
    kind: str,
    args: dict,
    path: PathKey,
    args_path: PathKey,
    sources: list[str],
    scope: _Scope,
) -> str:
    """Expand one use of a template: check the use, bind its parameters, expand its layers."""
    x = sources[0]
    if not _usable(g, kind, args, path, args_path, sources, scope):
        return x
    user_name = args.pop("name", None)
    if "trainable" not in g.templates[kind].params:
        args = {k: v for k, v in args.items() if k != "trainable"}
    params = _bind(g, kind, args, path, args_path, scope)
    if params is None:
        return x
    if isinstance(user_name, str):
        instance = user_name if (*args_path, "name") in g.built else scope.prefix + user_name
    else:
        count = g.uses.get(kind, 0) + 1
        g.uses[kind] = count
        instance = f"{scope.prefix}{kind}_{count}"
    inner = _Scope(
        f"{instance}_",
        dict(zip(g.templates[kind].input_names, sources, strict=True)) | {INPUT: x},
        (*scope.display, instance),
        params,
        scope.use if scope.use is not None else args_path,
        {},
        (*scope.stack, kind),
    )
    out = _seq(g, g.templates[kind].layers, ("blocks", kind, "layers"), x, inner)
    if isinstance(user_name, str):
        scope.names[user_name] = out
    return out


def _usable(
    g: _Graph,
    kind: str,
    args: dict,
    path: PathKey,
    args_path: PathKey,
    sources: list[str],
    scope: _Scope,
) -> bool:
    """Whether a template may be used here: not inside itself, not nested too deep, and
    given as many inputs as it names (each problem reported)."""
    if kind in scope.stack:
        chain = " -> ".join((*scope.stack, kind))
        _error(g, path, f"block {kind!r} uses itself: {chain}", scope, prefer="key")
        return False
    if len(scope.stack) >= MAX_NESTING:
        _error(g, path, f"blocks nest more than {MAX_NESTING} levels deep", scope, prefer="key")
        return False
    names = g.templates[kind].input_names
    if len(sources) != len(names):
        _error(
            g,
            (*args_path, "inputs"),
            f"block {kind!r} takes {len(names)} input{'s' * (len(names) > 1)} "
            f"({', '.join(names)}); received {len(sources)}: "
            + ", ".join(repr(s) for s in sources),
            scope,
        )
        g.broken = True
        if isinstance(args.get("name"), str):
            scope.names[args["name"]] = sources[0]  # one error, not one per later reference
        return False
    return True


def _bind(
    g: _Graph, kind: str, args: dict, path: PathKey, args_path: PathKey, scope: _Scope
) -> dict[str, Any] | None:
    """The parameters of one use: its defaults, then the values given; ``None`` (with
    the finding) when a required one is missing. Unknown parameters are reported."""
    spec = g.templates[kind]
    params = {k: v for k, v in spec.params.items() if v is not REQUIRED}
    for key, value in args.items():
        if key not in spec.params:
            _error(
                g,
                (*args_path, key),
                f"unknown parameter {key!r} for block {kind!r}{suggest(str(key), spec.params)}"
                "; its parameters are " + (", ".join(spec.params) or "none"),
                scope,
                prefer="key",
                code=UNKNOWN_KEY,
            )
            continue
        params[key] = value
    missing = [p for p in spec.params if p not in params]
    if missing:
        needs = ", ".join(f"`{m}`" for m in missing)
        _error(g, path, f"block {kind!r} needs {needs}", scope, prefer="key")
        return None
    return params


# -- after expansion --------------------------------------------------------------------------


def _live(g: _Graph, output: str) -> list[Node]:
    """The nodes the output depends on; each layer nothing reads becomes a warning.

    Keras builds a functional model from its inputs to its outputs and leaves out every
    layer off that path, so the static counts must leave them out too. When an unresolved
    ``inputs:`` already broke the graph (an error), every layer is kept and checked.
    """
    if g.broken:
        return g.nodes
    inputs = {n.name: n.inputs for n in g.nodes}
    live = upstream([output], inputs)
    read = {src for n in g.nodes for src in n.inputs}
    dead = [n for n in g.nodes if n.name not in live]
    for node in dead:
        if node.name in read:
            continue  # it feeds a dead layer; that one is reported
        feeding = len(upstream(node.inputs, inputs, stop=live))
        also = f", nor are the {feeding} layer(s) that only feed it" if feeding else ""
        where = "" if node.use is None else f" (in a block used at line {_line(g, node.use)})"
        key = (node.path, "dead-layer")
        if key in g.seen:
            continue
        g.seen.add(key)
        g.findings.append(
            g.doc.finding(
                node.path,
                f"layer {node.name!r} ({node.kind}) is never read: no layer takes it as input "
                f"and it is not the model's output, so Keras leaves it out of the model and its "
                f"parameters are not counted{also}{where}",
                rule="dead-layer",
                severity="warning",
                hint="read it with `inputs:`, or remove it",
                prefer="key",
            )
        )
    return [n for n in g.nodes if n.name in live]


def upstream(
    starts: Iterable[str], inputs: Mapping[str, Sequence[str]], stop: Container[str] = ()
) -> set[str]:
    """The layers reached from ``starts`` by walking back along ``inputs`` (layer name ->
    the names it reads), ``starts`` included; names in ``stop``, and names that are not
    layers (``"input"``), are not entered."""
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        name = todo.pop()
        if name in seen or name in stop or name not in inputs:
            continue
        seen.add(name)
        todo.extend(inputs[name])
    return seen


def _line(g: _Graph, path: PathKey) -> int:
    return g.doc.locate(path, "key").line


def _add_input_scaling(nodes: list[Node], output: str, taken: dict) -> str:
    """Give an image model its one pixel scaling, inside the model, unless it has one.

    A model takes raw pixel values (0..255, as a decoded image file holds). When none of
    the config's leading preprocessing and augmentation layers is a ``Rescaling`` or a
    ``Normalization``, a ``Rescaling(1/255)`` named ``input_scaling`` goes in after them
    (augmentation such as RandomContrast keeps seeing 0..255 pixels, as in Keras' own
    tutorials). ``nodes`` is changed in place.

    Returns:
        The model's output node (the new layer when nothing follows it).
    """
    prev, at, leading = INPUT, len(nodes), []
    for i, node in enumerate(nodes):
        spec = REGISTRY.get(node.kind)
        if node.inputs != [prev] or spec is None or spec.group not in PREPROCESS_GROUPS:
            at = i
            break
        leading.append(node.kind)
        prev = node.name
    if scales_input(leading):
        return output
    name, k = INPUT_SCALING, 1
    while name in taken:
        name, k = f"{INPUT_SCALING}_{k}", k + 1
    args = REGISTRY["Rescaling"].args(scale=PIXEL_SCALE)
    for node in nodes[at:]:
        node.inputs = [name if src == prev else src for src in node.inputs]
    nodes.insert(at, Node(name, "Rescaling", args, [prev], ("input",)))
    return name if output == prev else output
