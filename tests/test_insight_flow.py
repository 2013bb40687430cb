"""Gradient flow during training (cnnbuild/insight/flow.py): ``gradients.json`` and its
plain-words warnings."""

from __future__ import annotations

import json

import pytest

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
    assert grads["batch"] == 32  # one training batch (batch_size), what a step averages over
    conv = grads["epochs"][-1]["layers"]["conv2d"]
    assert conv["dead_fraction"] == 1.0
    assert conv["weight_grad_norms"] == {"kernel": 0.0, "bias": 0.0}
    assert {w["kind"] for w in grads["warnings"]} == {"dead", "vanishing"}
    for words in ("ReLU units are dead", "gradients vanish"):
        lines = [line for line in result.stdout.splitlines() if words in line]
        assert len(lines) == 1, result.stdout  # once, not every epoch
        assert "conv2d" in lines[0] and "dense" not in lines[0]
    assert (run_dir / "report.html").is_file()
