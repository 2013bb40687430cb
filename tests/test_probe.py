"""A real forward pass through every layer (cnnbuild/probe.py): ``trace --run``."""

from __future__ import annotations

import json

from tests.conftest import CONFIGS
from tests.test_insight_grads import POOL


def test_trace_run_feeds_raw_pixels_and_says_so(cli, write):
    """Uniform integers 0..255, as train and predict feed images: after the model's own
    1/255 scaling the input averages about 0.5 (uniform(0, 1) gave 0.002)."""
    path = write(POOL.format(pool="MaxPooling2D"))
    result = cli("trace", path, "--run", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert "uniform integers 0..255" in data["real_input"]
    scaled = next(layer for layer in data["layers"] if layer["name"] == "input_scaling")
    assert 0.4 < scaled["real"]["mean"] < 0.6
    assert 0.25 < scaled["real"]["std"] < 0.33
    text = cli("trace", path, "--run").stdout
    assert text.startswith("forward pass: batch of 2: random pixels (uniform integers 0..255")


def test_trace_run_feeds_what_train_feeds_to_a_model_without_scaling(cli, write):
    """``input_scaling: none``: train still feeds 0..255 pixels, so trace --run does too
    (it fed uniform [0, 1) before, hiding the raw-pixels trap) and says the model does not
    scale them."""
    path = write("""
        name: unscaled
        input: [8, 8, 3]
        input_scaling: none
        layers:
          - Conv2D: {filters: 2, kernel_size: 1, use_bias: false, name: c}
          - GlobalAveragePooling2D
    """)
    result = cli("trace", path, "--run", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert "uniform integers 0..255" in data["real_input"]
    assert "no pixel scaling of its own" in data["real_input"]
    conv = next(layer for layer in data["layers"] if layer["name"] == "c")
    assert conv["real"]["std"] > 10  # a linear map of 0..255 pixels, not of [0, 1)


def test_trace_run_compares_with_a_real_forward_pass(cli):
    result = cli("trace", CONFIGS / "cifar10_bn_gap.yaml", "--run", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for layer in data["layers"]:
        real = layer["real"]
        assert real["shape"] == layer["output_shape"], layer["name"]
        assert 0.0 <= real["zeros"] <= 1.0
    relu = next(layer for layer in data["layers"] if layer["type"] == "ReLU")
    assert relu["real"]["zeros"] > 0.05  # ReLU zeroes part of its input
    table = cli("trace", CONFIGS / "cifar10_tutorial.yaml", "--run")
    assert table.exit_code == 0 and "mean" in table.output
