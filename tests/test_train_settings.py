"""Settings of a run (cnnbuild/train/settings.py): the data's fit to the model, the device,
the learning-rate schedule."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CONFIGS
from tests.test_train_fit import TINY


def test_data_that_does_not_fit_the_model_is_refused(cli, write, tmp_path):
    wrong_input = write(TINY.replace("[32, 32, 3]", "[28, 28, 3]"), "a.yaml")
    result = cli("train", wrong_input, "--out", tmp_path / "a")
    assert result.exit_code == 1
    assert (
        "dataset shapes has images of shape (32, 32, 3) but the config's input is (28, 28, 3)"
    ) in result.output
    wrong_units = write(
        TINY.replace("units: 10", "units: 7").replace("dataset: shapes", "dataset: npz:d.npz"),
        "b.yaml",
    )
    import numpy as np

    np.savez(
        tmp_path / "d.npz",
        x_train=np.zeros((20, 32, 32, 3), np.uint8),
        y_train=np.arange(20) % 10,
        x_test=np.zeros((5, 32, 32, 3), np.uint8),
        y_test=np.arange(5),
    )
    result = cli(
        "train", wrong_units, "--out", tmp_path / "b", "--dataset", f"npz:{tmp_path / 'd.npz'}"
    )
    assert result.exit_code == 1
    assert "last layer 'dense'" in result.output
    assert "outputs 7 value(s) per image but the data has 10 classes" in result.output


def test_device_gpu_without_a_gpu_is_an_error(cli):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    result = cli("train", CONFIGS / "shapes_demo.yaml", "--device", "gpu")
    assert result.exit_code == 1
    assert "--device gpu: TensorFlow sees no GPU" in result.output


def _history(run_dir):
    return json.loads((run_dir / "history.json").read_text())


def test_cosine_and_step_schedules_follow_keras(cli, write, tmp_path):
    cosine = write(
        TINY.replace("limit: 256", "limit: 256\n  lr_schedule: {cosine: {alpha: 0.1}}"), "cos.yaml"
    )
    assert cli("train", cosine, "--out", tmp_path / "cos", "--epochs", 3).exit_code == 0
    rates = [h["learning_rate"] for h in _history(tmp_path / "cos")]
    assert rates[0] < 0.003 and rates == sorted(rates, reverse=True)
    assert rates[-1] == pytest.approx(0.003 * 0.1, rel=1e-3)  # alpha * base at the end
    step = write(
        TINY.replace(
            "limit: 256", "limit: 256\n  lr_schedule: {step: {every_epochs: 1, factor: 0.5}}"
        ),
        "step.yaml",
    )
    assert cli("train", step, "--out", tmp_path / "step", "--epochs", 3).exit_code == 0
    rates = [h["learning_rate"] for h in _history(tmp_path / "step")]
    # PiecewiseConstantDecay at each epoch's last step: halved once per epoch after the first
    assert rates == pytest.approx([0.003, 0.0015, 0.00075], rel=1e-3)
