"""The backward pass made visible: ``trace --grads`` against gradients taken by hand."""

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


DYING = """
name: dying
input: [32, 32, 3]
layers:
  - Conv2D:
      {filters: 8, kernel_size: 3, activation: relu, bias_initializer: {constant: {value: -999.0}}}
  - MaxPooling2D: {pool_size: 2}
  - Flatten
  - Dense: {units: 10}
compile:
  optimizer: {adam: {learning_rate: 0.003}}
  loss: sparse_categorical_crossentropy
  from_logits: true
train:
  dataset: shapes
  epochs: 2
  batch_size: 32
  limit: 128
"""


@pytest.mark.slow
def test_training_warns_once_about_dead_relus_and_vanishing_gradients(cli, write, tmp_path):
    run_dir = tmp_path / "run"
    result = cli("train", write(DYING), "--out", run_dir, "--seed", 1)
    assert result.exit_code == 0, result.output
    grads = json.loads((run_dir / "gradients.json").read_text())
    assert [e["epoch"] for e in grads["epochs"]] == [1, 2]
    conv = grads["epochs"][-1]["layers"]["conv2d"]
    assert conv["dead_fraction"] == 1.0
    assert conv["weight_grad_norms"] == {"kernel": 0.0, "bias": 0.0}
    assert {w["kind"] for w in grads["warnings"]} == {"dead", "vanishing"}
    for words in ("ReLU units are dead", "gradients vanish"):
        lines = [line for line in result.stdout.splitlines() if words in line]
        assert len(lines) == 1, result.stdout  # once, not every epoch
        assert "conv2d" in lines[0] and "dense" not in lines[0]
    assert (run_dir / "report.html").is_file()


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
