"""`cnnbuild import keras.applications.NAME --weights imagenet`: a pretrained backbone with
a new head, ``init:``, ``freeze:`` and the application's own preprocessing as layers.

Nothing is downloaded: the applications are built with ``weights=None`` (random weights)
and their weights copied into the cnnbuild model by layer name, which is what ``init:``
does with Keras' imagenet file.
"""

from __future__ import annotations

import functools
import importlib

import numpy as np
import pytest
import yaml

from cnnbuild.config import TOP_KEYS
from cnnbuild.importer import APPLICATIONS, PREPROCESSING, pretrained_text
from cnnbuild.validate import load_traced
from tests.conftest import run_cli

keras = pytest.importorskip("keras")


def buildable(text: str, path):
    """``text`` written to ``path``, less the top-level keys this checkout's config does not
    know yet (``init:`` and ``freeze:`` come with the fine-tuning config work; once they are
    known nothing is removed and ``validate`` checks them too)."""
    data = yaml.safe_load(text)
    kept = [
        line
        for line in text.splitlines()
        if line.split(":", 1)[0] in TOP_KEYS or line.startswith((" ", "#", "-"))
    ]
    path.write_text("\n".join(kept) + "\n")
    assert set(data) - set(TOP_KEYS) <= {"init", "freeze"}
    return path


@functools.cache
def backbone(name: str, shape: tuple) -> object:
    """``keras.applications.NAME`` without its top, with its average pooling, in float32
    and with Keras' automatic names counted from zero (as the import builds it)."""
    from cnnbuild.builder import keras_module

    keras_module()
    keras.mixed_precision.set_global_policy("float32")
    keras.backend.clear_session(free_memory=False)
    factory = getattr(keras.applications, name)
    return factory(weights=None, include_top=False, input_shape=shape, pooling="avg")


def test_mobilenetv2_import_has_backbone_head_init_freeze_and_preprocessing(tmp_path):
    result = run_cli(
        "import", "keras.applications.MobileNetV2", "--weights", "imagenet", "--classes", "5",
        "--input-shape", "96,96,3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = result.stdout
    data = yaml.safe_load(text)
    assert data["init"] == {"from": "keras.applications.MobileNetV2", "weights": "imagenet"}
    assert data["freeze"] == {"until": "out_relu"}
    assert "input_scaling" not in data  # the model scales: its preprocess_input is inside
    assert data["layers"][0] == {
        "Rescaling": {"scale": 2 / 255, "offset": -1.0, "name": PREPROCESSING}
    }
    assert data["layers"][-2:] == [
        "GlobalAveragePooling2D",
        {"Dense": {"units": 5, "activation": "softmax", "name": "head"}},
    ]
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert comments[1].startswith("# init: Keras' imagenet weights")
    assert "keras.applications.mobilenet_v2.preprocess_input as layer" in comments[3]
    path = buildable(text, tmp_path / "built.yaml")
    result = run_cli("validate", "--strict", path)
    assert result.exit_code == 0, result.output


def test_backbone_layer_names_are_the_applications_own(tmp_path):
    from cnnbuild.builder import build_model

    text, done = pretrained_text("MobileNetV2", "imagenet", (32, 32, 3), classes=3)
    cfg, _ = load_traced(buildable(text, tmp_path / "m.yaml"))
    model = build_model(cfg, compile=False)
    ours = {layer.name for layer in model.layers}
    theirs = {layer.name for layer in backbone("MobileNetV2", (32, 32, 3)).layers}
    assert ours - theirs == {"input", PREPROCESSING, done.head}
    assert theirs - ours == {"input_layer"}  # cnnbuild's input is `input`
    assert model.get_layer(done.head).units == 3


@pytest.mark.parametrize("name", ["MobileNetV2", "DenseNet121", "VGG16"])
def test_on_raw_pixels_the_import_equals_the_application_on_preprocess_input(name, tmp_path):
    """Modes tf (MobileNetV2: x/127.5 - 1), torch (DenseNet121: x/255, then the ImageNet
    mean and std per channel) and caffe (VGG16: RGB -> BGR, minus the ImageNet mean), with
    the application's (random) weights loaded by name."""
    from cnnbuild.builder import build_model

    shape = (32, 32, 3)
    text, done = pretrained_text(name, "imagenet", shape, classes=4)
    cfg, _ = load_traced(buildable(text, tmp_path / "m.yaml"))
    model = build_model(cfg, compile=False)
    original = backbone(name, shape)
    for layer in original.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    pixels = np.random.default_rng(0).integers(0, 256, (2, *shape)).astype("float32")
    module = importlib.import_module(getattr(keras.applications, name).__module__)
    preprocessed = module.preprocess_input(pixels.copy())
    # Where the preprocessing shows (the first weighted layer: values of order 1), and at
    # the end, relative to the output (random weights shrink it by orders of magnitude).
    first = next(layer.name for layer in original.layers if layer.weights)
    for layer, expect_scale in ((first, 1.0), (None, None)):
        mine = model.get_layer(layer).output if layer else model.get_layer(done.head).input
        theirs = original.get_layer(layer).output if layer else original.output
        expected = np.asarray(keras.Model(original.input, theirs)(preprocessed, training=False))
        got = np.asarray(keras.Model(model.input, mine)(pixels, training=False))
        scale = expect_scale or float(np.max(np.abs(expected)))
        assert float(np.max(np.abs(expected))) > 0.1 * scale > 0, layer  # a real signal
        assert float(np.max(np.abs(got - expected))) < 1e-4 * scale, layer


@pytest.mark.parametrize("name", ["MobileNetV2", "ResNet50V2", "EfficientNetB0", "DenseNet121"])
def test_standard_applications_import_with_no_warning(name, tmp_path):
    """At ImageNet's 224x224 (at 32x32 lint rightly says the late layers see 1x1 maps)."""
    text, _ = pretrained_text(name, "imagenet", (224, 224, 3), classes=5)
    result = run_cli("validate", "--strict", buildable(text, tmp_path / "m.yaml"))
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output


def test_efficientnet_is_built_as_keras_builds_it_for_imagenet_weights(tmp_path):
    """EfficientNet scales inside the network (its preprocess_input is the identity), and
    for imagenet weights Keras adds a Rescaling by 1/sqrt(std) after the stem's
    Normalization: the import equals the weights=None application with that step added."""
    from cnnbuild.builder import build_model

    shape = (32, 32, 3)
    text, done = pretrained_text("EfficientNetB0", "imagenet", shape, classes=2)
    assert done.preprocessing == [] and "identity" in done.notes[0]
    assert "input_scaling" not in yaml.safe_load(text)
    cfg, _ = load_traced(buildable(text, tmp_path / "e.yaml"))
    model = build_model(cfg, compile=False)
    original = backbone("EfficientNetB0", shape)
    rng = np.random.default_rng(1)
    for layer in original.layers:
        if layer.weights:
            weights = layer.get_weights()
            if layer.name == "normalization":  # ImageNet-like statistics instead of 0 and 1
                weights[:2] = [rng.uniform(0.4, 0.5, 3), rng.uniform(0.04, 0.06, 3)]
                layer.set_weights(weights)
            model.get_layer(layer.name).set_weights(weights)
    module = importlib.import_module(keras.applications.EfficientNetB0.__module__)
    std = np.asarray(module.IMAGENET_STDDEV_RGB, dtype="float32")
    pixels = rng.integers(0, 256, (2, *shape)).astype("float32")
    stem = keras.Model(original.input, original.get_layer("normalization").output)
    tail = keras.Model(original.get_layer("stem_conv_pad").input, original.output)
    expected = np.asarray(tail(np.asarray(stem(pixels)) / np.sqrt(std), training=False))
    got = np.asarray(keras.Model(model.input, model.get_layer(done.head).input)(pixels))
    scale = float(np.max(np.abs(expected)))
    assert scale > 0 and float(np.max(np.abs(got - expected))) < 1e-4 * scale


def test_caffe_mode_is_written_with_layers_that_move_data(tmp_path):
    """VGG16's preprocess_input subtracts the mean and flips RGB to BGR: a Rescaling, then
    Permute, one Cropping2D per channel, Concatenate and Permute back (exactness: above)."""
    text, done = pretrained_text("VGG16", "imagenet", (64, 64, 3), classes=2)
    data = yaml.safe_load(text)
    assert "input_scaling" not in data
    assert [next(iter(item)) for item in done.preprocessing] == [
        "Rescaling", "Permute", "Parallel", "Permute",
    ]  # fmt: skip
    assert data["layers"][0]["Rescaling"]["offset"] == [-123.68, -116.779, -103.939]
    assert "RGB -> BGR" in done.notes[0] and "exact" in done.notes[0]
    result = run_cli("validate", "--strict", buildable(text, tmp_path / "vgg.yaml"))
    assert result.exit_code == 0, result.output


def test_no_preprocessing_gives_the_bare_network():
    result = run_cli(
        "import", "keras.applications.MobileNetV2", "--weights", "imagenet", "--classes", "2",
        "--input-shape", "32,32,3", "--no-preprocessing",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.stdout)
    assert data["input_scaling"] == "none" and data["init"]["weights"] == "imagenet"
    assert data["layers"][0]["Conv2D"]["name"] == "Conv1"  # the network's own first layer
    assert "# no preprocessing (--no-preprocessing)" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["x.keras", "--weights", "imagenet"], "--weights is for keras.applications.NAME"),
        ([f"{APPLICATIONS}MobileNetV2", "--weights", "cifar"], "--weights takes imagenet"),
        (
            [f"{APPLICATIONS}MobileNetV2", "--weights", "imagenet", "--input-shape", "32,32,1"],
            "--weights imagenet takes 3 channels (RGB); received --input-shape 32,32,1",
        ),
    ],
)
def test_weights_refused_where_they_do_not_apply(args, message):
    result = run_cli("import", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
