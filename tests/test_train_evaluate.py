"""Evaluation on a test set (cnnbuild/train/evaluate.py): a run's best model or a bare
``.keras`` file, checked against the data."""

from __future__ import annotations

import json

import pytest

from tests.test_train_fit import TINY, _npz_dataset


def test_evaluate_run_dir_and_safe_mode(cli, write, tmp_path):
    import keras

    config = write(TINY)
    run_dir = tmp_path / "run"
    assert cli("train", config, "--out", run_dir, "--epochs", 1).exit_code == 0
    result = cli("evaluate", run_dir)
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and "per-class accuracy" in result.output
    assert "triangle" in result.output
    evaluation = json.loads((run_dir / "evaluate" / "evaluation.json").read_text())
    assert evaluation["test_images"] == 256
    assert (run_dir / "evaluate" / "confusion.png").stat().st_size > 0
    # a model with a Lambda layer would run arbitrary code on load: safe_mode refuses it
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(10)(
        keras.layers.Flatten()(keras.layers.Lambda(lambda x: x * 2)(inputs))
    )
    lam = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(lam)
    result = cli("evaluate", lam, "--dataset", "shapes", "--limit", 20)
    assert result.exit_code == 1
    assert "cannot load the model" in result.output


def _bare(tmp_path, name, build):
    import keras

    inputs, outputs = build(keras)
    path = tmp_path / f"{name}.keras"
    keras.Model(inputs, outputs).save(path)
    return path


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("two_inputs", "the model takes 2 inputs"),
        ("rank4_output", "the model's output has shape (8, 8, 3)"),
        ("other_size", "takes images of shape (16, 16, 3) but dataset d has images of shape"),
        ("one_sigmoid_three_classes", "1 output unit (a binary classifier) but dataset d has 3"),
        ("five_units", "the model has 5 output units but dataset d has 3 classes"),
    ],
)
def test_evaluate_checks_a_bare_model_against_the_data(cli, tmp_path, name, message):
    def build(keras):
        x = keras.Input((8, 8, 3))
        flat = keras.layers.Flatten()(x)
        if name == "two_inputs":
            y = keras.Input((8, 8, 3))
            both = keras.layers.Concatenate()([flat, keras.layers.Flatten()(y)])
            return [x, y], keras.layers.Dense(3)(both)
        if name == "rank4_output":
            return x, keras.layers.Conv2D(3, 1)(x)
        if name == "other_size":
            x = keras.Input((16, 16, 3))
            return x, keras.layers.Dense(3)(keras.layers.Flatten()(x))
        if name == "one_sigmoid_three_classes":
            return x, keras.layers.Dense(1, activation="sigmoid")(flat)
        return x, keras.layers.Dense(5)(flat)

    model = _bare(tmp_path, name, build)
    dataset = _npz_dataset(tmp_path / "d.npz", 3)
    result = cli("evaluate", model, "--dataset", dataset)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("activation", ["sigmoid", None])
def test_evaluate_thresholds_a_binary_output_by_its_activation(cli, tmp_path, activation):
    """Every image scores -0.5 before the activation: as a logit that is class 0 (< 0.0);
    as a sigmoid probability, 0.38, also class 0 (< 0.5). A 0.0 threshold on the
    probability (the old behaviour) would call every image class 1."""

    def build(keras):
        x = keras.Input((8, 8, 3))
        dense = keras.layers.Dense(
            1, activation=activation, kernel_initializer="zeros", bias_initializer="zeros"
        )
        out = dense(keras.layers.Flatten()(x))
        dense.bias.assign([-0.5])
        return x, out

    import numpy as np

    model = _bare(tmp_path, f"binary_{activation}", build)
    dataset = _npz_dataset(tmp_path / "d.npz", 2, labels=np.zeros(12, dtype=np.int64))
    result = cli("evaluate", model, "--dataset", dataset)
    assert result.exit_code == 0, result.output
    evaluation = json.loads(
        (tmp_path / f"binary_{activation}-evaluate/evaluation.json").read_text()
    )
    assert evaluation["accuracy"] == 1.0
