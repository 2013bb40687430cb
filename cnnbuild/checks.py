"""CNN lint rules over the static trace. Each rule returns findings and never raises.

Rules are registered once in :data:`RULES` with a stable id, a severity, a one-line
summary and a fix hint; the README's rules table, ``--ignore`` and the tests read it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cnnbuild.catalog import (
    LINEAR_GROUPS,
    PREPROCESS_GROUPS,
    PROBABILITY_ACTIVATIONS,
    REGISTRY,
    label_problem,
    loss_spec,
    output_activation,
)
from cnnbuild.config import INPUT, Node
from cnnbuild.errors import Finding, shape_str, suggest
from cnnbuild.schema.sections import DATASETS
from cnnbuild.trace import Row, Trace


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    summary: str
    hint: str
    check: Callable[[Trace], Iterator[tuple[Node, str, str | None]]] | None = None
    ignorable: bool = True


RULES: dict[str, Rule] = {}


def _core(id: str, summary: str, hint: str) -> None:
    RULES[id] = Rule(id, "error", summary, hint, None, ignorable=False)


_core(
    "yaml",
    "the file is not readable YAML (syntax, encoding, size, alias bombs, depth)",
    "fix the YAML at the reported position",
)
_core("io", "the file or directory cannot be read", "check the path")
_core(
    "schema",
    "a key, type or value the config format does not allow",
    "follow the message; `cnnbuild schema` gives the JSON Schema",
)
_core(
    "unknown-layer",
    "a layer name Keras (or the config's blocks) does not define",
    "use the suggested name",
)
_core(
    "shape",
    "a layer cannot take its input (zero or negative size, bad merge, rank)",
    "follow the hint: padding, kernel, stride or an earlier layer",
)
_core("duplicate-name", "two layers with the same name", "rename one")
_core(
    "duplicate-key",
    "a key given twice in one YAML mapping (loaders keep only the last)",
    "remove or rename one",
)


RULES["dead-layer"] = Rule(
    "dead-layer",
    "warning",
    "a layer nothing reads: Keras leaves it out of the model, so it is not counted",
    "read it with `inputs:`, or remove it",
    ignorable=False,
)


def rule(id: str, severity: str, summary: str, hint: str):
    """Register a lint rule: ``check(trace)`` yields ``(node, message, arg)``."""

    def wrap(fn: Callable[[Trace], Iterator[tuple[Node, str, str | None]]]):
        RULES[id] = Rule(id, severity, summary, hint, fn)
        return fn

    return wrap


def _consumers(trace: Trace) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for row in trace.rows:
        for name in row.node.inputs:
            out.setdefault(name, []).append(row)
    return out


def _descendants(
    trace: Trace, name: str, through: Callable[[Row], bool] = lambda row: True
) -> set[str]:
    """Names of every node that reads ``name``'s output, directly or through nodes
    for which ``through`` holds."""
    consumers = _consumers(trace)
    seen: set[str] = set()
    todo = [name]
    while todo:
        for row in consumers.get(todo.pop(), []):
            if row.node.name not in seen:
                seen.add(row.node.name)
                if through(row):
                    todo.append(row.node.name)
    return seen


def _is_1x1(row: Row) -> bool:
    return row.shape is not None and len(row.shape) == 3 and tuple(row.shape[:2]) == (1, 1)


def _activation(node: Node) -> str | None:
    if node.args is None:
        return None
    return getattr(node.args, "activation", None)


@rule(
    "dense-on-4d",
    "warning",
    "a Dense layer receives a 4-D tensor (batch, H, W, C)",
    "did you forget Flatten or GlobalAveragePooling2D before it?",
)
def _dense_on_4d(trace: Trace):
    for row in trace.rows:
        shape = row.inputs[0] if row.inputs else None
        if (
            row.node.kind == "Dense"
            and shape is not None
            and len(shape) >= 3
            and tuple(shape[:2]) != (1, 1)
        ):  # Dense on (1, 1, C) is the SE idiom
            yield (
                row.node,
                f"Dense receives a 4-D tensor (batch, *{shape_str(row.inputs[0])}) "
                "and will act on the channel axis only",
                None,
            )


def _output_activation(trace: Trace) -> tuple[Node | None, str | None]:
    if trace.config.output == INPUT:
        return None, None
    node = trace.config.node(trace.config.output)
    return node, output_activation(node)


@rule(
    "softmax-logits",
    "error",
    "the written `from_logits` contradicts the output's activation (the doubled-softmax bug)",
    "from_logits: true wants raw scores (no softmax); from_logits: false wants softmax; "
    "or leave from_logits out: it follows the output",
)
def _softmax_logits(trace: Trace):
    cfg = trace.config
    written = cfg.compile.from_logits
    if written is None or not loss_spec(cfg.compile.loss).logits:
        return  # not written: inferred from the output, so it cannot contradict it
    node, act = _output_activation(trace)
    out = trace.output_shape
    if node is None or node.args is None or out is None or len(out) != 1:
        return  # not a classifier head (the seed's headless shape-watching model)
    if written and act in PROBABILITY_ACTIVATIONS:
        yield (
            node,
            f"the last layer applies {act} but compile.from_logits is true: the loss "
            f"applies {act} again (doubled softmax); remove the activation or set "
            "from_logits: false",
            "activation",
        )
    elif not written and act not in PROBABILITY_ACTIVATIONS:
        yield (
            node,
            f"the last layer outputs raw scores (activation {act or 'none'}) but "
            "compile.from_logits is false, so the loss reads them as probabilities; "
            "set from_logits: true or add activation: softmax",
            "activation",
        )


@rule(
    "classes-mismatch",
    "error",
    "the output size or loss does not fit the dataset's labels",
    "match the last layer's units to the number of classes; binary losses need 2 classes "
    "and units: 1",
)
def _classes(trace: Trace):
    cfg = trace.config
    if "train" not in cfg.doc.data:
        return  # no dataset declared
    dataset = cfg.train.dataset
    classes = DATASETS.get(dataset) if isinstance(dataset, str) else None
    node, _ = _output_activation(trace)
    out = trace.output_shape
    if node is None or out is None or classes is None:
        return
    if len(out) != 1:
        problem = (
            f"the model outputs {shape_str(out)} per image but a classifier of {classes} "
            f"classes outputs ({classes},); end with Dense: {{units: {classes}}}"
        )
    else:
        problem = label_problem(cfg.compile.loss, classes, out[0])
    if problem is not None:
        yield node, f"{dataset}: {problem}", "units"


_SPATIAL = {"conv", "pool"}


@rule(
    "collapse-1x1",
    "warning",
    "the feature map shrinks to 1x1 while spatial layers still follow",
    "downsample later (fewer pools or strides) or end the feature extractor there",
)
def _collapse(trace: Trace):
    rows = trace.rows
    for i, row in enumerate(rows):
        shape = row.shape
        if shape is None or len(shape) != 3 or shape[:2] != (1, 1):
            continue
        if row.inputs and row.inputs[0] is not None and tuple(row.inputs[0][:2]) == (1, 1):
            continue
        if REGISTRY[row.node.kind].group not in _SPATIAL or row.out.global_pool:
            continue  # a squeeze on purpose (global pooling, Reshape: squeeze-and-excitation)
        below = _descendants(trace, row.node.name, _is_1x1)
        later = [
            r
            for r in rows[i + 1 :]
            if r.node.name in below
            and REGISTRY[r.node.kind].group in _SPATIAL
            and r.inputs
            and r.inputs[0] is not None
            and tuple(r.inputs[0][:2]) == (1, 1)
        ]
        if len(later) >= 2:
            yield (
                row.node,
                f"the feature map is 1x1 after {row.node.name!r}, yet "
                f"{len(later)} more convolution/pooling layers follow (from "
                f"{later[0].node.name!r}); they see no spatial structure",
                None,
            )
            return


def _window(node: Node) -> tuple[tuple[int, int], tuple[int, int], str] | None:
    a = node.args
    if a is None or node.kind == "Conv2DTranspose":  # upsamples: a wide kernel is normal
        return None
    if hasattr(a, "kernel_size"):
        eff = tuple(d * (k - 1) + 1 for k, d in zip(a.kernel_size, a.dilation_rate, strict=True))
        return eff, a.strides, "kernel_size"  # type: ignore[return-value]
    if hasattr(a, "pool_size"):
        return a.pool_size, a.strides or a.pool_size, "pool_size"
    return None


@rule(
    "window-exceeds-input",
    "warning",
    "a pooling window or stride larger than its input (padding: same hides it)",
    "use a smaller pool_size/strides or remove the layer",
)
def _window_exceeds(trace: Trace):
    for row in trace.rows:
        win = _window(row.node)
        if win is None or not row.inputs or row.inputs[0] is None or len(row.inputs[0]) != 3:
            continue
        kernel, strides, arg = win
        for axis, size, k, s in zip("HW", row.inputs[0][:2], kernel, strides, strict=True):
            if size is not None and size > 1 and (k > size or s > size):
                what = f"{arg} {k}" if k > size else f"stride {s}"
                yield (
                    row.node,
                    f"{what} on {axis} is larger than the input's {axis}={size} "
                    f"(input {shape_str(row.inputs[0])})",
                    arg,
                )
                break


@rule(
    "stride-exceeds-kernel",
    "warning",
    "a stride larger than the kernel: some pixels are never seen",
    "make strides <= kernel_size (or pool_size)",
)
def _stride_gap(trace: Trace):
    for row in trace.rows:
        win = _window(row.node)
        if win is None:
            continue
        kernel, strides, arg = win
        if any(s > k for k, s in zip(kernel, strides, strict=True)):
            yield (
                row.node,
                f"strides {list(strides)} exceed the {arg} {list(kernel)}: "
                f"{max(s - k for k, s in zip(kernel, strides, strict=True))} "
                "pixel(s) between windows are never seen",
                "strides",
            )


_PASS_LINEAR = {
    "BatchNormalization",
    "Dropout",
    "SpatialDropout2D",
    "ZeroPadding2D",
    "AveragePooling2D",
    "Cropping2D",
    "UpSampling2D",
    "Reshape",
}


@rule(
    "linear-stack",
    "warning",
    "two convolutions in a row with no nonlinearity between them (one linear map)",
    "add activation: relu to the first, or merge them into one layer",
)
def _linear_stack(trace: Trace):
    consumers = _consumers(trace)
    for row in trace.rows:
        node = row.node
        if (
            REGISTRY[node.kind].group not in LINEAR_GROUPS
            or _activation(node) not in (None, "linear")
            or node.args is None
        ):
            continue
        cur = node.name
        path = []
        while True:
            nxt = consumers.get(cur, [])
            if len(nxt) != 1:
                break
            nrow = nxt[0]
            kind = nrow.node.kind
            if kind in _PASS_LINEAR or (
                kind == "Activation"
                and nrow.node.args is not None
                and nrow.node.args.activation == "linear"
            ):
                path.append(nrow.node.name)
                cur = nrow.node.name
                continue
            if REGISTRY[kind].group == "conv" and node.kind != "Dense":
                between = f" (through {', '.join(path)})" if path else ""
                yield (
                    node,
                    f"{node.name!r} has no activation and feeds "
                    f"{nrow.node.name!r}{between}: two convolutions with no "
                    "nonlinearity collapse into one linear map",
                    None,
                )
            break


@rule(
    "huge-dense",
    "warning",
    "Flatten -> Dense with more than lint.max_dense_params_million parameters",
    "use GlobalAveragePooling2D instead of Flatten, or downsample earlier",
)
def _huge_dense(trace: Trace):
    limit = trace.config.lint.max_dense_params_million * 1e6
    kinds = {r.node.name: r.node.kind for r in trace.rows}
    for row in trace.rows:
        if row.node.kind != "Dense" or row.out is None or row.out.params <= limit:
            continue
        if kinds.get(row.node.inputs[0]) == "Flatten":
            yield (
                row.node,
                f"Flatten -> Dense has {row.out.params:,} parameters "
                f"(limit {trace.config.lint.max_dense_params_million:g} million)",
                None,
            )


@rule(
    "bias-before-bn",
    "info",
    "a bias right before BatchNormalization is wasted (BN subtracts the mean)",
    "set use_bias: false on the layer before BatchNormalization",
)
def _bias_bn(trace: Trace):
    consumers = _consumers(trace)
    for row in trace.rows:
        node = row.node
        if (
            node.kind
            not in ("Conv2D", "Conv2DTranspose", "Dense", "DepthwiseConv2D", "SeparableConv2D")
            or node.args is None
            or not node.args.use_bias
        ):
            continue
        nxt = consumers.get(node.name, [])
        if (
            len(nxt) == 1
            and nxt[0].node.kind == "BatchNormalization"
            and _activation(node) in (None, "linear")
        ):
            yield (
                node,
                f"{node.name!r} adds a bias that the next BatchNormalization removes",
                "use_bias",
            )


_PIXEL_SCALES = (1 / 255, 1 / 127.5)


def _pixel_scale(node: Node) -> bool:
    """A Rescaling that maps 0..255 pixels to a unit range (1/255, or 1/127.5 - 1)."""
    scale = node.args.scale
    values = scale if isinstance(scale, tuple) else (scale,)
    return any(all(abs(v - p) <= 0.02 * p for v in values) for p in _PIXEL_SCALES)


@rule(
    "stacked-scaling",
    "warning",
    "the input is scaled twice (two Rescaling layers, or a pixel Rescaling after another "
    "scaling): the model sees values 255 times too small",
    "keep one scaling; Rescaling then Normalization (Keras' EfficientNet) is fine",
)
def _stacked_scaling(trace: Trace):
    rows = {row.node.name: row for row in trace.rows}

    def scalings_before(row: Row) -> tuple[list[Node], bool]:
        """The scaling layers upstream of ``row``, and whether only input-handling
        (preprocessing/augmentation) layers lie between them and ``row``."""
        found: list[Node] = []
        leading = True
        seen: set[str] = set()
        todo = list(row.node.inputs)
        while todo:
            name = todo.pop()
            if name in seen or name not in rows:
                continue
            seen.add(name)
            node = rows[name].node
            if REGISTRY[node.kind].scaling and node.args is not None:
                found.append(node)
            elif REGISTRY[node.kind].group not in PREPROCESS_GROUPS:
                leading = False
            todo.extend(node.inputs)
        return found, leading

    for row in trace.rows:
        node = row.node
        if not REGISTRY[node.kind].scaling or node.args is None:
            continue
        before, leading = scalings_before(row)
        if not before:
            continue
        first = before[0]
        if node.kind == "Normalization":
            if all(b.kind == "Rescaling" for b in before):
                continue  # Rescaling then Normalization: Keras' EfficientNet idiom
            yield (node, f"normalises again after {first.name!r} ({first.kind}) did", None)
        elif leading or _pixel_scale(node):
            yield (
                node,
                f"rescales again after {first.name!r} ({first.kind}) already scaled the "
                "input; the layers after it see values far smaller than intended",
                "scale",
            )


def lint(trace: Trace, ignore: set[str] | frozenset[str] = frozenset()) -> list[Finding]:
    """Run every rule not in ``ignore`` (nor in the config's ``lint.ignore``)."""
    cfg = trace.config
    skip = set(ignore) | set(cfg.lint.ignore)
    findings: list[Finding] = []
    for i, rid in enumerate(cfg.lint.ignore):
        if rid not in RULES:
            findings.append(
                cfg.doc.finding(
                    ("lint", "ignore", i),
                    f"unknown rule id {rid!r}{suggest(rid, RULES)}",
                    rule="schema",
                    severity="warning",
                )
            )
    for r in RULES.values():
        if r.check is None or r.id in skip:
            continue
        for node, message, arg in r.check(trace):
            findings.append(_at(trace, node, r, message, arg))
    return findings


def _at(trace: Trace, node: Node, r: Rule, message: str, arg: str | None) -> Finding:
    doc = trace.config.doc
    path = node.path
    prefix = path if path and path[-1] == node.kind else (*path, node.kind)
    if arg and (*prefix, arg) in doc.keys:
        path = (*prefix, arg)
    if node.use is not None:
        message += f" (in a block used at line {doc.locate(node.use, 'key').line})"
    return doc.finding(
        path, f"{node.name}: {message}", rule=r.id, severity=r.severity, hint=r.hint, prefer="key"
    )
