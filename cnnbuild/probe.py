"""A real forward pass through every layer (the seed document's debug-model trick), on
the inputs the model takes."""

from __future__ import annotations

from typing import Any

from cnnbuild.catalog import scales_input
from cnnbuild.config import ModelConfig

FREE_SIZE = 64  # stands in for a free (null) height or width


def random_pixels(input_shape: tuple, seed: int, batch: int) -> Any:
    """A seeded float32 batch of raw pixels, uniform integers 0..255, of ``input_shape``
    (a free size is :data:`FREE_SIZE`): what ``train`` and ``predict`` feed a model."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (batch, *(FREE_SIZE if d is None else d for d in input_shape))
    return rng.integers(0, 256, shape).astype("float32")


def random_input(cfg: ModelConfig, seed: int, batch: int) -> tuple[Any, str]:
    """A seeded batch of what the model takes, and the words that say what it is.

    ``train`` and ``predict`` feed every model raw pixels, uniform integers 0..255 as
    float32, whatever its scaling (its ``input_scaling`` node, its own leading
    ``Rescaling`` or ``Normalization``, or none at all), so this feeds the same; a model
    with no pixel scaling is said so in the words (lint's ``raw-pixels`` warns of it).

    Returns:
        ``(x, words)``: float32 ``(batch, *input)`` (a free size is :data:`FREE_SIZE`).
    """
    x = random_pixels(cfg.input_shape, seed, batch)
    if scales_input(node.kind for node in cfg.nodes):
        return x, "random pixels (uniform integers 0..255, as train and predict feed them)"
    return x, (
        "random pixels (uniform integers 0..255, as train and predict feed them; "
        "the model has no pixel scaling of its own)"
    )


def forward_stats(cfg: ModelConfig, seed: int = 0, batch: int = 2) -> tuple[dict[str, dict], str]:
    """Build the model, run a random batch of what it takes, and describe every layer's
    real output (inference mode).

    Returns:
        Per layer name: ``{"shape", "mean", "std", "zeros"}`` (shape without the batch axis,
        ``zeros`` the fraction of exact zeros), and the words saying what was fed (see
        :func:`random_input`).
    """
    import numpy as np

    from cnnbuild.builder import build_model, keras_module

    keras = keras_module()
    model = build_model(cfg, compile=False)
    layers = [layer for layer in model.layers if layer.name != "input"]
    debug = keras.Model(model.input, [layer.output for layer in layers])
    x, words = random_input(cfg, seed, batch)
    outs = debug(x, training=False)
    stats = {}
    for layer, out in zip(layers, outs, strict=True):
        arr = np.asarray(out, dtype="float64")
        stats[layer.name] = {
            "shape": list(arr.shape[1:]),
            "mean": float(arr.mean()),
            "std": float(arr.std()),
            "zeros": float((arr == 0).mean()),
        }
    return stats, f"batch of {batch}: {words}; inference mode; seed {seed}"
