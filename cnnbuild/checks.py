"""CNN lint rules over the static trace. Each rule returns findings and never raises.

Rules are registered once in :data:`RULES` with a stable id, a severity, a one-line
summary and a fix hint; the README's rules table, ``--ignore`` and the tests read it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cnnbuild.catalog import (
    LINEAR_GROUPS,
    PREPROCESS_GROUPS,
    PROBABILITY_ACTIVATIONS,
    REGISTRY,
    label_problem,
    loss_spec,
    output_activation,
)
from cnnbuild.config import INPUT, ModelConfig, Node
from cnnbuild.errors import Finding, shape_str, suggest
from cnnbuild.expand import upstream
from cnnbuild.io import class_folders
from cnnbuild.schema.sections import BUDGET_UNITS, DATASETS, Limit, format_amount
from cnnbuild.trace import WEIGHT_DTYPES, Row, Trace


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    summary: str
    hint: str
    check: Callable[[Trace], Iterator[tuple[Node, str, str | None]]] | None = None
    ignorable: bool = True
    findings: Callable[[Trace], list[Finding]] | None = None
    """For a rule about settings rather than layers: it positions its own findings."""

    @property
    def lint(self) -> bool:
        """A lint rule (``validate`` decides), as opposed to a core rule (no model)."""
        return self.check is not None or self.findings is not None


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
                f"receives a 4-D tensor (batch, *{shape_str(row.inputs[0])}) "
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


def _folder_classes(dataset: object) -> int | None:
    """The class count of a ``{folder: PATH}`` dataset, listed as the loader lists it
    (:func:`cnnbuild.io.class_folders`); None for another dataset or an unreadable or
    empty folder (train says why)."""
    if not isinstance(dataset, dict) or "folder" not in dataset:
        return None
    try:
        return len(class_folders(Path(dataset["folder"]))) or None
    except OSError:
        return None


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
    classes = DATASETS.get(dataset) if isinstance(dataset, str) else _folder_classes(dataset)
    if isinstance(dataset, dict):
        ((kind, path),) = dataset.items()
        dataset = f"{kind}:{path} ({classes} class folders)"
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
                "the feature map is 1x1 here, yet "
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


def _merged(name: str, consumers: dict[str, list[Row]]) -> bool:
    """Whether ``name``'s output goes into a merge (Add, Concatenate, ...), directly or
    through normalisation and other linear layers: a 1x1 strided convolution there is
    the projection shortcut of ResNet and Xception, not a layer that loses pixels."""
    while True:
        after = consumers.get(name, [])
        if any(REGISTRY[r.node.kind].merge for r in after):
            return True
        if len(after) != 1:
            return False
        spec = REGISTRY[after[0].node.kind]
        if not (spec.linear or spec.group == "norm"):
            return False
        name = after[0].node.name


@rule(
    "stride-exceeds-kernel",
    "warning",
    "a stride larger than the kernel: some pixels are never seen (a 1x1 projection or "
    "pooling shortcut into a merge is not: the other path sees them)",
    "make strides <= kernel_size (or pool_size)",
)
def _stride_gap(trace: Trace):
    consumers = _consumers(trace)
    for row in trace.rows:
        win = _window(row.node)
        if win is None:
            continue
        kernel, strides, arg = win
        if kernel == (1, 1) and _merged(row.node.name, consumers):
            continue  # a projection or subsampling shortcut: the other path sees every pixel
        if any(s > k for k, s in zip(kernel, strides, strict=True)):
            yield (
                row.node,
                f"strides {list(strides)} exceed the {arg} {list(kernel)}: "
                f"{max(s - k for k, s in zip(kernel, strides, strict=True))} "
                "pixel(s) between windows are never seen",
                "strides",
            )


def _bottleneck(first: Row, second: Row) -> bool:
    """Whether two 1x1 convolutions are a linear bottleneck: the first projects to fewer
    channels than it reads and the second expands again (MobileNetV2, EfficientNet). The
    missing activation is the design (a ReLU there loses information), and the low-rank
    pair is cheaper than the one layer it would collapse into."""
    windows = (_window(first.node), _window(second.node))
    if any(w is None or w[0] != (1, 1) for w in windows):
        return False
    sizes = [_channels(first.inputs[0] if first.inputs else None), _channels(first.shape)]
    sizes.append(_channels(second.shape))
    return None not in sizes and sizes[1] < min(sizes[0], sizes[2])


def _channels(shape: tuple | None) -> int | None:
    return shape[-1] if shape is not None and len(shape) == 3 else None


@rule(
    "linear-stack",
    "warning",
    "two convolutions in a row with no nonlinearity between them (one linear map; a 1x1 "
    "projection to fewer channels and a 1x1 expansion, a linear bottleneck, is not)",
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
            if REGISTRY[kind].linear or (
                kind == "Activation"
                and nrow.node.args is not None
                and nrow.node.args.activation == "linear"
            ):
                path.append(nrow.node.name)
                cur = nrow.node.name
                continue
            if (
                REGISTRY[kind].group == "conv"
                and node.kind != "Dense"
                and not _bottleneck(row, nrow)
            ):
                between = f" (through {', '.join(path)})" if path else ""
                yield (
                    node,
                    "no activation, and it feeds "
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
            REGISTRY[node.kind].group not in LINEAR_GROUPS
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
                "its bias is removed by the next BatchNormalization",
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
    "keep one scaling; Rescaling then Normalization (Keras' EfficientNet, and its "
    "Rescaling by 1/sqrt(std) after them for imagenet weights) is fine",
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
                leading = leading and name == INPUT  # an unknown layer: not input handling
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
        if _efficientnet_stem(node, before):
            continue
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


@rule(
    "raw-pixels",
    "warning",
    "the first layer with weights sees raw 0..255 pixels (what train, predict and trace --run "
    "feed): no Rescaling or Normalization anywhere before it",
    "remove input_scaling: none (cnnbuild then adds Rescaling(1/255)), or start the layers "
    "with the scaling the weights expect",
)
def _raw_pixels(trace: Trace):
    inputs = {row.node.name: row.node.inputs for row in trace.rows}
    nodes = {row.node.name: row.node for row in trace.rows}
    for row in trace.rows:
        if row.out is None or row.out.params == 0:
            continue
        spec = REGISTRY[row.node.kind]
        if spec.scaling or spec.group == "norm":
            return  # it scales its own input (Normalization, BatchNormalization)
        before = upstream(row.node.inputs, inputs)
        if not any(REGISTRY[nodes[name].kind].scaling for name in before):
            yield (
                row.node,
                f"{row.node.name!r} is the first layer with weights, and nothing before it "
                "scales the pixels: it sees 0..255",
                None,
            )
        return


def _efficientnet_stem(node: Node, before: list[Node]) -> bool:
    """Keras' EfficientNet with imagenet weights: Rescaling(1/255), Normalization, then a
    Rescaling by 1/sqrt(std) right after the Normalization (keras-team issue 49930)."""
    kinds = sorted(b.kind for b in before)
    return (
        node.kind == "Rescaling"
        and kinds == ["Normalization", "Rescaling"]
        and node.inputs == [next(b.name for b in before if b.kind == "Normalization")]
    )


def ignore_problem(rid: str) -> str | None:
    """Why ``rid`` cannot be ignored, or ``None`` when it can: the one message that
    ``--ignore`` and the config's ``lint: {ignore: [...]}`` both give."""
    if rid in RULES and RULES[rid].ignorable:
        return None
    ignorable = [r.id for r in RULES.values() if r.ignorable]
    choices = " (rules that can be ignored: " + ", ".join(ignorable) + ")"
    if rid in RULES:
        return (
            f"rule {rid!r} cannot be ignored: it reports what Keras cannot build or read{choices}"
        )
    return f"unknown rule id {rid!r}{suggest(str(rid), ignorable)}{choices}"


def ignored(cfg: ModelConfig, ignore: Iterable[str] = ()) -> set[str]:
    """The rule ids skipped for ``cfg``: ``ignore`` (``--ignore``) and ``lint.ignore``,
    those that can be ignored."""
    return {rid for rid in (*ignore, *cfg.lint.ignore) if ignore_problem(rid) is None}


def lint(trace: Trace, ignore: set[str] | frozenset[str] = frozenset()) -> list[Finding]:
    """Run every rule not in ``ignore`` (nor in the config's ``lint.ignore``); an id in
    ``lint.ignore`` that cannot be ignored is an error there."""
    cfg = trace.config
    skip = ignored(cfg, ignore)
    findings: list[Finding] = []
    for i, rid in enumerate(cfg.lint.ignore):
        problem = ignore_problem(rid)
        if problem is not None:
            findings.append(cfg.doc.finding(("lint", "ignore", i), problem, rule="schema"))
    for r in RULES.values():
        if not r.lint or r.id in skip:
            continue
        if r.findings is not None:
            findings.extend(r.findings(trace))
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


# -- budget ----------------------------------------------------------------------------

BUDGET_LABELS = {
    "params": "parameters",
    "trainable_params": "trainable parameters",
    "macs": "MACs per image",
    "activation_memory": "activation memory per training image",
    "weights": "weights at float32",
}


def budget_values(trace: Trace) -> dict[str, int]:
    """The figures ``budget:`` limits, by key, as ``summary`` reports them."""
    return {
        "params": trace.total_params,
        "trainable_params": trace.trainable,
        "macs": trace.macs,
        "activation_memory": trace.activation_bytes,
        "weights": trace.total_params * WEIGHT_DTYPES["float32"],
    }


def _broken(value: float, limit: Limit) -> tuple[str, str, float] | None:
    """``(severity, tier, limit)`` of the highest tier ``value`` is over, if any."""
    if limit.fail is not None and value > limit.fail:
        return "error", "fail", limit.fail
    if limit.warn is not None and value > limit.warn:
        return "warning", "warn", limit.warn
    return None


def _budget_finding(trace: Trace, path: tuple, message: str, severity: str) -> Finding:
    r = RULES["budget"]
    return trace.config.doc.finding(
        path, message, rule=r.id, severity=severity, hint=r.hint, prefer="key"
    )


SIZE_DEPENDENT = ("macs", "activation_memory")
"""The figures that depend on the image size: unknown with a free height or width."""


def _free_size(trace: Trace) -> bool:
    return any(d is None for d in trace.config.input_shape[:2])


def _unchecked(trace: Trace, path: tuple, limit: Limit, free: Trace) -> Finding:
    """A limit on a figure a free input size leaves unknown: never a silent pass."""
    message = (
        f"cannot check {BUDGET_LABELS[path[-1]]}: it depends on the image size, and the "
        f"input {shape_str(free.config.input_shape)} of {free.config.doc.file} has a free "
        "height or width"
    )
    severity = "error" if limit.fail is not None else "warning"
    hint = "give the input a fixed size, or remove the limit"
    return trace.config.doc.finding(
        path, message, rule="budget", severity=severity, hint=hint, prefer="key"
    )


def budget_findings(trace: Trace) -> list[Finding]:
    """The ``budget:`` ceilings the traced model is over, at the position of each key; a
    limit on MACs or activation memory of a model with a free input size cannot be met."""
    if not trace.complete:
        return []
    budget = trace.config.budget
    values = budget_values(trace)
    out = []
    for key, unit in BUDGET_UNITS.items():
        limit = getattr(budget, key)
        if limit is not None and key in SIZE_DEPENDENT and _free_size(trace):
            out.append(_unchecked(trace, ("budget", key), limit, trace))
            continue
        broken = None if limit is None else _broken(values[key], limit)
        if broken is None:
            continue
        severity, tier, ceiling = broken
        message = (
            f"{BUDGET_LABELS[key]}: {format_amount(values[key], unit)}, over the "
            f"{tier} limit of {format_amount(ceiling, unit)}"
        )
        out.append(_budget_finding(trace, ("budget", key), message, severity))
    return out


def growth_percent(old: float, new: float) -> float | None:
    """``(new - old) / old`` in percent; ``None`` when ``old`` is 0 and ``new`` is not."""
    if old == 0:
        return 0.0 if new == 0 else None
    return 100.0 * (new - old) / old


def growth_findings(
    new: Trace, old: Trace, ref: str, ignore: frozenset[str] = frozenset()
) -> list[Finding]:
    """The ``budget.growth`` limits ``new`` breaks against ``old`` (its version at ``ref``).

    Args:
        new: the trace of the config as it is.
        old: the trace of its baseline.
        ref: the baseline's name, for messages (``HEAD``, ``origin/main``).
        ignore: rule ids to skip (``--ignore``); the config's ``lint.ignore`` counts too.
    """
    growth = new.config.budget.growth
    if growth is None or "budget" in ignore | set(new.config.lint.ignore):
        return []
    if not (new.complete and old.complete):
        return []
    before, after = budget_values(old), budget_values(new)
    out = []
    for key, unit in BUDGET_UNITS.items():
        limit = getattr(growth, key)
        free = next((t for t in (new, old) if _free_size(t)), None)
        if limit is not None and key in SIZE_DEPENDENT and free is not None:
            out.append(_unchecked(new, ("budget", "growth", key), limit, free))
            continue
        pct = growth_percent(before[key], after[key])
        broken = None if limit is None else _broken(float("inf") if pct is None else pct, limit)
        if broken is None:
            continue
        severity, tier, ceiling = broken
        grew = "from nothing" if pct is None else f"{pct:+.1f}%"
        message = (
            f"{BUDGET_LABELS[key]} grew {grew} against {ref} "
            f"({format_amount(before[key], unit)} -> {format_amount(after[key], unit)}), "
            f"over the {tier} limit of {format_amount(ceiling, 'percent')}"
        )
        out.append(_budget_finding(new, ("budget", "growth", key), message, severity))
    return out


RULES["budget"] = Rule(
    "budget",
    "error",
    "the model is over a `budget:` ceiling, or grew past a `budget.growth` limit against "
    "the baseline of `validate --baseline REF`; a warn-tier limit gives a warning",
    "make the model smaller, or raise the limit in the config's budget: section",
    findings=budget_findings,
)
