"""Every loss the catalog offers, through every place that reads it: ``trace --grads``, the
gradient-flow callback of a one-epoch train, and the labels the trainer feeds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cnnbuild.catalog import LOSS_NAMES, loss_spec, one_hot_classes
from cnnbuild.validate import load_config

CLASSES = 3
READS_LOGITS = (
    "sparse_categorical_crossentropy",
    "categorical_crossentropy",
    "binary_crossentropy",
)

TINY = """
name: tiny_{loss}
input: [8, 8, 1]
layers:
  - Conv2D: {{filters: 4, kernel_size: 3, activation: relu}}
  - Flatten
  - Dense: {{units: {units}, activation: {activation}}}
compile:
  optimizer: adam
  loss: {loss}
train:
  dataset: {{npz: {npz}}}
  epochs: 1
  batch_size: 16
  validation_split: 0.25
"""


def _classes(loss: str) -> int:
    return 2 if loss_spec(loss).labels == "binary" else CLASSES


def _tiny(write, tmp_path, loss: str):
    """A tiny classifier for ``loss`` (a sigmoid unit for a binary loss, else a softmax
    over the classes) and an npz dataset of 8x8 grayscale images it fits."""
    classes = _classes(loss)
    rng = np.random.default_rng(0)
    npz = tmp_path / "tiny.npz"
    np.savez(
        npz,
        x_train=rng.integers(0, 256, (64, 8, 8), dtype=np.uint8),
        y_train=np.arange(64) % classes,
        x_test=rng.integers(0, 256, (12, 8, 8), dtype=np.uint8),
        y_test=np.arange(12) % classes,
    )
    units, activation = (1, "sigmoid") if classes == 2 else (classes, "softmax")
    text = TINY.format(loss=loss, units=units, activation=activation, npz=npz)
    return write(text, f"{loss}.yaml")


def _finite_norms(layers: dict) -> list[float]:
    norms = [entry["output_grad_norm"] for entry in layers.values()]
    norms += [v for entry in layers.values() for v in entry["weight_grad_norms"].values()]
    assert norms and all(math.isfinite(n) for n in norms), layers
    return norms


def test_the_catalog_offers_fourteen_losses():
    assert len(LOSS_NAMES) == 14


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_labels_are_the_trainers(loss, write, tmp_path):
    """``trace --grads`` and the callback feed a loss exactly what the trainer's pipeline
    feeds it for the same class ids: values, shape and dtype."""
    from cnnbuild.data.pipeline import make_pipeline
    from cnnbuild.insight.grads import labels_for

    cfg = load_config(_tiny(write, tmp_path, loss))
    classes = _classes(loss)
    ids = (np.arange(10) % classes).astype("int32")
    x = np.zeros((10, 8, 8, 1), dtype="uint8")
    pipeline = make_pipeline(
        x, ids, batch_size=10, training=False, one_hot=one_hot_classes(loss, classes)
    )
    (_, fed), *_ = list(pipeline)
    ours = labels_for(cfg, ids, 1 if classes == 2 else classes)
    assert ours.dtype == fed.dtype.as_numpy_dtype
    assert ours.shape == tuple(fed.shape)
    np.testing.assert_array_equal(ours, fed.numpy())


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_every_loss_through_trace_grads_and_a_one_epoch_train(loss, cli, write, tmp_path):
    path = _tiny(write, tmp_path, loss)
    result = cli("trace", path, "--grads", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["grads"]["objective"] == f"loss {loss}"
    assert math.isfinite(data["grads"]["value"])
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert all(v > 0 for v in _finite_norms(layers)[-2:])  # the output layer's weights
    dense = layers["dense"]
    assert dense["output_grad_norm"] > 0
    # Keras' cross-entropies read the logits cached under the softmax/sigmoid, so the
    # output itself gets no gradient: the row holds the gradient w.r.t. those logits
    assert dense["output_grad_of"] == ("logits" if loss in READS_LOGITS else "output")

    run = tmp_path / "run"
    result = cli("train", path, "--out", run, "--seed", 1)
    assert result.exit_code == 0, result.output
    flow = json.loads((run / "gradients.json").read_text())
    assert flow["mode"] == "training"
    (epoch,) = flow["epochs"]
    assert math.isfinite(epoch["loss"])
    assert all(v > 0 for v in _finite_norms(epoch["layers"])[-2:])
    assert epoch["layers"]["dense"]["output_grad_norm"] > 0
