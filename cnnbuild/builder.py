"""Config -> compiled Keras model.

Keras comes from :func:`cnnbuild.backend.keras_module` (imported lazily and quietly);
a saved model is opened by :func:`cnnbuild.runs.load_model`.
"""

from __future__ import annotations

import math
from typing import Any

from cnnbuild.backend import captured_fds as captured_fds  # re-exported for callers
from cnnbuild.backend import keras_module as keras_module
from cnnbuild.backend import recursion_room
from cnnbuild.catalog import REGISTRY, loss_spec, resolved_compile
from cnnbuild.config import INPUT, ModelConfig, Node
from cnnbuild.schema.layers import keras_kwargs
from cnnbuild.schema.types import KERAS_CLASS

_FAMILY = {
    "_initializer": "initializers",
    "_regularizer": "regularizers",
    "_constraint": "constraints",
}


def _keras_value(key: str, value: Any) -> Any:
    """A YAML value as Keras takes it: initializer/regularizer/constraint names become
    instances of their classes (so every listed name works, e.g. l1_l2 and constant)."""
    family = next((f for suffix, f in _FAMILY.items() if key.endswith(suffix)), None)
    if family is not None and value is not None:
        name, args = (value, {}) if isinstance(value, str) else next(iter(value.items()))
        return getattr(getattr(keras_module(), family), KERAS_CLASS[name])(**(args or {}))
    if isinstance(value, tuple):
        return tuple(_keras_value(key, v) for v in value)
    return value


def layer_kwargs(node: Node) -> dict[str, Any]:
    """The Keras constructor arguments of a node: what the user set, plus its name."""
    kwargs = {k: _keras_value(k, v) for k, v in keras_kwargs(node.args).items()}
    kwargs["name"] = node.name
    return kwargs


def make_layer(node: Node, dtype: str | None = None) -> Any:
    """Instantiate the Keras layer of one node, through its registry entry's factory."""
    keras = keras_module()
    kwargs = layer_kwargs(node)
    if dtype is not None:
        kwargs["dtype"] = dtype
    return REGISTRY[node.kind].make(keras, kwargs)


def build_model(
    cfg: ModelConfig,
    *,
    compile: bool = True,
    mixed_precision: bool | str = False,
    lr: Any = None,
    steps_per_execution: int = 1,
    jit_compile: bool | str = "auto",
) -> Any:
    """Build the Keras functional model of a config.

    Args:
        cfg: a config without errors (see :func:`cnnbuild.load_config`).
        compile: also compile it with the config's optimizer, loss and metrics.
        mixed_precision: build under the ``mixed_float16`` policy (or, given a policy
            name such as ``mixed_bfloat16``, under that one), keeping the output layer in
            float32. The caller's global dtype policy is restored once it is built.
        lr: a learning rate or schedule overriding the optimizer's.
        steps_per_execution: passed to ``model.compile``.
        jit_compile: passed to ``model.compile``.

    Returns:
        A ``keras.Model`` named after the config.
    """
    keras = keras_module()
    if isinstance(mixed_precision, str):
        policy = mixed_precision
    else:
        policy = "mixed_float16" if mixed_precision else "float32"
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        tensors = {INPUT: keras.Input(shape=cfg.input_shape, name=INPUT)}
        frozen = cfg.frozen
        with recursion_room(len(cfg.nodes)):
            for node in cfg.nodes:
                dtype = "float32" if policy != "float32" and node.name == cfg.output else None
                layer = make_layer(node, dtype)
                if node.name in frozen:  # a frozen BatchNormalization runs in inference mode
                    layer.trainable = False
                ins = [tensors[n] for n in node.inputs]
                tensors[node.name] = layer(ins if REGISTRY[node.kind].merge else ins[0])
            model = keras.Model(tensors[INPUT], tensors[cfg.output], name=cfg.name)
        if compile:
            compile_model(
                model, cfg, lr=lr, steps_per_execution=steps_per_execution, jit_compile=jit_compile
            )
    finally:  # the layers keep the policy they were built with; the caller keeps theirs
        keras.mixed_precision.set_global_policy(previous)
    return model


def set_frozen(model: Any, cfg: ModelConfig, frozen: set[str]) -> int:
    """Freeze the layers named in ``frozen`` and unfreeze the config's other layers (see
    :func:`cnnbuild.config.frozen_names`); the model must be compiled again after.

    Returns:
        The number of trainable weights after the change.
    """
    names = {node.name for node in cfg.nodes}
    for layer in model.layers:
        if layer.name in names:
            layer.trainable = layer.name not in frozen
    return sum(int(math.prod(w.shape)) for w in model.trainable_weights)


def make_loss(cfg: ModelConfig) -> Any:
    """The Keras loss of a config, with ``from_logits`` resolved (see
    :func:`cnnbuild.catalog.resolved_compile`)."""
    keras = keras_module()
    settings = resolved_compile(cfg)
    spec = loss_spec(settings["loss"])
    cls = getattr(keras.losses, spec.keras_class)
    return cls(from_logits=settings["from_logits"]) if spec.logits else cls()


_INT_OPT = frozenset({"gradient_accumulation_steps", "ema_overwrite_frequency"})


def make_optimizer(cfg: ModelConfig, lr: Any = None) -> Any:
    """The Keras optimizer of a config; numbers are passed as floats (an integer
    learning_rate of 10**300 is a float to Keras, not an int64 overflow)."""
    keras = keras_module()
    ((name, args),) = cfg.compile.optimizer.items()
    args = {
        k: float(v) if isinstance(v, int) and not isinstance(v, bool) and k not in _INT_OPT else v
        for k, v in args.items()
    }
    if lr is not None:
        args["learning_rate"] = lr
    return type(keras.optimizers.get(name))(**args)


def compile_model(
    model: Any,
    cfg: ModelConfig,
    *,
    lr: Any = None,
    steps_per_execution: int = 1,
    jit_compile: bool | str = "auto",
) -> None:
    model.compile(
        optimizer=make_optimizer(cfg, lr),
        loss=make_loss(cfg),
        metrics=list(resolved_compile(cfg)["metrics"]),
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )


def build_training_state(model: Any, data_spec: Any) -> None:
    """Make every variable a compiled model's training step uses (the optimizer's slots,
    the metrics' and the loss tracker's totals, at zero) before the step is traced.

    This is Keras' own symbolic build, which it runs itself under a distribution strategy.
    On one device Keras leaves it to the first trace of the training step, and because
    that trace creates variables, TensorFlow traces the step a second time. Built here
    first, it is traced once: on a 155-layer MobileNetV2 that takes about 9 s off a 24 s
    first epoch (see ``docs/guides/training-speed.md``). The variables are the ones Keras
    would make, so the run is the same. Where a Keras release has no symbolic build (or
    one that takes other arguments: it is private), the optimizer alone is built.

    Args:
        model: a compiled, built Keras model.
        data_spec: what one batch of the training data is (``dataset.element_spec``).
    """
    symbolic = getattr(model, "_symbolic_build", None)
    try:
        if callable(symbolic):
            symbolic(data_batch=data_spec)
            return
    except TypeError:  # a Keras release whose private build takes other arguments
        pass
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def keras_macs(layer: Any) -> int:
    """Multiply-accumulates of one built Keras layer per image, from its own kernels and
    tensor shapes (independent of the static engine): every output position of a
    convolution or Dense layer multiplies its whole kernel once; a transposed
    convolution spreads every input position over its kernel."""
    import math

    kernels = [w for w in layer.weights if "kernel" in w.name and "lora" not in w.name]
    if not kernels:
        return 0
    kind = type(layer).__name__
    if kind == "Conv2DTranspose":
        positions = math.prod(layer.input.shape[1:-1])
    else:
        positions = math.prod(layer.output.shape[1:-1])
    return positions * sum(math.prod(k.shape) for k in kernels)


def adapt_normalization(model: Any, images: Any, batch_size: int = 256) -> list[str]:
    """Adapt every Normalization layer of ``model`` that has no given mean/variance.

    Each layer adapts on what it receives in the model: the training images passed
    through the layers before it (in inference mode, so augmentations do nothing).

    Args:
        model: a model from :func:`build_model`.
        images: the training images, raw pixel values: an array, or a ``tf.data``
            dataset of image batches or of (images, labels) batches.
        batch_size: batch size for feeding an array.

    Returns:
        The names of the layers adapted, in model order.
    """
    keras = keras_module()
    import tensorflow as tf

    if isinstance(images, tf.data.Dataset):
        data = images
        if isinstance(data.element_spec, tuple):  # (images, labels) batches
            data = data.map(lambda x, *_: x)
        data = data.map(lambda x: tf.cast(x, "float32"))
    else:
        data = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
        data = data.map(lambda x: tf.cast(x, "float32"))
    adapted = []
    for layer in model.layers:
        if type(layer).__name__ != "Normalization" or layer.input_mean is not None:
            continue
        before = keras.Model(model.inputs, layer.input)
        layer.adapt(data.map(lambda x, f=before: f(x, training=False)))
        adapted.append(layer.name)
    return adapted


def keras_summary(cfg: ModelConfig, model: Any) -> dict:
    """What Keras reports for a built model, in the ``summary --json`` form.

    Shapes, parameter counts and MACs all come from the Keras model (MACs from each
    layer's kernels and output shape, see :func:`keras_macs`), so comparing this with
    the static trace checks the static engine.
    """
    import numpy as np

    def count(weights: list) -> int:
        return int(sum(np.prod(w.shape) for w in weights))

    order = {node.name: i for i, node in enumerate(cfg.nodes)}
    layers = []
    # in the config's order (Keras orders parallel branches its own way)
    for layer in sorted(model.layers, key=lambda lay: order.get(lay.name, -1)):
        if layer.name == INPUT:
            continue
        layers.append(
            {
                "name": layer.name,
                "type": type(layer).__name__,
                "output_shape": list(layer.output.shape[1:]),
                "params": count(layer.weights),
                "macs": keras_macs(layer),
                **({"frozen": True} if not layer.trainable else {}),
            }
        )
    return {
        "name": model.name,
        "input_shape": list(model.input.shape[1:]),
        "output_shape": list(model.output.shape[1:]),
        "total_params": count(model.weights),
        "trainable_params": count(model.trainable_weights),
        "non_trainable_params": count(model.non_trainable_weights),
        "macs": sum(entry["macs"] for entry in layers),
        "layers": layers,
    }
