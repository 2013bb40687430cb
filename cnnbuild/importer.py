"""Saved Keras models -> cnnbuild configs, exactly (``cnnbuild import``).

A model's saved graph (``config.json`` inside a ``.keras`` archive, or the serialized
config of a ``keras.applications`` model) becomes a YAML config that builds the same
model: the same layers, names, arguments and weight layout. The conversion reads plain
data and never deserializes anything, so no code from the file runs; only building a
``keras.applications`` model needs TensorFlow.

The steps:

1. :func:`saved_model_config`: THE one place that opens a model (a ``.keras`` file, a
   run directory or ``keras.applications.NAME``) and returns its serialized config.
2. :func:`flatten`: the graph as a flat list of layers in topological order, nested
   models flattened, every layer's inputs by name.
3. :func:`convert_layer`: each layer's Keras config as cnnbuild arguments, with Keras'
   defaults left out; an unsupported layer or argument is collected, not raised.
4. :func:`structure`: chains as plain lists, single-entry single-exit branches as
   ``Residual`` and ``Parallel`` blocks, named outputs (``inputs:``) elsewhere; then
   :mod:`cnnbuild.factoring`: repeated runs as templates, automatic names left out.
5. :func:`to_yaml`: the config as readable YAML.

Commands that take a config also take a saved model through :func:`open_config` (or
:func:`config_source` for the YAML text).
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from cnnbuild.catalog import PREPROCESS_GROUPS, REGISTRY, scales_input
from cnnbuild.config import INPUT, model_name
from cnnbuild.errors import CnnbuildError, UsageError
from cnnbuild.escape import terminal
from cnnbuild.expand import MAX_NODES, upstream
from cnnbuild.factoring import drop_automatic_names, factor
from cnnbuild.schema.blocks import BLOCK_KINDS, MERGES
from cnnbuild.schema.types import KERAS_CLASS
from cnnbuild.validate import load_traced

if TYPE_CHECKING:
    from cnnbuild.config import ModelConfig
    from cnnbuild.trace import Trace

APPLICATIONS = "keras.applications."
MODEL_CLASSES = ("Functional", "Sequential", "Model")
LAYER_MODULES = ("keras.layers", "keras.src.layers")
OP_MODULES = ("keras.src.ops.numpy", "keras.ops")
# Arguments Keras writes that cnnbuild does not take, with the one value that means
# "not used" (any other value is refused as unsupported).
UNUSED_ARGUMENTS: dict[str, Any] = {
    "quantization_config": None,
    "lora_rank": None,
    "lora_alpha": None,
    "rms_scaling": False,
    "data_format": "channels_last",
}
_SNAKE = {cls: snake for snake, cls in KERAS_CLASS.items()}
_FAMILIES = ("_initializer", "_regularizer", "_constraint")
DTYPE_POLICIES = ("DTypePolicy", "FloatDTypePolicy")
# A hint schema messages add for e-notation YAML read as text: a saved model's strings
# are JSON strings, so the hint does not apply to them.
_YAML_HINT = re.compile(r" \(YAML reads [^()]* as text: write [^()]*\)")


class ImportRefused(CnnbuildError):
    """A model with layers or arguments cnnbuild cannot express (exit 1)."""


def is_keras_module(module: Any) -> bool:
    """Whether a serialized object's ``module`` is Keras' own (``keras``, ``keras.*``)."""
    return isinstance(module, str) and (module == "keras" or module.startswith("keras."))


def _foreign(value: dict) -> str | None:
    """Why a serialized Keras object (a layer's sub-object, a model) is not Keras' own:
    its ``module`` is another package's, or it is registered under another name (Keras
    looks a ``registered_name`` up among custom objects first); ``None`` when it is."""
    module, registered = value.get("module"), value.get("registered_name")
    if not is_keras_module(module):
        return f"from module {module!r}, not Keras"
    if registered not in (None, value.get("class_name")):
        return f"registered as {registered!r}, not a Keras class"
    return None


# -- 1. opening a model -------------------------------------------------------------------


def application_config(name: str, input_shape: tuple | None = None, classes: int = 1000) -> dict:
    """Build ``keras.applications.NAME(weights=None)`` and return its serialized config.

    Raises:
        UsageError: no such application, or Keras refuses the input shape.
    """
    from cnnbuild.builder import keras_module

    keras = keras_module()
    short = name.removeprefix(APPLICATIONS)
    factory = _factory(name)
    keras.backend.clear_session(free_memory=False)  # automatic names, as when fresh
    try:
        model = factory(weights=None, input_shape=input_shape, classes=classes)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"keras.applications.{short}: {exc}") from None
    return keras.saving.serialize_keras_object(model)


def saved_model_config(
    source: str | Path, input_shape: tuple | None = None, classes: int = 1000
) -> dict:
    """The serialized config of a ``.keras`` file, run directory or application.

    Args:
        source: a ``.keras`` file, a run directory (its ``model.keras``), or
            ``keras.applications.NAME``.
        input_shape: for an application: ``(height, width, channels)``.
        classes: for an application: the number of classes of its top.

    Raises:
        UsageError: the source cannot be opened.
    """
    text = str(source)
    if text.startswith(APPLICATIONS):
        return application_config(text, input_shape, classes)
    from cnnbuild.runs import open_target, saved_config

    path = Path(source)
    if not path.exists():
        raise UsageError(f"{terminal(source)}: no such file")
    return saved_config(open_target(path).model_path)


# -- 2. the graph ---------------------------------------------------------------------------


@dataclass
class KerasLayer:
    """One layer of the flattened graph.

    Attributes:
        name: its Keras name.
        cls: its class name (``Conv2D``; ``op:Add`` for an operation on tensors).
        config: its Keras config.
        inputs: the names of the layers it reads (``"input"`` for the model input).
        constants: numbers an operation takes besides tensors (``x + 3.0``).
        module: the module Keras records for its class.
        registered_name: the name Keras records it under (``None`` for its own layers).
    """

    name: str
    cls: str
    config: dict
    inputs: list[str]
    constants: list[Any] = field(default_factory=list)
    module: str = "keras.layers"
    registered_name: Any = None


@dataclass
class Graph:
    """A flattened model: its input shape, layers in topological order, its output."""

    name: str
    input_shape: tuple | None = None
    layers: list[KerasLayer] = field(default_factory=list)
    output: str = INPUT
    refused: Counter = field(default_factory=Counter)
    whole_refused: bool = False  # no saved graph, or several inputs or outputs


def _tensor_source(value: Any) -> tuple[str, int, int] | None:
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        history = value.get("config", {}).get("keras_history")
        if isinstance(history, (list, tuple)) and len(history) == 3:
            return str(history[0]), history[1], history[2]
    return None


def _call_inputs(g: Graph, entry: dict, alias: dict[str, str]) -> tuple[list[str], list, bool]:
    """The tensors (by name), constants and list form of a layer's one call."""
    nodes = entry.get("inbound_nodes") or []
    cls = entry.get("class_name", "?")
    if len(nodes) != 1 or not isinstance(nodes[0], dict):
        g.refused[f"{cls}: a layer called {len(nodes)} times (shared weights)"] += 1
        return [], [], False
    args, kwargs = nodes[0].get("args", []), nodes[0].get("kwargs", {}) or {}
    # A symbolic call records the default of `training` in the layer's `call` (True for
    # image preprocessing, False for dropout); cnnbuild's builder makes the same call.
    # Another value was passed on purpose.
    spec = REGISTRY.get(cls)
    default = None if spec is None else spec.training
    if any(v is not None and not (k == "training" and v is default) for k, v in kwargs.items()):
        g.refused[f"{cls}: a call with arguments ({', '.join(kwargs)})"] += 1
    listed = len(args) == 1 and isinstance(args[0], (list, tuple))
    flat = list(args[0]) if listed else list(args)
    names, constants = [], []
    for value in flat:
        source = _tensor_source(value)
        if source is None:
            constants.append(value)
        elif source[2] != 0:
            g.refused[f"{cls}: reads output {source[2]} of a multi-output layer"] += 1
        else:
            names.append(alias.get(source[0], source[0]))
    return names, constants, listed


def _model_inputs(config: dict) -> list[str]:
    raw = config.get("input_layers") or []
    if raw and isinstance(raw[0], str):
        raw = [raw]
    return [str(item[0]) for item in raw]


def _flatten_into(g: Graph, model: dict, source: str | None, top: bool) -> str:
    """Add the layers of a serialized model to ``g``; returns its output's name."""
    config = model.get("config") or {}
    kind = model.get("class_name")
    foreign = _foreign(model) if kind in MODEL_CLASSES else None
    if foreign is not None:
        g.refused[f"{kind}: a model class {foreign}"] += 1
    if kind not in MODEL_CLASSES or not isinstance(config.get("layers"), list):
        g.refused[f"{kind}: a model without a saved graph (subclassed?)"] += 1
        g.whole_refused |= top
        return source or INPUT
    alias: dict[str, str] = {}
    sequential = kind == "Sequential"
    if (
        sequential
        and top
        and not any(e.get("class_name") == "InputLayer" for e in config["layers"])
    ):
        shape = config.get("build_input_shape")
        g.input_shape = tuple(shape[1:]) if isinstance(shape, list) else None
    prev = source or INPUT
    for entry in config["layers"]:
        cls, cfg = entry.get("class_name"), entry.get("config") or {}
        name = str(entry.get("name") or cfg.get("name"))
        if cls == "InputLayer":
            if top:
                g.input_shape = tuple((cfg.get("batch_shape") or [None])[1:])
            alias[name] = source or INPUT
            prev = source or INPUT
            continue
        if sequential:
            inputs, constants, listed = [prev], [], False
        else:
            inputs, constants, listed = _call_inputs(g, entry, alias)
        if cls in MODEL_CLASSES:
            if len(inputs) != 1:
                g.refused[f"{cls}: a nested model with {len(inputs)} inputs"] += 1
                continue
            alias[name] = prev = _flatten_into(g, entry, inputs[0], top=False)
            continue
        module = str(entry.get("module") or "")
        if module.startswith(OP_MODULES):
            cls = f"op:{cls}"
        elif listed and len(inputs) == 1:
            g.refused[f"{cls}: a merge of one tensor"] += 1
        registered = entry.get("registered_name")
        g.layers.append(KerasLayer(name, str(cls), cfg, inputs, constants, module, registered))
        prev = name
    if sequential:
        return prev
    outputs = config.get("output_layers") or []
    if outputs and isinstance(outputs[0], str):
        outputs = [outputs]
    if len(outputs) != 1 or len(_model_inputs(config)) != 1:
        g.whole_refused |= top
        g.refused[
            f"{kind}: a model with {len(_model_inputs(config))} inputs and "
            f"{len(outputs)} outputs (cnnbuild models have one of each)"
        ] += 1
        return prev
    out = str(outputs[0][0])
    return alias.get(out, out)


def flatten(serialized: dict) -> Graph:
    """The serialized model as a flat :class:`Graph`, nested models flattened.

    Unsupported structure (shared layers, several inputs or outputs, a subclassed
    model) is collected in ``graph.refused``.
    """
    config = serialized.get("config") or {}
    g = Graph(model_name(str(config.get("name") or "imported")))
    g.output = _flatten_into(g, serialized, None, top=True)
    names = Counter(layer.name for layer in g.layers)
    for name, count in names.items():
        if count > 1:
            g.refused[f"layer name {name!r} used {count} times (in nested models)"] += 1
    if INPUT in names:
        g.refused[f"a layer named {INPUT!r} (cnnbuild's name for the model input)"] += 1
    return g


# -- 3. layers ------------------------------------------------------------------------------


def _keras_object(value: Any) -> Any:
    """A serialized initializer/regularizer/constraint -> ``name`` or ``{name: {args}}``.

    Raises:
        ValueError: not one of Keras' own classes, naming it.
    """
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, dict) or value.get("class_name") not in _SNAKE:
        raise ValueError(str(value.get("class_name") if isinstance(value, dict) else value))
    foreign = _foreign(value)
    if foreign is not None:
        raise ValueError(f"{value['class_name']} {foreign}")
    args = {k: _plain(v) for k, v in (value.get("config") or {}).items() if v is not None}
    snake = _SNAKE[value["class_name"]]
    return {snake: args} if args else snake


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _dtype(value: Any) -> str | None:
    """A serialized dtype policy -> its name (``None`` for float32).

    Raises:
        ValueError: not one of Keras' own policy classes, naming it.
    """
    if isinstance(value, dict):
        cls = value.get("class_name")
        foreign = _foreign(value)
        if cls not in DTYPE_POLICIES or foreign is not None:
            raise ValueError(f"{cls} {foreign or '(not a float dtype policy)'}")
        value = (value.get("config") or {}).get("name")
    return None if value in (None, "float32") else value


def _activation(value: Any) -> Any:
    """An activation: Keras writes its own by name; a function object is another's.

    Raises:
        ValueError: a function that is not Keras' own, naming it.
    """
    if not isinstance(value, dict):
        return value
    name = value.get("config")
    if is_keras_module(value.get("module")) and isinstance(name, str):
        return name  # a Keras activation written as an object: checked by its name
    shown = name if isinstance(name, str) else value.get("class_name")
    raise ValueError(f"{shown!r} (a custom function, not one of Keras' activations)")


def _sub_object(key: str, value: Any) -> Any:
    """A layer argument that Keras writes as an object, as cnnbuild writes it."""
    if key == "dtype":
        return _dtype(value)
    if key.endswith(_FAMILIES):
        return _keras_object(value)
    if key == "activation":
        return _activation(value)
    return value


def _op_layer(layer: KerasLayer) -> tuple[str, dict] | None:
    """``x + c`` and ``x * c`` as an exact Rescaling; ``x + y`` and ``x * y`` as merges."""
    op = layer.cls.removeprefix("op:")
    if op not in ("Add", "Multiply"):
        return None
    name = {"name": layer.name}
    if len(layer.inputs) == 2 and not layer.constants:
        return op, name
    (c,) = layer.constants or [None]
    if len(layer.inputs) != 1 or isinstance(c, bool) or not isinstance(c, (int, float)):
        return None
    scale = {"scale": 1.0, "offset": float(c)} if op == "Add" else {"scale": float(c)}
    return "Rescaling", {**scale, **name}


def _raw_args(layer: KerasLayer, fields: dict, problems: list[str]) -> dict:
    args: dict[str, Any] = {}
    for key, value in layer.config.items():
        try:
            value = _sub_object(key, value)
        except ValueError as exc:
            problems.append(f"{layer.cls}: {key} {exc}")
            continue
        if key not in fields:
            if key in UNUSED_ARGUMENTS and _plain(value) == UNUSED_ARGUMENTS[key]:
                continue
            problems.append(f"{layer.cls}: argument {key}={_plain(value)!r}")
            continue
        args[key] = _plain(value)
    return args


def _without_defaults(model: type, args: dict, parsed: Any) -> dict:
    """``args`` less every value equal to Keras' default, compact where exact."""
    out: dict[str, Any] = {}
    for key, value in args.items():
        info = model.model_fields[key]
        current = getattr(parsed, key)
        default = not info.is_required() and (
            current == info.default
            or (info.default is None and current in ("linear", "channels_last"))
        )
        if default and key != "name":
            continue
        out[key] = _compact(model, args, key, value, current)
    if "name" in out:
        out["name"] = out.pop("name")
    return out


def _compact(model: type, args: dict, key: str, value: Any, current: Any) -> Any:
    """``[3, 3]`` -> ``3`` and ``[[1, 1], [1, 1]]`` -> ``1`` when that parses the same."""
    flat = value
    while isinstance(flat, list) and flat and all(v == flat[0] for v in flat):
        flat = flat[0]
    if flat is value or isinstance(flat, (list, dict)) or not isinstance(flat, int):
        return value
    try:
        same = getattr(model(**{**args, key: flat}), key) == current
    except (ValidationError, TypeError):
        same = False
    return flat if same else value


def convert_layer(layer: KerasLayer) -> tuple[str, dict] | str:
    """A Keras layer as ``(kind, args)`` with Keras' defaults left out.

    Returns:
        The kind and its arguments, or one line saying what is unsupported.
    """
    if layer.cls.startswith("op:"):
        found = _op_layer(layer)
        if found is None:
            return f"{layer.cls.removeprefix('op:')} (a keras.ops operation)"
        kind, args = found
    else:
        module = str(layer.module)
        custom = not any(module == m or module.startswith(f"{m}.") for m in LAYER_MODULES)
        if layer.registered_name not in (None, layer.cls):
            return f"{layer.cls} (registered as {layer.registered_name!r})"
        if layer.cls not in REGISTRY or custom:
            where = f" ({layer.module})" if custom else ""
            return f"{layer.cls}{where}"
        kind = layer.cls
        problems: list[str] = []
        args = _raw_args(layer, REGISTRY[kind].args.model_fields, problems)
        if problems:
            return "; ".join(problems)
    model = REGISTRY[kind].args
    try:
        parsed = model(**args)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = _YAML_HINT.sub("", first["msg"].removeprefix("Value error, "))
        return f"{kind}: {where}: {message}"
    if "pool_size" in args and getattr(parsed, "strides", None) == parsed.pool_size:
        args.pop("strides", None)  # Keras writes strides=pool_size for strides=None
    return kind, _without_defaults(model, args, parsed)


# -- 4. structure ---------------------------------------------------------------------------


@dataclass
class _Block:
    """A merge whose branches start at one fork and share nothing with the rest."""

    fork: str
    branches: list[list[str]]  # names of the layers (and blocks, by merge name) of each branch


class _Structure:
    """Finds exact Residual/Parallel blocks in a converted graph."""

    def __init__(self, order: list[str], kinds: dict[str, str], inputs: dict[str, list[str]]):
        self.order, self.kinds, self.inputs = order, kinds, inputs
        self.readers: dict[str, set[str]] = {}
        for name in order:
            for src in inputs[name]:
                self.readers.setdefault(src, set()).add(name)
        self.memo: dict[str, _Block | None] = {}
        self.args: dict[str, dict] = {}

    def block(self, name: str) -> _Block | None:
        """The block that ends at merge layer ``name``, when it is exact."""
        if name not in self.memo:
            self.memo[name] = None
            self.memo[name] = self._find(name)
        return self.memo[name]

    def _find(self, name: str) -> _Block | None:
        srcs = self.inputs.get(name, [])
        extra = set(self.args.get(name, {})) - {"name", "axis"}
        if self.kinds.get(name) not in MERGES or len(srcs) < 2 or extra:
            return None
        if len(set(srcs)) != len(srcs):
            return None
        walks = [self._walk(src, name) for src in srcs]
        forks = {fork for fork, _ in walks}
        if len(forks) != 1 or None in forks:
            return None
        return _Block(forks.pop(), [chain for _, chain in walks])

    def _walk(self, tip: str, merge: str) -> tuple[str | None, list[str]]:
        """Back from ``tip`` through layers (and blocks) nothing else reads.

        Returns:
            ``(fork, chain)``: where the branch starts and its units in order.
        """
        chain: list[str] = []
        cur, allowed = tip, {merge}
        while cur != INPUT and self.readers.get(cur, set()) <= allowed:
            inner = self.block(cur) if self.kinds.get(cur) in MERGES else None
            if inner is not None:
                chain.append(cur)
                allowed = self.inside(inner) | {cur}
                cur = inner.fork
            elif len(self.inputs[cur]) == 1:
                chain.append(cur)
                allowed = {cur}
                cur = self.inputs[cur][0]
            else:
                return None, []
        return cur, chain[::-1]

    def inside(self, blk: _Block) -> set[str]:
        """Every layer inside a block's branches, nested blocks included."""
        out: set[str] = set()
        for branch in blk.branches:
            for name in branch:
                out.add(name)
                inner = self.block(name) if self.kinds.get(name) in MERGES else None
                if inner is not None:
                    out |= self.inside(inner)
        return out


def _item(kind: str, args: dict) -> dict:
    return {kind: args or None}


def _chain_items(s: _Structure, names: list[str], items: dict[str, tuple[str, dict]]) -> list:
    return [_unit(s, n, items) for n in names]


def _unit(s: _Structure, name: str, items: dict[str, tuple[str, dict]]) -> dict:
    kind, args = items[name]
    blk = s.block(name) if kind in MERGES else None
    if blk is None:
        return _item(kind, args)
    branches = [_chain_items(s, b, items) for b in blk.branches]
    extra = {k: args[k] for k in ("axis", "name") if k in args}
    empty = [i for i, b in enumerate(branches) if not b]
    if len(branches) == 2 and (kind in ("Add", "Multiply") or empty == [0]):
        if kind in ("Add", "Multiply"):
            branches.sort(key=len)  # x + y == y + x: the shorter branch is the shortcut
        spec: dict[str, Any] = {"main": branches[1]}
        if branches[0]:
            spec["shortcut"] = branches[0]
        if kind != "Add":
            spec["merge"] = kind
        return {"Residual": {**spec, **extra}}
    spec = {"branches": branches}
    if kind != "Concatenate":
        spec["merge"] = kind
    return {"Parallel": {**spec, **extra}}


def structure(graph: Graph, items: dict[str, tuple[str, dict]]) -> list:
    """The layer list: blocks where exact, ``inputs:`` where a layer does not read the
    one before it."""
    order = [layer.name for layer in graph.layers]
    inputs = {layer.name: layer.inputs for layer in graph.layers}
    kinds = {name: kind for name, (kind, _) in items.items()}
    s = _Structure(order, kinds, inputs)
    s.args = {name: args for name, (_, args) in items.items()}
    absorbed: set[str] = set()
    for name in reversed(order):
        if name in absorbed:
            continue
        blk = s.block(name) if kinds[name] in MERGES else None
        if blk is not None:
            absorbed.update(s.inside(blk))
    out, prev = [], INPUT
    for name in order:
        if name in absorbed:
            continue
        unit = _unit(s, name, items)
        blk = s.block(name) if kinds[name] in MERGES else None
        sources = [blk.fork] if blk is not None else inputs[name]
        if sources != [prev]:
            ((kind, args),) = unit.items()
            read = sources[0] if len(sources) == 1 else sources
            unit = {kind: {**(args or {}), "inputs": read}}
        out.append(unit)
        prev = name
    return out


# -- 5. the config ---------------------------------------------------------------------------


def _topological(graph: Graph) -> None:
    """Order the layers so each comes after what it reads: where it can, the next layer
    is one that reads the previous (fewer ``inputs:``), else the first in Keras' order.

    A layer that reads an unknown layer, or a cycle, is refused (``graph.refused``).
    """
    position = {layer.name: i for i, layer in enumerate(graph.layers)}
    waiting: dict[str, set[str]] = {}
    readers: dict[str, list[str]] = {}
    for layer in graph.layers:
        unknown = [s for s in layer.inputs if s != INPUT and s not in position]
        if unknown:
            graph.refused[f"{layer.cls}: reads {unknown[0]!r}, which is not in the model"] += 1
        waiting[layer.name] = {s for s in layer.inputs if s in position}
        for source in waiting[layer.name]:
            readers.setdefault(source, []).append(layer.name)
    ready = [(position[n], n) for n, w in waiting.items() if not w]
    heapq.heapify(ready)
    done: set[str] = set()
    order: list[str] = []
    while ready:
        last = readers.get(order[-1], []) if order else []
        follow = [r for r in last if not waiting[r] and r not in done]
        name = min(follow, key=position.__getitem__) if follow else heapq.heappop(ready)[1]
        if name in done:
            continue
        done.add(name)
        order.append(name)
        for reader in readers.get(name, []):
            waiting[reader].discard(name)
            if not waiting[reader]:
                heapq.heappush(ready, (position[reader], reader))
    if len(order) < len(position):
        graph.refused[f"a cycle through {len(position) - len(order)} layers"] += 1
    by_name = {layer.name: layer for layer in graph.layers}
    graph.layers = [by_name[name] for name in order]


def _live(graph: Graph) -> None:
    live = upstream([graph.output], {layer.name: layer.inputs for layer in graph.layers})
    graph.layers = [layer for layer in graph.layers if layer.name in live]


def _check_input(graph: Graph) -> None:
    """Refuse an input cnnbuild cannot take; nothing when the model as a whole is
    refused (its inputs are moot)."""
    shape = graph.input_shape
    if graph.whole_refused:
        return
    if shape is None:
        graph.refused["a model whose input shape is not saved (give it a keras.Input)"] += 1
        return
    ok = (
        isinstance(shape, tuple)
        and len(shape) == 3
        and all(v is None or (isinstance(v, int) and v > 0) for v in shape[:2])
        and isinstance(shape[2], int)
        and shape[2] > 0
    )
    if not ok:
        graph.refused[f"an input of shape {shape} (cnnbuild takes [height, width, channels])"] += 1


def import_config(serialized: dict) -> dict:
    """A serialized Keras model as a cnnbuild config (a plain mapping, YAML-ready).

    Raises:
        ImportRefused: with one line per unsupported layer class or argument, and its count.
    """
    try:
        count = layer_count(serialized)
        if count > MAX_NODES:  # before the graph is walked
            raise ImportRefused(
                f"cannot import the model: it has {count:,} layers, more than the "
                f"{MAX_NODES:,} a cnnbuild config may expand to"
            )
        graph, items = _converted(serialized)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError, RecursionError) as exc:
        raise ImportRefused(
            "the saved model's config is not one Keras writes "
            f"({type(exc).__name__}: {terminal(exc)})"
        ) from None
    if graph.refused:
        lines = [
            f"  {terminal(what)}: {n} layer{'s' * (n > 1)}"
            for what, n in sorted(graph.refused.items())
        ]
        raise ImportRefused(
            f"cannot import model {graph.name!r}: cnnbuild does not support\n" + "\n".join(lines)
        )
    config: dict[str, Any] = {"name": graph.name, "input": list(graph.input_shape)}
    if not _scales(graph, items):
        config["input_scaling"] = "none"
    templates, layers = _factored(graph, items)
    if templates:
        config["blocks"] = templates
    config["layers"] = drop_automatic_names(layers, templates)
    return config


def _factored(graph: Graph, items: dict[str, tuple[str, dict]]) -> tuple[dict, list]:
    """The layer list with templates (:func:`cnnbuild.factoring.factor`) when the config
    then stays within :data:`MAX_NODES` as :mod:`cnnbuild.expand` counts it (each use of
    a template one more than its layers); else without templates."""
    templates, layers = factor(structure(graph, items))
    uses = sum(1 for item in layers if next(iter(item)) in templates)
    if len(graph.layers) + uses > MAX_NODES:
        return {}, structure(graph, items)
    return templates, layers


def layer_count(serialized: Any) -> int:
    """How many layers a serialized model holds, nested models' included: read from
    each model's list of layers without walking its graph."""
    count, models = 0, [serialized]
    while models:
        config = models.pop().get("config")
        layers = config.get("layers") if isinstance(config, dict) else None
        for entry in layers if isinstance(layers, list) else []:
            kind = entry.get("class_name") if isinstance(entry, dict) else None
            if kind in MODEL_CLASSES:
                models.append(entry)
            elif kind != "InputLayer":
                count += 1
    return count


def _converted(serialized: dict) -> tuple[Graph, dict[str, tuple[str, dict]]]:
    """The flattened graph and each supported layer's ``(kind, args)``."""
    graph = flatten(serialized)
    _check_input(graph)
    _live(graph)
    _topological(graph)
    items: dict[str, tuple[str, dict]] = {}
    for layer in graph.layers:
        found = convert_layer(layer)
        if isinstance(found, str):
            graph.refused[found] += 1
        else:
            items[layer.name] = found
    return graph, items


def _scales(graph: Graph, items: dict[str, tuple[str, dict]]) -> bool:
    """Whether the model starts with its own scaling (as :mod:`cnnbuild.expand` reads it)."""
    leading, prev = [], INPUT
    for layer in graph.layers:
        kind = items[layer.name][0]
        if layer.inputs != [prev] or REGISTRY[kind].group not in PREPROCESS_GROUPS:
            break
        leading.append(kind)
        prev = layer.name
    return scales_input(leading)


# -- YAML -------------------------------------------------------------------------------------


class _OneLine(yaml.SafeDumper):
    """Safe YAML where a string holding a line break or another non-printable character
    is double-quoted with escapes (``"a\\nb"``), so each layer stays one line."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = None if value.isprintable() else '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_OneLine.add_representer(str, _string)


def _flow(value: Any) -> str:
    text = yaml.dump(value, Dumper=_OneLine, default_flow_style=True, width=10**9, sort_keys=False)
    return text.strip().removesuffix("\n...")


def _emit(items: list, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for item in items:
        ((kind, args),) = item.items()
        if kind not in BLOCK_KINDS:
            head = _flow(kind)  # a template's name may read as YAML (`yes`, `null`)
            lines.append(f"{pad}- {head}" if args is None else f"{pad}- {head}: {_flow(args)}")
            continue
        lines.append(f"{pad}- {kind}:")
        inner = " " * (indent + 4)
        for key, value in args.items():
            if key in ("main", "shortcut"):
                lines.append(f"{inner}{key}:")
                _emit(value, indent + 6, lines)
            elif key == "branches":
                lines.append(f"{inner}branches:")
                for branch in value:
                    if not branch:
                        lines.append(f"{inner}  - []")
                        continue
                    lines.append(f"{inner}  -")
                    _emit(branch, indent + 8, lines)
            else:
                lines.append(f"{inner}{key}: {_flow(value)}")


def to_yaml(config: dict, source: str = "") -> str:
    """The config as YAML: one line per layer, blocks indented.

    Every name and value is written by the YAML emitter (quoted where YAML would read it
    as something else); ``source`` goes into the one comment line escaped
    (:func:`cnnbuild.escape.terminal`), so a line break in a path cannot start a line.
    """
    lines = [f"# imported from {terminal(source)} by cnnbuild import"] if source else []
    for key, value in config.items():
        if key == "layers":
            lines.append("layers:")
            _emit(value, 2, lines)
        elif key == "blocks":
            lines.append("blocks:")
            for name, template in value.items():
                params = _flow(template["params"])
                lines += [f"  {_flow(name)}:", f"    params: {params}", "    layers:"]
                _emit(template["layers"], 6, lines)
        else:
            lines.append(f"{key}: {_flow(value)}")
    return "\n".join(lines) + "\n"


def import_text(source: str | Path, input_shape: tuple | None = None, classes: int = 1000) -> str:
    """The YAML config of a ``.keras`` file, run directory or ``keras.applications.NAME``.

    Raises:
        UsageError: the source cannot be opened.
        ImportRefused: it uses layers or arguments cnnbuild does not support.
    """
    serialized = saved_model_config(source, input_shape, classes)
    return to_yaml(import_config(serialized), str(source))


def is_saved_model(path: str | Path) -> bool:
    """Whether ``path`` names a saved model (``.keras`` file or run directory), not a config."""
    p = Path(path)
    return p.suffix == ".keras" or p.is_dir() or str(path).startswith(APPLICATIONS)


def config_source(path: str | Path) -> tuple[str, str | None]:
    """What a command that takes a config reads: ``(label, text)``.

    A saved model (``.keras`` file, run directory, ``keras.applications.NAME``) is
    imported first: ``text`` holds the imported YAML and ``label`` names it in findings.
    For a config file ``text`` is ``None``: read the file itself.

    Raises:
        UsageError: the saved model cannot be opened.
        ImportRefused: it uses layers or arguments cnnbuild does not support.
    """
    if not is_saved_model(path):
        return str(path), None
    return f"{path} (imported)", import_text(path)


def open_config(path: str | Path) -> tuple[ModelConfig, Trace]:
    """A config file, or a saved model imported first, loaded for a view (summary, trace,
    diff) with its static trace; see :func:`cnnbuild.validate.load_traced`.

    Only the import of a saved model needs TensorFlow (and only for an application).
    """
    label, text = config_source(path)
    return load_traced(label, text=text)


# -- pretrained applications -------------------------------------------------------------------

WEIGHTS = ("imagenet",)
HEAD = "head"
PREPROCESSING = "preprocess_input"


@dataclass
class Pretrained:
    """What ``import keras.applications.NAME --weights imagenet`` adds to the backbone.

    Attributes:
        name: ``keras.applications.NAME``.
        weights: the weights ``init:`` loads (``imagenet``).
        backbone_end: the backbone's last layer, the end of ``freeze:``.
        head: the new classifier's name.
        preprocessing: the layers in front of the backbone (empty: none added).
        notes: lines for the YAML comment and the command's message.
    """

    name: str
    weights: str
    backbone_end: str = ""
    head: str = HEAD
    preprocessing: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _factory(name: str) -> Any:
    """``keras.applications.NAME`` (the function), or :class:`UsageError`."""
    from cnnbuild.builder import keras_module

    keras = keras_module()
    short = name.removeprefix(APPLICATIONS)
    factory = getattr(keras.applications, short, None)
    if not short.isidentifier() or not callable(factory) or not short[:1].isupper():
        raise UsageError(f"keras.applications has no model {short!r}")
    return factory


def backbone_config(name: str, input_shape: tuple | None = None) -> dict:
    """``keras.applications.NAME(weights=None, include_top=False, pooling="avg")``
    serialized: the application without its top, ending in its global average pooling.

    Raises:
        UsageError: no such application, or Keras refuses the input shape.
    """
    from cnnbuild.builder import keras_module

    factory = _factory(name)
    keras_module().backend.clear_session(free_memory=False)  # automatic names, as when fresh
    try:
        model = factory(weights=None, include_top=False, input_shape=input_shape, pooling="avg")
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{APPLICATIONS}{name.removeprefix(APPLICATIONS)}: {exc}") from None
    return keras_module().saving.serialize_keras_object(model)


def preprocess_affine(name: str) -> tuple[Any, Any]:
    """The application's own ``preprocess_input`` as ``(A, b)``: ``y = x @ A.T + b`` per
    pixel, found by calling it on unit pixels and checked on random ones.

    Raises:
        ImportRefused: the function is not a per-pixel affine map of the channels.
    """
    import importlib

    import numpy as np

    module = importlib.import_module(_factory(name).__module__)
    refused = ImportRefused(
        f"{module.__name__}.preprocess_input is not a per-channel affine map; import with "
        "--no-preprocessing and preprocess the images yourself"
    )
    pre = getattr(module, "preprocess_input", None)
    if not callable(pre):
        raise refused
    try:
        zero = np.zeros((1, 1, 1, 3))
        b = np.asarray(pre(zero.copy()), dtype="float64").reshape(3)
        a = np.empty((3, 3))
        for c in range(3):
            unit = zero.copy()
            unit[..., c] = 255.0
            a[:, c] = (np.asarray(pre(unit), dtype="float64").reshape(3) - b) / 255.0
        x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3))
        got = np.asarray(pre(x.copy()), dtype="float64")
    except (ValueError, TypeError):
        raise refused from None
    if got.shape != x.shape or not np.allclose(got, x @ a.T + b, rtol=1e-9, atol=1e-9):
        raise refused
    return a, b


def preprocessing_layers(name: str) -> tuple[list[dict], list[str]]:
    """The application's ``preprocess_input`` as cnnbuild layers, exact, and the words that
    say what they are: none when it is the identity (the model scales itself), one
    ``Rescaling`` (per channel where they differ) for modes "tf" and "torch", and a fixed
    1x1 ``Conv2D`` for mode "caffe" (RGB -> BGR and the mean; frozen).
    """
    import numpy as np

    a, b = preprocess_affine(name)
    module = _factory(name).__module__.replace("keras.src.", "keras.")
    said = f"{module}.preprocess_input"
    if np.array_equal(a, np.eye(3)) and not b.any():
        return [], [f"{said} is the identity: the network scales its own 0..255 pixels"]
    diagonal = np.array_equal(a, np.diag(np.diag(a)))
    if diagonal:
        scale, offset = [float(v) for v in np.diag(a)], [float(v) for v in b]
        args: dict[str, Any] = {
            "scale": scale[0] if len(set(scale)) == 1 else scale,
            "offset": offset[0] if len(set(offset)) == 1 else offset,
            "name": PREPROCESSING,
        }
        words = f"{said} as layer {PREPROCESSING!r} (Rescaling: x * scale + offset)"
        return [{"Rescaling": args}], [words + ": the model takes raw 0..255 pixels"]
    return _caffe_layers(said, a, b)


def _caffe_layers(said: str, a: Any, b: Any) -> tuple[list[dict], list[str]]:
    """Mode "caffe" (VGG, ResNet v1): RGB -> BGR, then the ImageNet mean subtracted, as
    layers that only add and move data, so exact: the mean (in RGB order) by a Rescaling,
    then the channels reordered: Permute puts them on the width axis, one Cropping2D per
    channel keeps it, Concatenate joins them in the new order, Permute puts them back.

    A map that is not a pure permutation plus an offset is not written; the words say
    what the weights expect instead.
    """
    import numpy as np

    is_permutation = set(np.unique(a)) <= {0.0, 1.0} and (a.sum(0) == 1).all()
    if not (is_permutation and (a.sum(1) == 1).all()):
        return [], [
            f"{said} is not a channel reordering and an offset, which cnnbuild can write "
            "exactly: no preprocessing added (input_scaling: none); give the model what it "
            "gives, or import with another application"
        ]
    source = [int(np.argmax(row)) for row in a]  # output channel i reads input source[i]
    offset = [0.0] * 3
    for i, c in enumerate(source):
        offset[c] = float(b[i])
    swap = {"dims": [1, 3, 2]}
    branches = [
        [{"Cropping2D": {"cropping": [[0, 0], [c, 2 - c]], "name": f"{PREPROCESSING}_{i}"}}]
        for i, c in enumerate(source)
    ]
    layers = [
        {"Rescaling": {"scale": 1.0, "offset": offset, "name": PREPROCESSING}},
        {"Permute": {**swap, "name": f"{PREPROCESSING}_swap"}},
        {"Parallel": {"branches": branches, "axis": -2, "name": f"{PREPROCESSING}_order"}},
        {"Permute": {**swap, "name": f"{PREPROCESSING}_unswap"}},
    ]
    order = "BGR" if source == [2, 1, 0] else f"channels {source}"
    return layers, [
        f"{said} as layers {PREPROCESSING!r}..{PREPROCESSING}_unswap: the ImageNet mean "
        f"subtracted (Rescaling), then RGB -> {order} by Permute, Cropping2D and Concatenate "
        f"(data moved, not computed: exact); the model takes raw 0..255 pixels"
    ]


def pretrained_config(
    name: str,
    weights: str,
    input_shape: tuple | None = None,
    classes: int = 1000,
    preprocessing: bool = True,
) -> tuple[dict, Pretrained]:
    """The config of a pretrained application: its backbone (Keras' layer names, so the
    weights load by name), its global average pooling and a new ``Dense(classes)`` head,
    with ``init:`` and ``freeze:`` (the backbone frozen), and unless ``preprocessing`` is
    false the application's ``preprocess_input`` as layers in front.

    Raises:
        UsageError: unknown weights or application, or a shape Keras refuses.
        ImportRefused: the backbone or its preprocessing cannot be expressed exactly.
    """
    if weights not in WEIGHTS:
        raise UsageError(f"--weights takes {' or '.join(WEIGHTS)}; received {weights!r}")
    if input_shape is not None and input_shape[-1] != 3:
        raise UsageError(
            f"--weights {weights} takes 3 channels (RGB); received --input-shape "
            f"{','.join(map(str, input_shape))}"
        )
    full = APPLICATIONS + name.removeprefix(APPLICATIONS)
    serialized = backbone_config(full, input_shape)
    graph = flatten(serialized)
    pooling = next((layer for layer in graph.layers if layer.name == graph.output), None)
    backbone = import_config(serialized)
    if pooling is None or not pooling.inputs:
        raise ImportRefused(f"{full}: no pooling at the end of the backbone")
    names = {layer.name for layer in graph.layers}
    done = Pretrained(full, weights, backbone_end=pooling.inputs[0])
    while done.head in names:
        done.head += "_new"
    layers = _as_with_weights(full, backbone["layers"], done)
    if preprocessing:
        done.preprocessing, words = preprocessing_layers(full)
        done.notes = [*words, *done.notes]
        layers = _in_front(done.preprocessing, layers)
    config: dict[str, Any] = {"name": backbone["name"], "input": backbone["input"]}
    if "input_scaling" in backbone and not done.preprocessing:
        config["input_scaling"] = backbone["input_scaling"]
    config["init"] = {"from": full, "weights": weights}
    config["freeze"] = {"until": done.backbone_end}
    if "blocks" in backbone:
        config["blocks"] = backbone["blocks"]
    head = {"units": classes, "activation": "softmax", "name": done.head}
    config["layers"] = [*layers, {"Dense": head}]
    return config, done


def _as_with_weights(full: str, layers: list, done: Pretrained) -> list:
    """The backbone as Keras builds it for ``weights="imagenet"`` where that differs from
    ``weights=None``: EfficientNet (V1) then divides its Normalization's output once more
    by the square root of the ImageNet std (keras-team issue 49930), a layer named as Keras
    names it in a fresh process."""
    import importlib

    module = importlib.import_module(_factory(full).__module__)
    stddev = getattr(module, "IMAGENET_STDDEV_RGB", None)
    at = next((i for i, item in enumerate(layers) if "Normalization" in item), None)
    if not module.__name__.endswith(".efficientnet") or stddev is None or at is None:
        return layers
    scale = [float(1.0 / float(s) ** 0.5) for s in stddev]
    done.notes.append(
        "as Keras builds it for imagenet weights: a Rescaling after the stem's Normalization "
        "(1/sqrt(std) per channel)"
    )
    return [
        *layers[: at + 1],
        {"Rescaling": {"scale": scale, "name": "rescaling_1"}},
        *layers[at + 1 :],
    ]


def _in_front(pre: list[dict], layers: list) -> list:
    """``pre`` in front of ``layers``: a top-level layer that read the model input reads
    the last of ``pre`` instead."""
    if not pre:
        return layers
    ((_, args),) = pre[-1].items()
    last, out = args["name"], []
    for item in layers:
        ((kind, spec),) = item.items()
        read = (spec or {}).get("inputs") if isinstance(spec, dict) else None
        if read == INPUT or (isinstance(read, list) and INPUT in read):
            fixed = [last if r == INPUT else r for r in read] if isinstance(read, list) else last
            item = {kind: {**spec, "inputs": fixed}}
        out.append(item)
    return [*pre, *out]


def pretrained_text(
    name: str,
    weights: str,
    input_shape: tuple | None = None,
    classes: int = 1000,
    preprocessing: bool = True,
) -> tuple[str, Pretrained]:
    """:func:`pretrained_config` as YAML, its comment saying what was added and why."""
    config, done = pretrained_config(name, weights, input_shape, classes, preprocessing)
    text = to_yaml(config, done.name)
    header, rest = text.split("\n", 1)
    lines = [header, *(f"# {line}" for line in pretrained_notes(done, preprocessing))]
    return "\n".join(lines) + "\n" + rest, done


def pretrained_notes(done: Pretrained, preprocessing: bool) -> list[str]:
    """What the imported config adds to the backbone, one sentence a line."""
    notes = [
        f"init: Keras' {done.weights} weights for {done.name}, loaded by layer name; the new "
        f"classifier {done.head!r} has none and starts from scratch",
        f"freeze: every layer up to and including {done.backbone_end!r} (the backbone) stays "
        "fixed; only the head trains",
    ]
    if not preprocessing:
        notes.append(
            "no preprocessing (--no-preprocessing): the network takes what its "
            "preprocess_input gives, not raw 0..255 pixels"
        )
    return notes + done.notes
