"""A real forward pass through every layer (the seed document's debug-model trick)."""

from __future__ import annotations

from cnnbuild.config import ModelConfig

FREE_SIZE = 64  # stands in for a free (null) height or width


def forward_stats(cfg: ModelConfig, seed: int = 0, batch: int = 2) -> dict[str, dict]:
    """Build the model, run a random batch, and describe every layer's real output.

    Returns:
        Per layer name: ``{"shape", "mean", "std", "zeros"}`` (shape without the batch axis,
        ``zeros`` the fraction of exact zeros).
    """
    import numpy as np

    from cnnbuild.builder import build_model, keras_module

    keras = keras_module()
    model = build_model(cfg, compile=False)
    layers = [layer for layer in model.layers if layer.name != "input"]
    debug = keras.Model(model.input, [layer.output for layer in layers])
    shape = tuple(FREE_SIZE if d is None else d for d in cfg.input_shape)
    x = np.random.default_rng(seed).uniform(0, 1, (batch, *shape)).astype("float32")
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
    return stats
