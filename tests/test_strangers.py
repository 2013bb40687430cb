"""Configs nobody on the team wrote, against the same models built directly in Keras.

Each YAML in ``tests/data/strangers/`` is a well-known model as a stranger writes it from
its source (keras.io, the TensorFlow tutorials, keras.applications), in Keras' idioms:
aliases, no ``compile:``, its own scaling first. Each must pass ``validate --strict``, and
``summary --static`` and cnnbuild's builder must give the layers, parameter counts and
output shapes of the model built here with ``keras.layers`` as the source writes it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cnnbuild.validate import check_file, load_traced

DATA = Path(__file__).parent / "data" / "strangers"


def _mnist_convnet(keras, layers):
    """keras.io "Simple MNIST convnet" (the data scaled outside the model)."""
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ]
    )


def _flowers_tutorial(keras, layers):
    """TensorFlow "Image classification" tutorial, with its augmentation."""
    return keras.Sequential(
        [
            keras.Input(shape=(180, 180, 3)),
            layers.RandomFlip("horizontal"),
            layers.RandomRotation(0.1),
            layers.RandomZoom(0.1),
            layers.Rescaling(1.0 / 255),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Dropout(0.2),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(5, name="outputs"),
        ]
    )


def _xception_small(keras, layers):
    """keras.io "Image classification from scratch": make_model((180, 180, 3), 2)."""
    inputs = keras.Input(shape=(180, 180, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(128, 3, strides=2, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    previous = x
    for size in [256, 512, 728]:
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(size, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(size, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(size, 1, strides=2, padding="same")(previous)
        x = layers.add([x, residual])
        previous = x
    x = layers.SeparableConv2D(1024, 3, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.25)(x)
    outputs = layers.Dense(1, activation=None)(x)
    return keras.Model(inputs, outputs)


def _resnet18_cifar(keras, layers):
    """ResNet-18 for 32x32 inputs with 1x1 projection shortcuts (option B)."""

    def block(x, filters, strides):
        y = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
        y = layers.ReLU()(layers.BatchNormalization()(y))
        y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization()(y)
        if strides != 1:
            x = layers.Conv2D(filters, 1, strides=strides, use_bias=False)(x)
            x = layers.BatchNormalization()(x)
        return layers.ReLU()(layers.Add()([y, x]))

    inputs = keras.Input(shape=(32, 32, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(64, 3, padding="same", use_bias=False)(x)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    for filters, strides in [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1)]:
        x = block(x, filters, strides)
    x = block(block(x, 512, 2), 512, 1)
    x = layers.GlobalAvgPool2D()(x)
    return keras.Model(inputs, layers.Dense(10, activation="softmax")(x))


def _mobilenet_templates(keras, layers):
    """keras.applications.MobileNet itself, with a [-1, 1] Rescaling in front."""
    net = keras.applications.MobileNet(input_shape=(128, 128, 3), weights=None)
    inputs = keras.Input(shape=(128, 128, 3))
    return keras.Model(inputs, net(layers.Rescaling(1 / 127.5, offset=-1)(inputs))), net


def _unet_oxford_pets(keras, layers):
    """keras.io "Image segmentation with a U-Net-like architecture": get_model((160, 160), 3)."""
    inputs = keras.Input(shape=(160, 160, 3))
    x = layers.Conv2D(32, 3, strides=2, padding="same")(inputs)
    x = layers.Activation("relu")(layers.BatchNormalization()(x))
    previous = x
    for filters in [64, 128, 256]:
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(filters, 1, strides=2, padding="same")(previous)
        x = previous = layers.add([x, residual])
    for filters in [256, 128, 64, 32]:
        x = layers.Activation("relu")(x)
        x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.UpSampling2D(2)(x)
        residual = layers.Conv2D(filters, 1, padding="same")(layers.UpSampling2D(2)(previous))
        x = previous = layers.add([x, residual])
    outputs = layers.Conv2D(3, 3, activation="softmax", padding="same")(x)
    return keras.Model(inputs, outputs)


def _dcgan_discriminator(keras, layers):
    """keras.io "DCGAN to generate face images": the discriminator."""
    return keras.Sequential(
        [
            keras.Input(shape=(64, 64, 3)),
            layers.Conv2D(64, kernel_size=4, strides=2, padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Conv2D(128, kernel_size=4, strides=2, padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Conv2D(128, kernel_size=4, strides=2, padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Flatten(),
            layers.Dropout(0.2),
            layers.Dense(1, activation="sigmoid"),
        ]
    )


def _new_layers_mix(keras, layers):
    """The issue 18 layers and aliases, as keras.layers spells them."""
    return keras.Sequential(
        [
            keras.Input(shape=(40, 40, 3)),
            layers.RandomBrightness(0.2),
            layers.CenterCrop(32, 32),
            layers.Rescaling(1.0 / 255),
            layers.GaussianNoise(0.1),
            layers.Convolution2D(16, 3, padding="same", use_bias=False),
            layers.GroupNormalization(groups=4),
            layers.PReLU(shared_axes=[1, 2]),
            layers.AvgPool2D(2),
            layers.SeparableConvolution2D(32, 3, padding="same"),
            layers.ELU(alpha=1.0),
            layers.GaussianDropout(0.1),
            layers.Permute((2, 1, 3)),
            layers.Identity(),
            layers.GlobalMaxPool2D(),
            layers.UnitNormalization(),
            layers.Dense(64, activation="relu", lora_rank=4),
            layers.Dense(10),
            layers.Softmax(),
        ]
    )


def _densenet_cifar(keras, layers):
    """A DenseNet-BC for 32x32 with keras.applications.densenet's conv_block, growth 12."""

    def conv_block(x, growth):
        y = layers.BatchNormalization(epsilon=1.001e-5)(x)
        y = layers.Conv2D(4 * growth, 1, use_bias=False)(layers.Activation("relu")(y))
        y = layers.BatchNormalization(epsilon=1.001e-5)(y)
        y = layers.Conv2D(growth, 3, padding="same", use_bias=False)(layers.Activation("relu")(y))
        return layers.Concatenate()([x, y])

    def transition(x, filters):
        x = layers.Activation("relu")(layers.BatchNormalization(epsilon=1.001e-5)(x))
        x = layers.Conv2D(filters, 1, use_bias=False)(x)
        return layers.AveragePooling2D(2, strides=2)(x)

    inputs = keras.Input(shape=(32, 32, 3))
    x = layers.Conv2D(24, 3, padding="same", use_bias=False)(layers.Rescaling(1 / 255)(inputs))
    for filters in (36, 42, None):
        for _ in range(4):
            x = conv_block(x, 12)
        if filters:
            x = transition(x, filters)
    x = layers.Activation("relu")(layers.BatchNormalization(epsilon=1.001e-5)(x))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10, activation="softmax")(x))


KERAS_MODELS = {
    "densenet_cifar": _densenet_cifar,
    "unet_oxford_pets": _unet_oxford_pets,
    "dcgan_discriminator": _dcgan_discriminator,
    "new_layers_mix": _new_layers_mix,
    "mnist_convnet": _mnist_convnet,
    "flowers_tutorial": _flowers_tutorial,
    "xception_small": _xception_small,
    "resnet18_cifar": _resnet18_cifar,
    "mobilenet_templates": _mobilenet_templates,
}


def test_every_stranger_config_has_a_keras_model():
    assert sorted(p.stem for p in DATA.glob("*.yaml")) == sorted(KERAS_MODELS)


@pytest.mark.parametrize("name", sorted(KERAS_MODELS))
def test_stranger_passes_validate_strict(name):
    _, _, findings = check_file(DATA / f"{name}.yaml")
    assert [f.message for f in findings if f.severity in ("error", "warning")] == []


def _keras_rows(model) -> list[tuple]:
    """(type, output shape, params) of every layer of ``model``, nested models flattened."""
    rows = []
    for layer in model.layers:
        if layer.__class__.__name__ == "InputLayer":
            continue
        if hasattr(layer, "layers") and layer.layers:
            rows.extend(_keras_rows(layer))
            continue
        shape = tuple(layer.output.shape[1:])
        rows.append((layer.__class__.__name__, shape, layer.count_params()))
    return rows


@pytest.mark.parametrize("name", sorted(KERAS_MODELS))
def test_stranger_static_counts_equal_keras(name):
    keras = pytest.importorskip("keras")
    keras.backend.clear_session(free_memory=False)
    built = KERAS_MODELS[name](keras, keras.layers)
    model, inner = built if isinstance(built, tuple) else (built, None)
    _, st = load_traced(DATA / f"{name}.yaml")
    ours = [(row.node.kind, tuple(row.shape), row.out.params) for row in st.rows]
    theirs = _keras_rows(model)
    extra = Counter(ours) - Counter(theirs)
    # The automatic input_scaling of a config that does not scale (keras.io MNIST scales
    # outside the model): a Rescaling with no parameters, the one layer Keras lacks.
    assert all(kind == "Rescaling" and params == 0 for kind, _, params in extra), extra
    assert Counter(theirs) - Counter(ours) == Counter()
    trainable = sum(int(w.shape.num_elements()) for w in model.trainable_weights)
    assert (st.total_params, st.trainable) == (model.count_params(), trainable)
    assert tuple(st.output_shape) == theirs[-1][1]
    if inner is not None:  # keras.applications' own layer names, built by the templates
        names = {layer.name for layer in inner.layers} - {inner.layers[0].name}
        assert names <= {row.node.name for row in st.rows}


@pytest.mark.parametrize("name", sorted(KERAS_MODELS))
def test_stranger_built_by_cnnbuild_equals_keras(name):
    """The builder's model against the one written in Keras: the same layers (class,
    output shape, parameters) and weights count, and Keras' own names where the config
    gives them (keras.applications' MobileNet names through templates)."""
    keras = pytest.importorskip("keras")
    from cnnbuild.builder import build_model

    keras.backend.clear_session(free_memory=False)
    built = KERAS_MODELS[name](keras, keras.layers)
    model, inner = built if isinstance(built, tuple) else (built, None)
    cfg, _ = load_traced(DATA / f"{name}.yaml")
    ours = build_model(cfg, compile=False)
    extra = Counter(_keras_rows(ours)) - Counter(_keras_rows(model))
    assert all(kind == "Rescaling" and params == 0 for kind, _, params in extra), extra
    assert Counter(_keras_rows(model)) - Counter(_keras_rows(ours)) == Counter()
    assert ours.count_params() == model.count_params()
    if inner is not None:
        names = {layer.name for layer in inner.layers} - {inner.layers[0].name}
        assert names <= {layer.name for layer in ours.layers}


# -- the key flows in both precisions -------------------------------------------------

# a head that is not a softmax over classes gets the loss its source trains it with
HEADS = {
    "dcgan_discriminator": "compile: {loss: binary_crossentropy}\n",
    "xception_small": "compile: {loss: binary_crossentropy, from_logits: true}\n",
}
# the augmenting ones (flowers: RandomFlip/Rotation/Zoom; new_layers_mix: RandomBrightness,
# GaussianNoise, GroupNormalization, LoRA), a one-unit head and the plain MNIST convnet; the
# heavier ones (DenseNet, Xception, ResNet-18, MobileNet) are built against Keras above, and
# MobileNetV2 trains in the default precision in test_insight_run's report test: the suite has
# a time budget. unet_oxford_pets has per-pixel labels, which an npz dataset cannot give.
FLOWS = ["dcgan_discriminator", "flowers_tutorial", "mnist_convnet", "new_layers_mix"]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("name", FLOWS)
def test_stranger_trains_reports_exports_and_predicts(name, precision, tmp_path, cli):
    """train -> gradients.json -> report -> export -> predict on a stranger's model (the
    augmenting flowers tutorial included), in float32 and in mixed_bfloat16, which
    --mixed-precision forces on any CPU (TensorFlow emulates it without native bf16):
    the precision is what the test is about, on every machine. 8 images, 1 epoch."""
    from PIL import Image

    cfg, tr = load_traced(DATA / f"{name}.yaml")
    shape, binary = tuple(cfg.input_shape), name in HEADS
    classes = 2 if binary else tr.output_shape[-1]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, *shape), dtype=np.uint8)
    np.savez(
        tmp_path / "data.npz",
        x_train=images[:8], y_train=np.arange(8) % 2,
        x_test=images[8:], y_test=np.arange(4) % 2,
        class_names=np.array([f"c{i}" for i in range(classes)]),
    )  # fmt: skip
    config = tmp_path / f"{name}.yaml"
    config.write_text((DATA / f"{name}.yaml").read_text() + HEADS.get(name, ""))
    run = tmp_path / "run"
    flag = "--mixed-precision" if precision != "float32" else "--no-mixed-precision"
    result = cli(
        "train", config, "--dataset", f"npz:{tmp_path / 'data.npz'}", "--epochs", 1,
        "--batch-size", 4, "--validation-split", 0, "--seed", 1, flag, "--out", run,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["precision_policy"] == precision
    flow = json.loads((run / "gradients.json").read_text())
    norms = [v["output_grad_norm"] for v in flow["epochs"][0]["layers"].values()]
    assert len(norms) == len(cfg.nodes) and all(np.isfinite(norms)), norms
    assert max(norms) > 0
    assert "gradient" in (run / "report.html").read_text(encoding="utf-8").lower()
    out = tmp_path / "exported"
    result = cli("export", run, "--format", "saved_model", "-o", out, "--images", 4)
    assert result.exit_code == 0, result.output
    picture = tmp_path / "picture.png"
    Image.fromarray(images[-1].squeeze() if shape[-1] == 1 else images[-1]).save(picture)
    result = cli("predict", run, picture, "--format", "json", "-k", 1)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["predictions"]
    assert row["top"][0]["class"] in {f"c{i}" for i in range(classes)}, row


# What CPUs without native bf16 run, emulated on whatever CPU runs the suite (case:
# environment, flag, policy). An AVX2-only CPU: in float32, oneDNN's kernels limited to
# AVX2 (ONEDNN_MAX_CPU_ISA, which oneDNN reads); in bfloat16, TensorFlow's own (Eigen)
# kernels, since TensorFlow hands bf16 to oneDNN only on a CPU with AVX-512 or
# AVX-NE-CONVERT (IsDataTypeSupportedByOneDNNOnThisCPU, in its core/util/util.cc), and
# TF_ENABLE_ONEDNN_OPTS=0 gives every op those kernels. A CPU with AVX-512 but no
# avx512_bf16 (Skylake, Cascade Lake): oneDNN emulates bf16 on avx512_core.
NO_NATIVE_BF16 = {
    "avx2-float32": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, "--no-mixed-precision", "float32"),
    "avx2-bf16": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, "--mixed-precision", "mixed_bfloat16"),
    "avx512-bf16": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, "--mixed-precision", "mixed_bfloat16"),
}


def _only_these_kernel_settings(monkeypatch, env: dict[str, str]) -> None:
    """The child processes get ``env`` and none of oneDNN's or TensorFlow's kernel
    settings that the suite's own environment may carry."""
    import os

    for name in list(os.environ):
        if name.startswith(("ONEDNN_", "DNNL_")) or name == "TF_ENABLE_ONEDNN_OPTS":
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def _flowers_data(folder: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 180, 180, 3), dtype=np.uint8)
    np.savez(
        folder / "data.npz",
        x_train=images[:8], y_train=np.arange(8) % 2,
        x_test=images[8:], y_test=np.arange(4) % 2,
        class_names=np.array([f"c{i}" for i in range(5)]),
    )  # fmt: skip
    Image.fromarray(images[-1]).save(folder / "picture.png")
    return folder / "data.npz"


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(NO_NATIVE_BF16))
def test_flowers_trains_reports_and_exports_as_a_cpu_without_native_bf16_runs_it(
    case, tmp_path, monkeypatch
):
    """The TF flowers tutorial's model (RandomFlip, RandomRotation, RandomZoom) trains,
    writes its gradient flow and report, exports and predicts in fresh processes running
    the kernels an AVX2-only CPU runs (float32 and forced mixed_bfloat16) and those an
    AVX-512 CPU without bf16 instructions runs (forced mixed_bfloat16)."""
    from cnnbuild.precision import cpu_flags
    from tests.conftest import run_process

    if case == "avx512-bf16" and "avx512f" not in cpu_flags():
        pytest.skip("no AVX-512 here: TensorFlow runs bf16 on its own kernels (avx2-bf16)")
    env, flag, precision = NO_NATIVE_BF16[case]
    _only_these_kernel_settings(monkeypatch, {**env, "ONEDNN_VERBOSE": "1"})
    data, run = _flowers_data(tmp_path), tmp_path / "run"
    done = run_process(
        "train", DATA / "flowers_tutorial.yaml", "--dataset", f"npz:{data}", "--epochs", 1,
        "--batch-size", 4, "--validation-split", 0, "--seed", 1, flag, "--out", run,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # the emulation took: oneDNN's own log says what ran (its convolutions, or none)
    convolutions = [
        line for line in done.stdout.splitlines() if ",exec," in line and "convolution" in line
    ]
    if case == "avx2-float32":
        assert any("avx2" in line for line in convolutions), convolutions[:3]
        assert not any("avx512" in line or "amx" in line for line in convolutions)
    elif case == "avx2-bf16":
        assert not convolutions, convolutions[:3]  # TensorFlow's own kernels ran them
    else:  # bf16 emulated on avx512_core: no avx512_core_bf16, no AMX
        assert convolutions and all("avx512_core" in line for line in convolutions)
        assert not any("avx512_core_bf16" in line or "amx" in line for line in convolutions)
    monkeypatch.delenv("ONEDNN_VERBOSE")
    assert json.loads((run / "metrics.json").read_text())["precision_policy"] == precision
    flow = json.loads((run / "gradients.json").read_text())
    norms = [v["output_grad_norm"] for v in flow["epochs"][0]["layers"].values()]
    assert all(np.isfinite(norms)) and max(norms) > 0, norms
    assert "gradient" in (run / "report.html").read_text(encoding="utf-8").lower()
    done = run_process("export", run, "--format", "saved_model", "-o", tmp_path / "exported")
    assert done.returncode == 0, done.stdout + done.stderr
    done = run_process("predict", run, tmp_path / "picture.png", "--format", "json", "-k", 1)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["predictions"][0]["top"][0]["class"].startswith("c")


@pytest.mark.slow
def test_a_kernel_that_fails_in_training_is_one_message_not_a_traceback(tmp_path, monkeypatch):
    """On a CPU with AVX-512 TensorFlow hands bf16 convolutions to oneDNN; limited to AVX2
    (ONEDNN_MAX_CPU_ISA), oneDNN has no such kernel and the step fails. That is one error
    line naming the layer's node and --no-mixed-precision, exit 1, the run marked failed."""
    from cnnbuild.precision import cpu_flags
    from tests.conftest import run_process

    if "avx512f" not in cpu_flags():
        pytest.skip("no AVX-512 here: TensorFlow runs bf16 on its own kernels, which work")
    _only_these_kernel_settings(monkeypatch, {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    data, run = _flowers_data(tmp_path), tmp_path / "run"
    done = run_process(
        "train", DATA / "flowers_tutorial.yaml", "--dataset", f"npz:{data}", "--epochs", 1,
        "--batch-size", 4, "--validation-split", 0, "--mixed-precision", "--out", run,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert "TensorFlow failed during training at node flowers" in line, line
    assert "conv2d" in line and "--no-mixed-precision" in line and "no epoch had finished" in line
    assert json.loads((run / "state.json").read_text())["status"] == "failed"
