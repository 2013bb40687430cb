"""Every config against Keras, and the zoo against keras.applications.

Each model is built once per test run (the 224x224 ones are large) and shared. The
Keras side of every comparison is computed from the Keras model alone: shapes and
weights from its layers, MACs from each layer's kernels and output shape
(:func:`cnnbuild.builder.keras_macs`), never copied from the static engine.
"""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import pytest

from cnnbuild.validate import check_file, load_traced
from tests.conftest import CONFIGS

keras = pytest.importorskip("keras")

ALL = sorted(CONFIGS.rglob("*.yaml"))
ZOO = {
    "vgg16": "VGG16",
    "resnet50": "ResNet50",
    "mobilenet_v2": "MobileNetV2",
    "efficientnet_b0": "EfficientNetB0",
}
EXPECTED = {  # what Keras reports for keras.applications.X(weights=None)
    "vgg16": (138_357_544, 0),
    "resnet50": (25_636_712, 53_120),
    "mobilenet_v2": (3_538_984, 34_112),
    "efficientnet_b0": (5_330_571, 42_023),
}


@functools.cache
def ours(path):
    from cnnbuild.builder import build_model, keras_summary

    cfg, tr = load_traced(path)
    model = build_model(cfg, compile=False)
    return model, keras_summary(cfg, model), tr.to_dict()


@functools.cache
def application(name):
    return getattr(keras.applications, ZOO[name])(weights=None)


def _count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_static_engine_equals_keras_for_every_config(path):
    _, keras_json, static_json = ours(path)
    assert static_json == keras_json


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_matches_keras_applications(name):
    model, summary, _ = ours(CONFIGS / "zoo" / f"{name}.yaml")
    ref = application(name)
    total, frozen = EXPECTED[name]
    assert (summary["total_params"], summary["non_trainable_params"]) == (total, frozen)
    assert (_count(ref.weights), _count(ref.non_trainable_weights)) == (total, frozen)
    assert summary["trainable_params"] == _count(ref.trainable_weights)

    def layers_with_weights(m):
        return Counter(
            (type(layer).__name__, tuple(layer.output.shape[1:]), _count(layer.weights))
            for layer in m.layers
            if layer.weights
        )

    assert layers_with_weights(model) == layers_with_weights(ref)

    def stages(m):  # every change of spatial size, in order: the per-stage output shapes
        out, last = [], None
        for layer in m.layers:
            shape = tuple(layer.output.shape[1:])
            if len(shape) == 3 and shape[:2] != last:
                out.append(shape[:2])
                last = shape[:2]
        return out

    assert stages(model) == stages(ref)
    merges = [
        tuple(layer.output.shape[1:]) for layer in model.layers if type(layer).__name__ == "Add"
    ]
    assert merges == [
        tuple(layer.output.shape[1:]) for layer in ref.layers if type(layer).__name__ == "Add"
    ]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_macs_equal_keras_applications(name):
    """MACs counted on the real keras.applications model, layer by layer, from its own
    kernels: the static engine's figure for our config must be the same."""
    from cnnbuild.builder import keras_macs

    _, _, static = ours(CONFIGS / "zoo" / f"{name}.yaml")
    assert static["macs"] == sum(keras_macs(layer) for layer in application(name).layers)


@pytest.mark.parametrize("path", sorted((CONFIGS / "zoo").glob("*.yaml")), ids=lambda p: p.stem)
def test_zoo_validates_statically_and_clean(path):
    _, _, findings = check_file(path)
    assert [f for f in findings if f.severity in ("error", "warning")] == []


def test_cifar_zoo_sizes():
    _, resnet20, _ = ours(CONFIGS / "zoo" / "resnet20.yaml")
    assert 0.26e6 < resnet20["total_params"] < 0.28e6
    stage_shapes = [layer["output_shape"] for layer in resnet20["layers"] if layer["type"] == "Add"]
    assert stage_shapes[0] == [32, 32, 16] and stage_shapes[3] == [16, 16, 32]
    assert stage_shapes[-1] == [8, 8, 64]
    _, resnet9, _ = ours(CONFIGS / "zoo" / "resnet9.yaml")
    assert resnet9["output_shape"] == [10]
