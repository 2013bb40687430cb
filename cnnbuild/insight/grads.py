"""A forward and a backward pass, layer by layer, with ``tf.GradientTape``.

The model is run one layer at a time in eager mode, so every layer's output is a tensor
the tape can differentiate against. For each layer this gives the gradient of the
objective with respect to its output, the gradient it passes back into its input (its own
vector-Jacobian product), the gradients of its weights, and, for ReLU-like layers, the
units that never fired.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnbuild.catalog import REGISTRY
from cnnbuild.config import INPUT, ModelConfig

GRAD_BATCH = 8
RELU_LIKE = ("relu", "relu6")
ONE_HOT_LOSSES = ("categorical_crossentropy", "categorical_focal_crossentropy", "categorical_hinge")


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
    """

    name: str
    kind: str
    output_grad_norm: float
    input_grad_zero_fraction: float | None
    weight_grad_norms: dict[str, float] = field(default_factory=dict)
    dead_fraction: float | None = None
    window: int | None = None

    def to_dict(self) -> dict:
        return {
            "output_grad_norm": self.output_grad_norm,
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
    """A seeded batch of raw pixels (uniform 0..255) and labels fitting the loss."""
    from cnnbuild.probe import FREE_SIZE

    rng = np.random.default_rng(seed)
    shape = tuple(FREE_SIZE if d is None else d for d in cfg.input_shape)
    x = rng.uniform(0, 255, (batch, *shape)).astype("float32")
    return x, labels_for(cfg, rng.integers(0, max(units or 2, 2), batch), units)


def labels_for(cfg: ModelConfig, y: np.ndarray, units: int | None) -> np.ndarray:
    """Integer class ids in the form the config's loss takes."""
    y = np.asarray(y)
    if cfg.compile.loss in ONE_HOT_LOSSES and units:
        return np.eye(units, dtype="float32")[y]
    if cfg.compile.loss.startswith("binary"):
        return y.reshape(-1, 1).astype("float32")
    return y.astype("int32")


def layer_grads(
    model: Any,
    cfg: ModelConfig,
    x: np.ndarray,
    y: np.ndarray | None,
    objective: Any,
    *,
    inputs: bool = True,
) -> tuple[float, list[LayerGrads]]:
    """Run ``x`` through ``model`` layer by layer, then back.

    Args:
        model: a Keras model built from ``cfg`` (layers named as its nodes).
        cfg: the config; its nodes give the order and the wiring.
        x: a batch of raw pixels.
        y: labels for ``objective`` (may be ``None`` when it does not use them).
        objective: ``f(output, y) -> scalar`` (see :func:`objective_fn`).
        inputs: also compute each layer's input gradient (one extra backward per layer).

    Returns:
        The objective's value and one :class:`LayerGrads` per node, in config order.
    """
    import tensorflow as tf

    tensors = {INPUT: tf.convert_to_tensor(x)}
    layers = {}
    with tf.GradientTape(persistent=inputs) as tape:
        tape.watch(tensors[INPUT])
        for node in cfg.nodes:
            layer = model.get_layer(node.name)
            ins = [tensors[n] for n in node.inputs]
            out = layer(ins if REGISTRY[node.kind].merge else ins[0], training=False)
            tape.watch(out)
            tensors[node.name], layers[node.name] = out, layer
        value = objective(tensors[cfg.output], y)
    names = [node.name for node in cfg.nodes]
    weights = [(n, w) for n in names for w in layers[n].trainable_weights]
    grads = tape.gradient(value, [tensors[n] for n in names] + [w for _, w in weights])
    out_grads = dict(zip(names, grads[: len(names)], strict=True))
    weight_grads: dict[str, dict[str, float]] = {n: {} for n in names}
    for (n, w), g in zip(weights, grads[len(names) :], strict=True):
        weight_grads[n][_short(w)] = _norm(g)
    rows = []
    for node in cfg.nodes:
        layer, out, g_out = layers[node.name], tensors[node.name], out_grads[node.name]
        zero = None
        if inputs:
            ins = [tensors[n] for n in node.inputs]
            g_out = tf.zeros_like(out) if g_out is None else g_out
            g_ins = tape.gradient(out, ins, output_gradients=g_out)
            total = sum(int(np.prod(t.shape)) for t in ins)
            zeros = sum(
                int(np.prod(t.shape)) if g is None else int(np.sum(np.asarray(g) == 0))
                for t, g in zip(ins, g_ins, strict=True)
            )
            zero = zeros / max(total, 1)
        dead = None
        if relu_like(layer):
            fired = np.any(np.asarray(out) != 0, axis=0)
            dead = float(1.0 - fired.mean())
        rows.append(
            LayerGrads(
                node.name,
                type(layer).__name__,
                _norm(g_out),
                zero,
                weight_grads[node.name],
                dead,
                pool_window(layer, tuple(tensors[node.inputs[0]].shape)),
            )
        )
    if inputs:
        del tape
    return float(value), rows


def compiled_norms(model: Any, cfg: ModelConfig, objective: Any) -> Any:
    """A ``tf.function`` version of :func:`layer_grads` without input gradients.

    Traced once, then each call costs about one training step on the batch: what the
    gradient-flow callback runs at the end of every epoch.

    Returns:
        ``f(x, y) -> (value, [LayerGrads])`` with ``input_grad_zero_fraction`` ``None``.
    """
    import tensorflow as tf

    nodes = list(cfg.nodes)
    layers = [model.get_layer(node.name) for node in nodes]
    weights = [(i, w) for i, layer in enumerate(layers) for w in layer.trainable_weights]
    relu = [i for i, layer in enumerate(layers) if relu_like(layer)]
    # under mixed_float16, scale the loss as training does, so small gradients do not
    # underflow to zero in float16 and read as vanishing
    scale = 1024.0 if any(layer.compute_dtype == "float16" for layer in layers) else 1.0

    def norm(g: Any) -> Any:
        return tf.constant(0.0) if g is None else tf.norm(tf.cast(g, tf.float32)) / scale

    @tf.function(reduce_retracing=True)
    def step(x, y):
        tensors = {INPUT: x}
        with tf.GradientTape() as tape:
            for node, layer in zip(nodes, layers, strict=True):
                ins = [tensors[n] for n in node.inputs]
                tensors[node.name] = layer(
                    ins if REGISTRY[node.kind].merge else ins[0], training=False
                )
                tape.watch(tensors[node.name])
            value = objective(tensors[cfg.output], y)
            scaled = value * scale
        outs = [tensors[node.name] for node in nodes]
        grads = tape.gradient(scaled, outs + [w for _, w in weights])
        dead = [
            1.0 - tf.reduce_mean(tf.cast(tf.reduce_any(outs[i] != 0, axis=0), tf.float32))
            for i in relu
        ]
        return value, [norm(g) for g in grads], dead

    def run(x: np.ndarray, y: np.ndarray) -> tuple[float, list[LayerGrads]]:
        value, norms, dead = step(tf.convert_to_tensor(x), tf.convert_to_tensor(y))
        norms = [float(n) for n in norms]
        rows = [
            LayerGrads(node.name, type(layer).__name__, norms[i], None, {}, None)
            for i, (node, layer) in enumerate(zip(nodes, layers, strict=True))
        ]
        for (i, w), n in zip(weights, norms[len(nodes) :], strict=True):
            rows[i].weight_grad_norms[_short(w)] = n
        for i, d in zip(relu, dead, strict=True):
            rows[i].dead_fraction = float(d)
        return float(value), rows

    return run


def _short(weight: Any) -> str:
    return str(getattr(weight, "name", weight)).split("/")[-1].split(":")[0]


def _norm(g: Any) -> float:
    if g is None:
        return 0.0
    return float(np.linalg.norm(np.asarray(g, dtype="float64").ravel()))


def pooling_note(row: LayerGrads) -> str:
    """The primer's words for a pooling layer's backward pass."""
    if row.window is None:
        return ""
    if "Max" in row.kind:
        return f"max pool: only the winner gets the gradient (1 of {row.window})"
    if "Average" in row.kind:
        return f"average pool: everyone shares (1/{row.window} each)"
    return ""


def trace_grads(
    cfg: ModelConfig,
    *,
    seed: int = 0,
    weights: Any = None,
    data: bool = False,
    batch: int = GRAD_BATCH,
    verbose: bool = False,
) -> dict:
    """``trace --grads``: one forward and one backward pass through ``cfg``'s model.

    Args:
        cfg: a config without errors.
        seed: seeds the weights' initialisation, the batch and the random direction.
        weights: a run directory or a ``.keras`` file to load the weights from (default: a
            fresh initialisation).
        data: take the batch from the config's dataset instead of random pixels.
        batch: images in the batch.
        verbose: show TensorFlow's start-up messages.

    Returns:
        ``{"objective", "value", "batch", "seed", "weights", "layers": {name: LayerGrads}}``.

    Raises:
        UsageError: ``weights`` is not a run directory or a model of this config.
    """
    from pathlib import Path

    from cnnbuild.builder import build_model, keras_module
    from cnnbuild.errors import UsageError
    from cnnbuild.trace import trace

    keras = keras_module(verbose)
    keras.utils.set_random_seed(seed)
    model = build_model(cfg, compile=False)
    source = "a fresh initialisation"
    if weights is not None:
        path = Path(weights)
        path = path / "model.keras" if path.is_dir() else path
        if path.suffix != ".keras" or not path.is_file():
            raise UsageError(f"--weights {weights}: expected a run directory or a .keras file")
        copy_weights(model, path, f"--weights {weights}", cfg.file)
        source = str(path)
    out = trace(cfg).output_shape
    units = out[-1] if out and len(out) == 1 else None
    if data:
        x, y = dataset_batch(cfg, units, seed, batch)
    else:
        x, y = random_batch(cfg, units, seed, batch)
    objective, what = objective_fn(cfg, units is not None, seed)
    value, rows = layer_grads(model, cfg, x, y, objective)
    return {
        "objective": what,
        "value": value,
        "batch": len(x),
        "seed": seed,
        "weights": source,
        "data": "the config's dataset" if data else "random pixels (uniform 0..255)",
        "layers": {r.name: r for r in rows},
    }


def copy_weights(model: Any, path: Any, what: str, config: Any) -> None:
    """Give ``model`` the weights of the saved model at ``path``, layer by layer by name.

    Raises:
        UsageError: the file does not load, or its weighted layers are not the model's
            (names and weight shapes).
    """
    from cnnbuild.errors import UsageError
    from cnnbuild.runs import load_model as load_keras_model

    try:
        saved = load_keras_model(path)
    except Exception as exc:  # a CnnbuildError with Keras' reason
        raise UsageError(f"{what}: {getattr(exc, 'message', exc)}") from None
    ours = {layer.name: layer for layer in model.layers if layer.weights}
    theirs = {layer.name: layer for layer in saved.layers if layer.weights}
    problems = sorted(set(ours) ^ set(theirs))
    for name in sorted(set(ours) & set(theirs)):
        mine = [tuple(w.shape) for w in ours[name].weights]
        if mine != [tuple(w.shape) for w in theirs[name].weights]:
            problems.append(name)
    if problems:
        raise UsageError(
            f"{what}: its weights do not fit {config} (layers that differ: "
            f"{', '.join(problems[:8])}{', ...' if len(problems) > 8 else ''})"
        )
    for name, layer in ours.items():
        layer.set_weights(theirs[name].get_weights())


def dataset_batch(cfg: ModelConfig, units: int | None, seed: int, batch: int):
    """``batch`` training images of the config's dataset, chosen by ``seed``."""
    from cnnbuild.runs import load_data, resolve_train

    data = load_data(cfg.input_shape, resolve_train(cfg, {}), quiet=True)
    pick = np.random.default_rng(seed).choice(len(data.x_train), min(batch, len(data.x_train)))
    x = data.x_train[np.sort(pick)].astype("float32")
    return x, labels_for(cfg, data.y_train[np.sort(pick)], units)


def grads_table(result: dict, shapes: dict[str, Any]) -> Any:
    """The ``trace --grads`` table (a rich Table)."""
    from rich.table import Table

    from cnnbuild.errors import shape_str

    table = Table(
        title=f"backward pass: {result['objective']} = {result['value']:.4g}",
        caption=f"batch of {result['batch']}: {result['data']}; weights: {result['weights']}; "
        f"seed {result['seed']}\nzero in: exact zeros in the gradient a layer sends to its "
        "input; dead: units that are zero for every image",
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
            pooling_note(row),
        )
    return table
