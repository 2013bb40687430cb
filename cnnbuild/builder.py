"""Config -> compiled Keras model. The only module that imports TensorFlow to build.

TensorFlow is imported lazily, inside :func:`keras_module`, with its C++ start-up
chatter (oneDNN notes, CUDA-driver probes) captured at the file-descriptor level; pass
``verbose=True`` to see it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from typing import Any

from cnnbuild.catalog import REGISTRY
from cnnbuild.config import INPUT, ModelConfig, Node
from cnnbuild.schema.config import LOGIT_LOSSES
from cnnbuild.schema.layers import keras_kwargs
from cnnbuild.schema.types import KERAS_CLASS

_STARTUP_LOG: list[str] = []


@contextmanager
def captured_fds(fds: tuple[int, ...] = (1, 2)):
    """Send what C code writes to ``fds`` into a buffer while the block runs.

    Yields:
        A list that receives the captured text when the block ends.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in fds}
    out: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        try:
            for fd in fds:
                os.dup2(tmp.fileno(), fd)
            yield out
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def keras_module(verbose: bool = False) -> Any:
    """Import TensorFlow and Keras quietly, once.

    Args:
        verbose: print TensorFlow's start-up messages to stderr.

    Returns:
        The ``keras`` module (Keras 3 on the TensorFlow backend).
    """
    if "keras" in sys.modules and "tensorflow" in sys.modules:
        if verbose and _STARTUP_LOG:
            sys.stderr.write(_STARTUP_LOG[0])
        return sys.modules["keras"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    with captured_fds() as log:
        import keras
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # probes CUDA now, while captured
    _STARTUP_LOG[:] = log
    if verbose:
        sys.stderr.write(log[0])
    return keras


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
    """Instantiate the Keras layer of one node."""
    keras = keras_module()
    kwargs = layer_kwargs(node)
    if dtype is not None:
        kwargs["dtype"] = dtype
    return getattr(keras.layers, REGISTRY[node.kind].name)(**kwargs)


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
            float32.
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
    keras.mixed_precision.set_global_policy(policy)
    tensors = {INPUT: keras.Input(shape=cfg.input_shape, name=INPUT)}
    for node in cfg.nodes:
        dtype = "float32" if policy != "float32" and node.name == cfg.output else None
        layer = make_layer(node, dtype)
        ins = [tensors[n] for n in node.inputs]
        tensors[node.name] = layer(ins if REGISTRY[node.kind].merge else ins[0])
    model = keras.Model(tensors[INPUT], tensors[cfg.output], name=cfg.name)
    if compile:
        compile_model(
            model, cfg, lr=lr, steps_per_execution=steps_per_execution, jit_compile=jit_compile
        )
    return model


def make_loss(cfg: ModelConfig) -> Any:
    keras = keras_module()
    name = cfg.compile.loss
    if name in LOGIT_LOSSES:
        cls = getattr(keras.losses, "".join(w.capitalize() for w in name.split("_")))
        return cls(from_logits=cfg.compile.from_logits)
    return keras.losses.get(name)


def make_optimizer(cfg: ModelConfig, lr: Any = None) -> Any:
    keras = keras_module()
    ((name, args),) = cfg.compile.optimizer.items()
    args = dict(args)
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
        metrics=list(cfg.compile.metrics),
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )


def keras_summary(cfg: ModelConfig, model: Any) -> dict:
    """What Keras reports for a built model, in the ``summary --json`` form.

    Shapes and parameter counts come from Keras; MACs from the static engine, whose
    shapes were just checked equal to Keras' (Keras does not count MACs).
    """
    import numpy as np

    from cnnbuild.trace import trace

    static = {r.node.name: r for r in trace(cfg).rows}

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
                "macs": static[layer.name].out.macs if static[layer.name].out else 0,
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
