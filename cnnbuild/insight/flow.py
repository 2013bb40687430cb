"""Gradient flow during training: per-layer gradient norms on one fixed batch at the end
of every epoch, written to ``gradients.json`` in the run directory, with plain-words
warnings (once each) when gradients vanish or explode or a ReLU layer is mostly dead.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from cnnbuild.config import ModelConfig
from cnnbuild.io import write_json

GRADIENTS = "gradients.json"
VANISHING = 1e-7
EXPLODING = 1e3
DEAD = 0.9


def fixed_batch(x: np.ndarray, y: np.ndarray, size: int):
    """The batch the flow is measured on: the first ``size`` training images (a training
    batch: what one optimizer step averages its gradient over)."""
    return np.asarray(x[:size], dtype="float32"), np.asarray(y[:size])


def problems(layers: dict[str, dict]) -> dict[str, list[str]]:
    """Layers whose gradients vanish or explode, and ReLU layers that are mostly dead.

    Args:
        layers: one epoch's ``{name: {"weight_grad_norms", "dead_fraction", ...}}``.

    Returns:
        ``{"vanishing": [...], "exploding": [...], "dead": [...]}`` (layer names).
    """
    found: dict[str, list[str]] = {"vanishing": [], "exploding": [], "dead": []}
    for name, entry in layers.items():
        norms = list(entry["weight_grad_norms"].values())
        if norms and all(n < VANISHING for n in norms):
            found["vanishing"].append(name)
        if any(not math.isfinite(n) or n > EXPLODING for n in norms):
            found["exploding"].append(name)
        if entry["dead_fraction"] is not None and entry["dead_fraction"] > DEAD:
            found["dead"].append(name)
    return found


WORDS = {
    "vanishing": (
        f"gradients vanish (every weight gradient norm below {VANISHING:g}) in {{layers}}: "
        "those layers have almost stopped learning; check the initialisation, the "
        "activations, or add BatchNormalization or a residual path"
    ),
    "exploding": (
        f"gradients explode (a weight gradient norm above {EXPLODING:g} or not finite) in "
        "{layers}: lower the learning rate, or add BatchNormalization or gradient clipping"
    ),
    "dead": (
        f"more than {DEAD:.0%} of the ReLU units are dead (zero for every image of the "
        "fixed batch) in {layers}: lower the learning rate, or try leaky_relu or gelu"
    ),
}


def _start_record(path: Path, cfg: ModelConfig, batch: int, what: str, initial_epoch: int):
    """A new ``gradients.json`` record; a resumed run keeps its earlier epochs' records."""
    record: dict[str, Any] = {
        "batch": batch,
        "objective": what,
        "mode": "training",
        "thresholds": {"vanishing": VANISHING, "exploding": EXPLODING, "dead": DEAD},
        "layers": [node.name for node in cfg.nodes],
        "epochs": [],
        "warnings": [],
    }
    if initial_epoch and path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            record["epochs"] = [e for e in old["epochs"] if e["epoch"] <= initial_epoch]
            record["warnings"] = list(old.get("warnings", []))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return record


def _warn(record: dict, layers: dict, epoch: int, warned: set, console: Console) -> None:
    """Each kind of problem once per run: into the record and onto the console."""
    for kind, names in problems(layers).items():
        if names and kind not in warned:
            warned.add(kind)
            text = WORDS[kind].format(layers=", ".join(names))
            record["warnings"].append({"epoch": epoch, "kind": kind, "text": text})
            console.print(f"warning: epoch {epoch}: {text}", highlight=False, soft_wrap=True)


def gradient_flow(
    keras: Any,
    cfg: ModelConfig,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    run_dir: Path,
    console: Console,
    batch_size: int,
    initial_epoch: int = 0,
) -> Any:
    """A Keras callback that records the gradient flow into ``run_dir/gradients.json``.

    The norms are taken in training mode, as the optimizer sees the model; the model's
    state (BatchNormalization's moving statistics, Dropout's seed) is left as it was. An
    output layer whose loss reads its logits records the gradient with respect to them
    (``output_grad_of``: ``logits``).

    Args:
        keras: the keras module.
        cfg: the config the model was built from (layer names and wiring).
        x: training images (raw pixels); the first ``batch_size`` are used.
        y: their integer labels.
        num_classes: classes of the dataset (for one-hot losses).
        run_dir: the run directory.
        console: where warnings go.
        batch_size: the training batch (per replica): the flow's batch is one such batch,
            so the norms are those of one optimizer step's gradient and measuring costs
            about one training step an epoch.
        initial_epoch: epochs already done (a resumed run keeps their records).
    """
    from cnnbuild.insight.grads import compiled_norms, labels_for, objective_fn

    xb, yb = fixed_batch(x, y, batch_size)
    labels = labels_for(cfg, yb, num_classes)
    objective, what = objective_fn(cfg, classifier=True, seed=0)
    path = Path(run_dir) / GRADIENTS
    record = _start_record(path, cfg, len(xb), what, initial_epoch)
    warned = {w["kind"] for w in record["warnings"]}
    measure: list[Any] = []  # traced on first use, once the model exists

    class GradientFlow(keras.callbacks.Callback):
        """Per-layer gradient norms on one fixed batch at the end of each epoch."""

        def on_epoch_end(self, epoch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                return
            start = time.perf_counter()
            if not measure:
                measure.append(compiled_norms(self.model, cfg, objective))
            value, rows = measure[0](xb, labels)
            layers = {
                r.name: {
                    "output_grad_norm": r.output_grad_norm,
                    "output_grad_of": r.grad_of,
                    "weight_grad_norms": r.weight_grad_norms,
                    "dead_fraction": r.dead_fraction,
                }
                for r in rows
            }
            record["epochs"].append(
                {
                    "epoch": epoch + 1,
                    "loss": value,
                    "seconds": round(time.perf_counter() - start, 4),
                    "layers": layers,
                }
            )
            _warn(record, layers, epoch + 1, warned, console)
            write_json(path, record)

    return GradientFlow()
