"""A forward and a backward pass on one ``tf.GradientTape``, as the optimizer sees them.

The model is run node by node (in training mode by default: BatchNormalization with the
batch's statistics, Dropout dropping), each node reading its own identity copy of its
inputs, and one backward pass gives, for every layer, the gradient of the objective with
respect to its output, the gradient it alone sends back into its input (its own
vector-Jacobian product: the gradient of its input copy), the gradients of its weights,
and, for ReLU-like layers, the units that never fired. An output layer whose loss reads
the logits under its softmax or sigmoid shows the gradient with respect to those logits.
The model's state is left as it was.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnbuild.catalog import REGISTRY, one_hot_classes
from cnnbuild.config import INPUT, ModelConfig

GRAD_BATCH = 8
RELU_LIKE = ("relu", "relu6")


@dataclass
class LayerGrads:
    """The backward pass seen from one layer.

    Attributes:
        name: the layer's name.
        kind: its Keras class.
        output_grad_norm: L2 norm of d(objective)/d(output), over the whole batch.
        input_grad_zero_fraction: fraction of exact zeros in the gradient this layer sends
            into its input(s); ``None`` when not computed.
        weight_grad_norms: L2 norm of the gradient of each trainable weight, by its name
            (``kernel``, ``bias``...).
        dead_fraction: for a ReLU-like layer, the fraction of its output units (a value at
            one position and channel, or one Dense neuron) that are zero for every image of
            the batch; ``None`` for other layers.
        window: for a pooling layer, how many inputs share one output (``None`` otherwise).
        grad_of: what ``output_grad_norm`` is taken with respect to: ``output``, or
            ``logits`` for an output layer whose loss reads the logits under its softmax
            or sigmoid (Keras' cross-entropies do, so the output itself gets no gradient).
    """

    name: str
    kind: str
    output_grad_norm: float
    input_grad_zero_fraction: float | None
    weight_grad_norms: dict[str, float] = field(default_factory=dict)
    dead_fraction: float | None = None
    window: int | None = None
    grad_of: str = "output"

    def to_dict(self) -> dict:
        return {
            "output_grad_norm": self.output_grad_norm,
            "output_grad_of": self.grad_of,
            "input_grad_zero_fraction": self.input_grad_zero_fraction,
            "weight_grad_norms": dict(self.weight_grad_norms),
            "dead_fraction": self.dead_fraction,
        }


def relu_like(layer: Any) -> bool:
    """Whether a Keras layer ends in an activation that outputs exact zeros."""
    if type(layer).__name__ == "ReLU":
        return True
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "") in RELU_LIKE


def pool_window(layer: Any, in_shape: tuple) -> int | None:
    """How many inputs feed one output of a pooling layer (per channel)."""
    kind = type(layer).__name__
    if kind.startswith("Global") and "Pooling" in kind:
        return int(np.prod([d for d in in_shape[1:-1]]))
    if "Pooling" in kind:
        return int(np.prod(layer.pool_size))
    return None


def objective_fn(cfg: ModelConfig, classifier: bool, seed: int) -> tuple[Any, str]:
    """The scalar the backward pass starts from, as a function of (output, labels).

    A classifier (one output vector per image) uses the config's loss. Any other output (a
    feature extractor such as ``seed_shape_watch``) uses ``sum(output * r) / batch`` with
    ``r`` a seeded standard-normal tensor: a random direction, so that every output value
    sends a gradient back.

    Returns:
        The function and a short description of it.
    """
    import tensorflow as tf

    if classifier:
        from cnnbuild.builder import make_loss

        loss = make_loss(cfg)
        return (lambda out, y: loss(y, tf.cast(out, tf.float32))), f"loss {cfg.compile.loss}"

    def directed(out, y):
        r = np.random.default_rng(seed + 1).standard_normal(tuple(out.shape)).astype("float32")
        return tf.reduce_sum(tf.cast(out, tf.float32) * r) / out.shape[0]

    return directed, "sum(output * r) / batch, r seeded N(0, 1) (no classifier head)"


def random_batch(cfg: ModelConfig, units: int | None, seed: int, batch: int = GRAD_BATCH):
    """A seeded batch of what the model takes (see :func:`cnnbuild.probe.random_input`),
    labels fitting the loss, and the words saying what the images are."""
    from cnnbuild.probe import random_input

    x, words = random_input(cfg, seed, batch)
    ids = np.random.default_rng(seed + 2).integers(0, max(units or 2, 2), batch)
    return x, labels_for(cfg, ids, units), words


def labels_for(cfg: ModelConfig, y: np.ndarray, units: int | None) -> np.ndarray:
    """Integer class ids in the form the config's loss takes, as the trainer feeds them.

    The form is the catalog's (:func:`cnnbuild.catalog.one_hot_classes`, which the
    trainer's pipeline asks too): one-hot float32 rows for a loss that compares one output
    per class with the encoded class id, else the int32 class ids as they are (a binary
    loss's 0/1 labels included).
    """
    y = np.asarray(y).astype("int32")
    classes = one_hot_classes(cfg.compile.loss, units) if units else None
    return y if classes is None else np.eye(classes, dtype="float32")[y]


@dataclass
class _Plan:
    """A config's nodes with their Keras layers: what one pass over the model needs."""

    nodes: list
    layers: list
    weights: list[tuple[int, Any]]
    relu: list[int]
    output: str
    last: int
    scale: float
    grad_of: dict[str, str] = field(default_factory=dict)
    in_shapes: dict[str, tuple] = field(default_factory=dict)


def _plan(model: Any, cfg: ModelConfig) -> _Plan:
    nodes = list(cfg.nodes)
    layers = [model.get_layer(node.name) for node in nodes]
    # under mixed_float16, scale the loss as training does, so small gradients do not
    # underflow to zero in float16 and read as vanishing
    scale = 1024.0 if any(layer.compute_dtype == "float16" for layer in layers) else 1.0
    return _Plan(
        nodes,
        layers,
        [(i, w) for i, layer in enumerate(layers) for w in layer.trainable_weights],
        [i for i, layer in enumerate(layers) if relu_like(layer)],
        cfg.output,
        next(i for i, node in enumerate(nodes) if node.name == cfg.output),
        scale,
    )


@contextmanager
def _backward_dtype(layer: Any, augment: bool):
    """Run an augmentation layer in float32 where its policy computes in bfloat16; yields
    the dtype to cast its output back to (``None``: nothing changed).

    TensorFlow defines no bfloat16 gradient for the image transform under RandomRotation,
    RandomZoom, RandomTranslation... (``ImageProjectiveTransformV3``: "Invalid dtype
    bfloat16"), which the backward pass goes through to reach the layers before it and
    the input. Training never needs that gradient (nothing it updates lies before them).
    The layer's output is cast back to its compute dtype, so the layers after it see what
    they see in training; float16 has the gradient, so mixed_float16 runs as it is.
    """
    before = layer.dtype_policy
    swap = augment and before.compute_dtype == "bfloat16"
    if swap:
        layer.dtype_policy = "float32"
    try:
        yield before.compute_dtype if swap else None
    finally:
        layer.dtype_policy = before


def _forward(plan: _Plan, tape: Any, x: Any, training: bool, inputs: bool):
    """Run ``x`` through the layers on ``tape``; with ``inputs``, each layer reads its own
    identity copy of every input, so the gradient into that copy is what this layer alone
    sends back (its vector-Jacobian product), all from the same backward pass."""
    import tensorflow as tf

    tensors, copies = {INPUT: x}, []
    tape.watch(x)
    for node, layer in zip(plan.nodes, plan.layers, strict=True):
        ins = [tensors[n] for n in node.inputs]
        plan.in_shapes[node.name] = tuple(ins[0].shape)
        if inputs:
            ins = [tf.identity(t) for t in ins]
            tape.watch(ins)
            copies.append(ins)
        with _backward_dtype(layer, REGISTRY[node.kind].augment) as cast_back:
            out = layer(ins if REGISTRY[node.kind].merge else ins[0], training=training)
        if cast_back is not None:
            out = tf.cast(out, cast_back)
        tape.watch(out)
        tensors[node.name] = out
    return [tensors[node.name] for node in plan.nodes], copies


def _backward(plan: _Plan, objective: Any, x: Any, y: Any, training: bool, inputs: bool):
    """One forward pass and one backward pass on one tape: the objective's value, the norm
    of every layer output's and weight's gradient, each layer's input-gradient zero
    fraction (with ``inputs``) and each ReLU-like layer's dead fraction, as tensors.

    An output whose loss reads the logits Keras caches on a softmax or sigmoid (the
    cross-entropies do) gets no gradient itself; its row then holds the gradient with
    respect to those logits, and ``plan.grad_of`` says so.
    """
    import tensorflow as tf

    with tf.GradientTape() as tape:
        outs, copies = _forward(plan, tape, x, training, inputs)
        value = objective(outs[plan.last], y)
        scaled = value * plan.scale
    last = plan.last
    logits = getattr(outs[last], "_keras_logits", None)
    flat = [t for ins in copies for t in ins]
    sources = outs + [w for _, w in plan.weights] + flat + ([] if logits is None else [logits])
    grads = tape.gradient(scaled, sources)
    n, m = len(outs), len(outs) + len(plan.weights)
    out_grads = grads[:n]
    plan.grad_of[plan.output] = "output"
    if out_grads[last] is None and logits is not None and grads[-1] is not None:
        out_grads[last], plan.grad_of[plan.output] = grads[-1], "logits"

    # every norm from one op a tensor (L2Loss: half its squared norm, in float32), then one
    # square root for all: a third of the ops tf.norm takes, so the pass traces faster
    zero_norm = tf.constant(0.0)
    halves = tf.stack(
        [
            zero_norm if g is None else tf.nn.l2_loss(tf.cast(g, tf.float32))
            for g in out_grads + grads[n:m]
        ]
    )
    norms = tf.sqrt(2.0 * halves) / plan.scale

    zero, at = [], m
    for ins in copies:
        total = sum(int(np.prod(t.shape)) for t in ins)
        zeros = tf.constant(0, tf.int64)
        for t, g in zip(ins, grads[at : at + len(ins)], strict=True):
            size = int(np.prod(t.shape))
            zeros += size if g is None else size - tf.math.count_nonzero(g, dtype=tf.int64)
        zero.append(tf.cast(zeros, tf.float64) / max(total, 1))
        at += len(ins)
    dead = [
        1.0 - tf.reduce_mean(tf.cast(tf.reduce_any(tf.not_equal(outs[i], 0), axis=0), tf.float32))
        for i in plan.relu
    ]
    return value, norms, zero, dead


def _rows(plan: _Plan, norms: list, zero: list, dead: list) -> list[LayerGrads]:
    """One :class:`LayerGrads` per node from :func:`_backward`'s values."""
    norms = [float(v) for v in np.asarray(norms)]
    rows = [
        LayerGrads(
            node.name,
            type(layer).__name__,
            norms[i],
            float(zero[i]) if zero else None,
            {},
            None,
            pool_window(layer, plan.in_shapes[node.name]),
            plan.grad_of.get(node.name, "output"),
        )
        for i, (node, layer) in enumerate(zip(plan.nodes, plan.layers, strict=True))
    ]
    for (i, w), v in zip(plan.weights, norms[len(plan.nodes) :], strict=True):
        rows[i].weight_grad_norms[_short(w)] = v
    for i, d in zip(plan.relu, dead, strict=True):
        rows[i].dead_fraction = float(d)
    return rows


@contextmanager
def _state_kept(model: Any):
    """Put back the model's non-trainable state (BatchNormalization's moving statistics,
    Dropout's seed) after a training-mode pass, so a measurement never changes the model."""
    state = [(v, v.numpy()) for v in model.non_trainable_variables]
    try:
        yield
    finally:
        for v, value in state:
            v.assign(value)


def layer_grads(
    model: Any,
    cfg: ModelConfig,
    x: np.ndarray,
    y: np.ndarray | None,
    objective: Any,
    *,
    inputs: bool = True,
    training: bool = True,
) -> tuple[float, list[LayerGrads]]:
    """Run ``x`` through ``model`` and back, on one tape.

    Args:
        model: a Keras model built from ``cfg`` (layers named as its nodes).
        cfg: the config; its nodes give the order and the wiring.
        x: a batch of raw pixels.
        y: labels for ``objective`` (may be ``None`` when it does not use them).
        objective: ``f(output, y) -> scalar`` (see :func:`objective_fn`).
        inputs: also compute each layer's input-gradient zero fraction.
        training: run in training mode (BatchNormalization normalises with the batch's
            statistics, Dropout drops), as the optimizer sees the model; the model's
            state is left as it was.

    Returns:
        The objective's value and one :class:`LayerGrads` per node, in config order.
    """
    import tensorflow as tf

    plan = _plan(model, cfg)
    with _state_kept(model):
        value, norms, zero, dead = _backward(
            plan, objective, tf.convert_to_tensor(x), y, training, inputs
        )
    return float(value), _rows(plan, norms, zero, dead)


def _unoptimized_calls() -> Any:
    """A context in which ``tf.function`` calls run without Grappler, TensorFlow's graph
    optimiser, on this thread; the functions called outside it (the training step) keep
    their options, so nothing already instantiated is instantiated again.

    TensorFlow reads these options at each call from a per-thread object that only its
    internal module exposes; where that changes, the calls run as they are (optimised).
    """
    try:
        from tensorflow.core.protobuf import config_pb2
        from tensorflow.python.eager import context as tf_context

        ctx = tf_context.context()
        config = config_pb2.ConfigProto()
        config.CopyFrom(ctx.config)
        config.allow_soft_placement = True  # as TensorFlow's own default for functions
        config.graph_options.rewrite_options.disable_meta_optimizer = True
        options = tf_context.FunctionCallOptions(config_proto=config)
    except (ImportError, AttributeError, TypeError):
        return lambda: nullcontext()

    @contextmanager
    def unoptimized() -> Any:
        before = ctx.function_call_options
        ctx.function_call_options = options
        try:
            yield
        finally:
            ctx.function_call_options = before

    return unoptimized


def compiled_norms(model: Any, cfg: ModelConfig, objective: Any, training: bool = True) -> Any:
    """A ``tf.function`` version of :func:`layer_grads` without input gradients.

    Traced once, then each call costs about one training step on the batch: what the
    gradient-flow callback runs at the end of every epoch. Traced without AutoGraph (the
    pass has no tensor-dependent control flow) and called without Grappler: on a
    155-layer MobileNetV2 that halves the first call (trace and graph optimisation,
    about 10 s on a 2-core CPU) for about 0.1 s more on each later one (see
    ``docs/guides/training-speed.md``).

    Returns:
        ``f(x, y) -> (value, [LayerGrads])`` with ``input_grad_zero_fraction`` ``None``.
    """
    import tensorflow as tf

    plan = _plan(model, cfg)
    unoptimized = _unoptimized_calls()

    @tf.function(reduce_retracing=True, autograph=False)
    def step(x, y):
        return _backward(plan, objective, x, y, training, inputs=False)

    def run(x: np.ndarray, y: np.ndarray) -> tuple[float, list[LayerGrads]]:
        with _state_kept(model), unoptimized():
            value, norms, zero, dead = step(tf.convert_to_tensor(x), tf.convert_to_tensor(y))
        return float(value), _rows(plan, norms, zero, dead)

    return run


def _short(weight: Any) -> str:
    return str(getattr(weight, "name", weight)).split("/")[-1].split(":")[0]


def pooling_note(row: LayerGrads) -> str:
    """The primer's words for a pooling layer's backward pass."""
    if row.window is None:
        return ""
    if "Max" in row.kind:
        return f"max pool: only the winner gets the gradient (1 of {row.window})"
    if "Average" in row.kind:
        return f"average pool: everyone shares (1/{row.window} each)"
    return ""


MODE_WORDS = {
    "training": "training mode, as the optimizer sees the model: BatchNormalization "
    "normalises with the batch's statistics, Dropout drops (seeded)",
    "inference": "inference mode: BatchNormalization uses its moving statistics, no Dropout",
}


def trace_grads(
    cfg: ModelConfig,
    *,
    seed: int = 0,
    weights: Any = None,
    data: bool = False,
    batch: int = GRAD_BATCH,
    mode: str = "training",
    verbose: bool = False,
) -> dict:
    """``trace --grads``: one forward and one backward pass through ``cfg``'s model.

    Args:
        cfg: a config without errors.
        seed: seeds the weights' initialisation, Dropout, the batch and the random
            direction.
        weights: a run directory or a ``.keras`` file to load the weights from (default: a
            fresh initialisation).
        data: take the batch from a dataset instead of random pixels: the run's own
            (its ``config.yaml``) when ``weights`` is a run directory, else the config's.
        batch: images in the batch.
        mode: ``training`` (what the optimizer sees) or ``inference``.
        verbose: show TensorFlow's start-up messages.

    Returns:
        ``{"objective", "value", "batch", "seed", "mode", "weights", "data",
        "layers": {name: LayerGrads}}``.

    Raises:
        UsageError: ``weights`` is not a run directory or a .keras file.
        CnnbuildError: its model does not load or does not fit this config.
    """
    from pathlib import Path

    from cnnbuild.builder import build_model, keras_module
    from cnnbuild.runs import open_target
    from cnnbuild.trace import trace

    keras = keras_module(verbose)
    keras.utils.set_random_seed(seed)
    model = build_model(cfg, compile=False)
    source, data_cfg = "a fresh initialisation", cfg
    if weights is not None:
        target = open_target(Path(weights), "--weights")
        copy_weights(model, target.model_path, f"--weights {weights}", cfg.file)
        source, data_cfg = str(target.model_path), target.config or cfg
    out = trace(cfg).output_shape
    units = out[-1] if out and len(out) == 1 else None
    if data:
        x, ids, words = dataset_batch(cfg, data_cfg, seed, batch)
        y = labels_for(cfg, ids, units)
        if data_cfg is not cfg:
            words += f" (the run's own dataset, from {weights}/config.yaml)"
    else:
        x, y, words = random_batch(cfg, units, seed, batch)
    objective, what = objective_fn(cfg, units is not None, seed)
    value, rows = layer_grads(model, cfg, x, y, objective, training=mode == "training")
    return {
        "objective": what,
        "value": value,
        "batch": len(x),
        "seed": seed,
        "mode": mode,
        "weights": source,
        "data": words,
        "layers": {r.name: r for r in rows},
    }


def copy_weights(model: Any, path: Any, what: str, config: Any) -> None:
    """Give ``model`` the weights of the saved model at ``path``, layer by layer by name.

    Raises:
        CnnbuildError: the file does not load, or its weighted layers are not the model's
            (names and weight shapes): exit 1, as for any bad model.
    """
    from cnnbuild.errors import CnnbuildError
    from cnnbuild.runs import load_model

    try:
        saved = load_model(path)
    except Exception as exc:  # a CnnbuildError with Keras' reason
        raise CnnbuildError(f"{what}: {getattr(exc, 'message', exc)}") from None
    ours = {layer.name: layer for layer in model.layers if layer.weights}
    theirs = {layer.name: layer for layer in saved.layers if layer.weights}
    problems = sorted(set(ours) ^ set(theirs))
    for name in sorted(set(ours) & set(theirs)):
        mine = [tuple(w.shape) for w in ours[name].weights]
        if mine != [tuple(w.shape) for w in theirs[name].weights]:
            problems.append(name)
    if problems:
        raise CnnbuildError(
            f"{what}: its weights do not fit {config} (layers that differ: "
            f"{', '.join(problems[:8])}{', ...' if len(problems) > 8 else ''})"
        )
    for name, layer in ours.items():
        layer.set_weights(theirs[name].get_weights())


def dataset_batch(cfg: ModelConfig, data_cfg: ModelConfig, seed: int, batch: int):
    """``batch`` training images of the dataset ``data_cfg``'s ``train:`` names (read for
    ``cfg``'s input), chosen by ``seed``: images, integer class ids, words naming it."""
    from cnnbuild.runs import load_data, resolve_train

    data = load_data(cfg.input_shape, resolve_train(data_cfg, {}), quiet=True)
    pick = np.sort(
        np.random.default_rng(seed).choice(len(data.x_train), min(batch, len(data.x_train)))
    )
    x = data.x_train[pick].astype("float32")
    return x, data.y_train[pick], f"training images of {data.name}"


LOGITS_NOTE = "∂L/∂logits: the loss reads the logits under the activation"


def grads_table(result: dict, shapes: dict[str, Any]) -> Any:
    """The ``trace --grads`` table (a rich Table)."""
    from rich.table import Table

    from cnnbuild.errors import shape_str

    table = Table(
        title=f"backward pass in {result['mode']} mode: {result['objective']} = "
        f"{result['value']:.4g}",
        caption=f"batch of {result['batch']}: {result['data']}; weights: {result['weights']}; "
        f"seed {result['seed']}\n{MODE_WORDS[result['mode']]}\nzero in: exact zeros in the "
        "gradient a layer sends to its input; dead: units that are zero for every image",
        title_justify="left",
    )
    for column, justify in (
        ("Layer", "left"),
        ("Type", "left"),
        ("Output shape", "left"),
        ("|dL/d out|", "right"),
        ("zero in", "right"),
        ("weight grads", "left"),
        ("dead", "right"),
        ("", "left"),
    ):
        table.add_column(column, justify=justify)
    for name, row in result["layers"].items():
        table.add_row(
            name,
            row.kind,
            shape_str(shapes[name]) if shapes.get(name) is not None else "?",
            f"{row.output_grad_norm:.3g}",
            "-" if row.input_grad_zero_fraction is None else f"{row.input_grad_zero_fraction:.2%}",
            "  ".join(f"{k} {v:.3g}" for k, v in row.weight_grad_norms.items()),
            "-" if row.dead_fraction is None else f"{row.dead_fraction:.0%}",
            LOGITS_NOTE if row.grad_of == "logits" else pooling_note(row),
        )
    return table
