"""The backward pass made visible (cnnbuild/insight/grads.py): ``trace --grads`` against
gradients taken by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnbuild.insight.grads import layer_grads, objective_fn
from cnnbuild.validate import load_config

POOL = """
name: pools
input: [16, 16, 3]
layers:
  - Conv2D: {{filters: 8, kernel_size: 3, padding: same}}
  - {pool}: {{pool_size: 2}}
"""


def _hand(cfg, seed=0):
    """Model, batch and the gradients of the random-direction objective, by hand."""
    import tensorflow as tf

    from cnnbuild.builder import build_model, keras_module

    keras = keras_module()
    keras.utils.set_random_seed(seed)
    model = build_model(cfg, compile=False)
    x = np.random.default_rng(seed).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    objective, _ = objective_fn(cfg, classifier=False, seed=seed)
    conv, pool = model.get_layer("conv2d"), model.layers[-1]
    with tf.GradientTape(persistent=True) as tape:
        scaled = model.get_layer("input_scaling")(x)
        conv_out = conv(scaled)
        tape.watch(conv_out)
        value = objective(pool(conv_out), None)
    return (
        model,
        x,
        {
            "conv_out": tape.gradient(value, conv_out).numpy(),
            "bias": tape.gradient(value, conv.bias).numpy(),
        },
    )


@pytest.mark.parametrize("pool, zero", [("MaxPooling2D", 0.75), ("AveragePooling2D", 0.0)])
def test_pooling_input_gradient_zero_fraction(write, pool, zero):
    cfg = load_config(write(POOL.format(pool=pool)))
    model, x, hand = _hand(cfg)
    by_hand = float(np.mean(hand["conv_out"] == 0))
    assert by_hand == pytest.approx(zero, abs=0.01)
    objective, _ = objective_fn(cfg, classifier=False, seed=0)
    _, rows = layer_grads(model, cfg, x, None, objective)
    pooled = rows[-1]
    assert pooled.kind == pool
    assert pooled.input_grad_zero_fraction == pytest.approx(by_hand, abs=1e-9)


def test_bias_gradient_is_the_output_gradient_summed_over_batch_and_positions(write):
    cfg = load_config(write(POOL.format(pool="AveragePooling2D")))
    model, x, hand = _hand(cfg)
    summed = hand["conv_out"].sum(axis=(0, 1, 2))
    np.testing.assert_allclose(hand["bias"], summed, rtol=1e-4, atol=1e-6)
    objective, _ = objective_fn(cfg, classifier=False, seed=0)
    _, rows = layer_grads(model, cfg, x, None, objective)
    conv = next(r for r in rows if r.name == "conv2d")
    assert conv.weight_grad_norms["bias"] == pytest.approx(np.linalg.norm(summed), rel=1e-4)
    assert conv.output_grad_norm == pytest.approx(np.linalg.norm(hand["conv_out"]), rel=1e-4)


def test_trace_grads_seed_shape_watch_shows_winner_only_pools(cli):
    result = cli("trace", "configs/seed_shape_watch.yaml", "--grads", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    pools = [layer for layer in data["layers"] if layer["type"] == "MaxPooling2D"]
    assert len(pools) == 2
    for layer in pools:
        assert layer["input_grad_zero_fraction"] == pytest.approx(0.75, abs=0.01)
        assert layer["dead_fraction"] is None
        assert layer["weight_grad_norms"] == {}
    conv = next(layer for layer in data["layers"] if layer["type"] == "Conv2D")
    assert set(conv["weight_grad_norms"]) == {"kernel", "bias"}
    assert 0.0 <= conv["dead_fraction"] <= 1.0
    text = cli("trace", "configs/seed_shape_watch.yaml", "--grads")
    assert text.exit_code == 0
    assert text.stdout.count("only the winner gets the gradient") == 2


def test_trace_grads_same_seed_same_numbers_and_average_pool_shares(cli, write):
    path = write(POOL.format(pool="AveragePooling2D"))
    runs = [json.loads(cli("trace", path, "--grads", "--json", "--seed", 3).stdout) for _ in "ab"]
    assert runs[0] == runs[1]
    assert runs[0]["layers"][-1]["input_grad_zero_fraction"] == 0.0
    assert "everyone shares" in cli("trace", path, "--grads").stdout


def test_trace_grads_flags_need_grads_and_fitting_weights(cli, write, tmp_path):
    path = write(POOL.format(pool="MaxPooling2D"))
    result = cli("trace", path, "--data")
    assert result.exit_code == 2
    assert "--grads" in result.stderr
    result = cli("trace", path, "--grads", "--weights", tmp_path / "nothing")
    assert result.exit_code == 2
    assert "expected a run directory or a .keras file" in result.stderr


@pytest.mark.parametrize("mixed", [False, True])
def test_compiled_flow_measurement_equals_the_eager_pass(mixed):
    """The callback's traced function gives the norms of the layer-by-layer eager pass
    (under mixed_float16 too, where it scales the loss so small gradients survive)."""
    from cnnbuild.builder import build_model, keras_module
    from cnnbuild.insight.grads import compiled_norms, labels_for

    keras = keras_module()
    cfg = load_config("configs/shapes_demo.yaml")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = labels_for(cfg, rng.integers(0, 10, 16), 10)
    objective, _ = objective_fn(cfg, classifier=True, seed=0)
    keras.utils.set_random_seed(1)
    reference = build_model(cfg, compile=False)
    _, eager = layer_grads(reference, cfg, x, y, objective, inputs=False)
    keras.utils.set_random_seed(1)
    model = build_model(cfg, compile=False, mixed_precision=mixed)
    try:
        _, traced = compiled_norms(model, cfg, objective)(x, y)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    tolerance = 0.05 if mixed else 1e-4
    for a, b in zip(eager, traced, strict=True):
        assert b.output_grad_norm == pytest.approx(a.output_grad_norm, rel=tolerance)
        assert b.weight_grad_norms.keys() == a.weight_grad_norms.keys()
        for key, value in a.weight_grad_norms.items():
            assert value > 0
            assert b.weight_grad_norms[key] == pytest.approx(value, rel=tolerance)
        if a.dead_fraction is None:
            assert b.dead_fraction is None
        else:
            assert b.dead_fraction == pytest.approx(a.dead_fraction, abs=0.02)


# -- honest views: output layers, training mode, what the model takes, the run's data --

MNIST = """
name: mnist_convnet
input: [28, 28, 1]
layers:
  - Conv2D: {filters: 32, kernel_size: 3, activation: relu}
  - MaxPooling2D: {pool_size: 2}
  - Conv2D: {filters: 64, kernel_size: 3, activation: relu}
  - MaxPooling2D: {pool_size: 2}
  - Flatten
  - Dropout: {rate: 0.5}
  - Dense: {units: 10, activation: softmax, name: predictions}
compile:
  optimizer: adam
  loss: categorical_crossentropy
"""


VGG3 = """
name: vgg3
input: [32, 32, 3]
blocks:
  conv_bn_relu:
    params: [filters]
    layers:
      - Conv2D: {filters: $filters, kernel_size: 3, padding: same, use_bias: false}
      - BatchNormalization
      - ReLU
  vgg_block:
    params: [filters, rate]
    layers:
      - conv_bn_relu: {filters: $filters}
      - conv_bn_relu: {filters: $filters}
      - MaxPooling2D: {pool_size: 2}
      - Dropout: {rate: $rate}
layers:
  - vgg_block: {filters: 32, rate: 0.2}
  - vgg_block: {filters: 64, rate: 0.3}
  - vgg_block: {filters: 128, rate: 0.4}
  - Flatten
  - Dense: {units: 128, activation: relu}
  - Dropout: {rate: 0.5}
  - Dense: {units: 10, activation: softmax, name: predictions}
compile:
  optimizer: adam
  loss: sparse_categorical_crossentropy
"""


def _npz(path, shape, classes=10, n=48):
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        y_train=np.arange(n) % classes,
        x_test=rng.integers(0, 256, (10, *shape), dtype=np.uint8),
        y_test=np.arange(10) % classes,
    )
    return path


def _train_section(npz):
    return f"train: {{dataset: {{npz: {npz}}}, epochs: 1, batch_size: 16}}\n"


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """keras.io's MNIST convnet trained one epoch on a tiny npz of 28x28 images."""
    from tests.conftest import run_cli

    tmp = tmp_path_factory.mktemp("mnist")
    config = tmp / "mnist.yaml"
    npz = _npz(tmp / "digits.npz", (28, 28))
    config.write_text(MNIST.lstrip() + _train_section(npz), encoding="utf-8")
    result = run_cli("train", config, "--out", tmp / "run", "--seed", 1)
    assert result.exit_code == 0, result.output
    return tmp / "run"


@pytest.mark.parametrize("text, shape", [(MNIST, (28, 28)), (VGG3, (32, 32, 3))])
def test_softmax_output_layers_show_the_gradient_of_their_logits(cli, write, tmp_path, text, shape):
    """Keras' cross-entropy reads the logits under the softmax, so the softmax output
    itself gets no gradient; the row shows the logits' gradient, and says so."""
    path = write(text.lstrip() + _train_section(_npz(tmp_path / "d.npz", shape)))
    result = cli("trace", path, "--grads", "--json")
    assert result.exit_code == 0, result.output
    out = {layer["name"]: layer for layer in json.loads(result.stdout)["layers"]}["predictions"]
    assert out["output_grad_of"] == "logits"
    assert out["output_grad_norm"] > 0
    assert out["input_grad_zero_fraction"] < 1.0
    text_out = cli("trace", path, "--grads").stdout
    assert "∂L/∂logits" in text_out

    result = cli("train", path, "--out", tmp_path / "run", "--seed", 1)
    assert result.exit_code == 0, result.output
    flow = json.loads((tmp_path / "run" / "gradients.json").read_text())
    last = flow["epochs"][-1]["layers"]["predictions"]
    assert last["output_grad_of"] == "logits"
    assert last["output_grad_norm"] > 0


MOBILENET = """
name: mobilenet_025_96
input: [96, 96, 3]
blocks:
  conv_bn:
    params: [filters, {kernel_size: 1}, {strides: 1}]
    layers:
      - Conv2D: {filters: $filters, kernel_size: $kernel_size, strides: $strides,
                 padding: same, use_bias: false}
      - BatchNormalization
      - ReLU: {max_value: 6.0}
  separable:
    params: [filters, {strides: 1}, {padding: same}]
    layers:
      - DepthwiseConv2D: {kernel_size: 3, strides: $strides, padding: $padding, use_bias: false}
      - BatchNormalization
      - ReLU: {max_value: 6.0}
      - conv_bn: {filters: $filters}
  down:
    params: [filters]
    layers:
      - ZeroPadding2D: {padding: [[0, 1], [0, 1]]}
      - separable: {filters: $filters, strides: 2, padding: valid}
layers:
  - conv_bn: {filters: 8, kernel_size: 3, strides: 2, name: conv1}
  - separable: {filters: 16}
  - down: {filters: 32}
  - separable: {filters: 32}
  - down: {filters: 64}
  - separable: {filters: 64}
  - down: {filters: 128}
  - separable: {filters: 128, repeat: 5}
  - down: {filters: 256}
  - separable: {filters: 256}
  - GlobalAveragePooling2D
  - Dropout: {rate: 0.001}
  - Dense: {units: 10, activation: softmax}
compile:
  optimizer: adam
  loss: sparse_categorical_crossentropy
"""


def test_fresh_mobilenet_first_kernel_gradient_in_training_mode(cli, write):
    """keras.applications.MobileNet(alpha=0.25, 96x96), written as a config: at a fresh
    initialisation, BatchNormalization in inference mode (moving variance 1) all but
    stops the backward pass; training mode, the default, is what the optimizer sees."""
    path = write(MOBILENET)
    kernel = {}
    for flags in ((), ("--mode", "inference")):
        result = cli("trace", path, "--grads", "--json", *flags)
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        first = next(layer for layer in data["layers"] if layer["type"] == "Conv2D")
        kernel[data["grads"]["mode"]] = first["weight_grad_norms"]["kernel"]
    assert kernel["training"] > 1e-6
    assert kernel["inference"] < 1e-6


def test_trace_grads_says_its_mode(cli, write):
    path = write(POOL.format(pool="MaxPooling2D"))
    text = cli("trace", path, "--grads").stdout
    assert "backward pass in training mode" in text
    assert "Dropout drops" in text
    text = cli("trace", path, "--grads", "--mode", "inference").stdout
    assert "backward pass in inference mode" in text
    result = cli("trace", path, "--mode", "inference")
    assert result.exit_code == 2 and "--grads" in result.stderr
    result = cli("trace", path, "--grads", "--mode", "eval")
    assert result.exit_code == 2


def test_trace_grads_data_of_a_run_is_the_runs_own_dataset(cli, write, mnist_run):
    """The config traced has no train section (its default dataset would be CIFAR-10);
    with --weights RUN --data the batch comes from the run's own npz."""
    path = write(MNIST)
    result = cli("trace", path, "--grads", "--weights", mnist_run, "--data", "--json")
    assert result.exit_code == 0, result.output
    grads = json.loads(result.stdout)["grads"]
    assert "digits" in grads["data"] and "the run's own dataset" in grads["data"]
    assert grads["weights"] == str(mnist_run / "model.keras")
    assert grads["batch"] == 8


def test_evaluate_a_bare_keras_file_needs_a_dataset(cli, mnist_run):
    result = cli("evaluate", mnist_run / "model.keras")
    assert result.exit_code == 2
    assert "a bare .keras file has no dataset; give --dataset" in result.stderr


BN_DROPOUT = """
name: bn_dropout
input: [8, 8, 1]
layers:
  - Conv2D: {filters: 4, kernel_size: 3, use_bias: false}
  - BatchNormalization
  - ReLU
  - Flatten
  - Dropout: {rate: 0.5}
  - Dense: {units: 3}
compile:
  optimizer: adam
  loss: sparse_categorical_crossentropy
"""


@pytest.mark.parametrize("compiled", [False, True])
def test_a_training_mode_measurement_leaves_the_model_as_it_was(write, compiled):
    """BatchNormalization's moving statistics and Dropout's seed state come back, so the
    gradient-flow callback never changes a run; the pass did use the batch's statistics
    (its numbers differ from inference mode's)."""
    from cnnbuild.builder import build_model, keras_module
    from cnnbuild.insight.grads import compiled_norms, labels_for

    keras = keras_module()
    cfg = load_config(write(BN_DROPOUT))
    keras.utils.set_random_seed(0)
    model = build_model(cfg, compile=False)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 8, 8, 1)).astype("float32")
    y = labels_for(cfg, rng.integers(0, 3, 16), 3)
    objective, _ = objective_fn(cfg, classifier=True, seed=0)
    state = {v.path: np.array(v.numpy()) for v in model.variables}
    assert any("seed_generator" in path for path in state)  # Dropout's state is counted

    def measure(training):
        if compiled:
            return compiled_norms(model, cfg, objective, training=training)(x, y)
        return layer_grads(model, cfg, x, y, objective, training=training)

    (_, train_rows), (_, infer_rows) = measure(True), measure(False)
    for v in model.variables:
        np.testing.assert_array_equal(v.numpy(), state[v.path], err_msg=v.path)
    conv = [next(r for r in rows if r.name == "conv2d") for rows in (train_rows, infer_rows)]
    assert conv[0].weight_grad_norms["kernel"] != pytest.approx(
        conv[1].weight_grad_norms["kernel"], rel=1e-3
    )
    again = next(r for r in measure(True)[1] if r.name == "conv2d")
    assert again.weight_grad_norms == conv[0].weight_grad_norms  # the same Dropout mask


AUGMENTING = """
name: augmenting
input: [16, 16, 3]
layers:
  - RandomFlip: {mode: horizontal}
  - RandomTranslation: {height_factor: 0.1, width_factor: 0.1}
  - RandomCrop: {height: 14, width: 14}
  - RandomRotation: {factor: 0.1}
  - RandomZoom: {height_factor: 0.1}
  - RandomContrast: {factor: 0.2}
  - RandomBrightness: {factor: 0.2}
  - Conv2D: {filters: 8, kernel_size: 3, activation: relu}
  - Dropout: {rate: 0.3}
  - GlobalAveragePooling2D
  - Dense: {units: 3, activation: softmax}
"""


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_gradient_views_go_through_every_augmentation_layer_in_mixed_precision(policy, tmp_path):
    """Under mixed_bfloat16 TensorFlow has no gradient for the image transform under
    RandomRotation/RandomZoom/RandomTranslation ("Invalid dtype bfloat16"): the views
    (trace --grads' eager pass with input gradients, the flow's compiled pass) still reach
    the input, finite, the same in both, for every augmentation kind of the catalog."""
    from cnnbuild.builder import build_model, keras_module
    from cnnbuild.catalog import kinds
    from cnnbuild.insight.grads import compiled_norms, labels_for

    path = tmp_path / "augmenting.yaml"
    path.write_text(AUGMENTING, encoding="utf-8")
    cfg = load_config(path)
    assert {node.kind for node in cfg.nodes} >= set(kinds(trait="augment"))
    keras = keras_module()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    y = labels_for(cfg, rng.integers(0, 3, 8), 3)
    objective, _ = objective_fn(cfg, classifier=True, seed=0)
    keras.utils.set_random_seed(1)
    model = build_model(cfg, compile=False, mixed_precision=policy)
    assert model.get_layer("random_rotation").compute_dtype == policy.removeprefix("mixed_")
    _, eager = layer_grads(model, cfg, x, y, objective, inputs=True)
    _, traced = compiled_norms(model, cfg, objective)(x, y)
    assert model.get_layer("random_rotation").dtype_policy.name == policy  # put back
    for a, b in zip(eager, traced, strict=True):
        assert np.isfinite(a.output_grad_norm) and a.output_grad_norm > 0, a
        assert b.output_grad_norm == pytest.approx(a.output_grad_norm, rel=0.05)
        assert 0 <= a.input_grad_zero_fraction < 1, a
    assert eager[0].name == "random_flip"  # the gradient reached the first layer
