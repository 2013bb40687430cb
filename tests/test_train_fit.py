"""Training end to end (cnnbuild/train/fit.py), on tiny data (a few hundred images, 1-3
epochs)."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np

from cnnbuild.validate import load_config
from tests.conftest import ROOT, Evil, cifar_batches, write_cifar_tar

TINY = """
name: tiny
input: [32, 32, 3]
layers:
  - Conv2D: {filters: 8, kernel_size: 3, strides: 2, activation: relu}
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
  limit: 256
"""


RUN_FILES = (
    "config.yaml",
    "model.keras",
    "last.keras",
    "history.csv",
    "history.json",
    "metrics.json",
    "curves.png",
    "confusion.png",
    "state.json",
)


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def _history(run_dir):
    return json.loads((run_dir / "history.json").read_text())


def test_train_fills_the_run_directory(cli, write, tmp_path):
    config = write(TINY)
    run_dir = tmp_path / "run"
    result = cli("train", config, "--out", run_dir, "--seed", 3, "--epochs", 2, "--tensorboard")
    assert result.exit_code == 0, result.output
    for name in RUN_FILES:
        assert (run_dir / name).stat().st_size > 0, name
    assert any((run_dir / "tb").rglob("*tfevents*"))
    metrics = _metrics(run_dir)
    for key in (
        "test_accuracy",
        "test_loss",
        "epochs",
        "wall_seconds",
        "images_per_second",
        "device",
        "tensorflow_version",
        "seed",
    ):
        assert key in metrics, key
    assert metrics["epochs"] == 2 and metrics["seed"] == 3 and metrics["device"] == "cpu"
    assert metrics["train_images"] + metrics["validation_images"] == 256
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert (run_dir / "history.csv").read_text().splitlines()[0].startswith("epoch,")
    # the resolved config is itself a valid config, with the CLI's values written in
    resolved = load_config(run_dir / "config.yaml")
    assert resolved.train.epochs == 2 and resolved.train.seed == 3
    assert resolved.train.steps_per_execution == 8 and resolved.train.tensorboard is True
    assert "epoch 2/2" in result.output and "test accuracy" in result.output
    assert "\x1b[" not in result.output  # plain lines off a terminal


def test_an_epoch_saves_the_model_once_and_copies_it_when_it_is_the_best(
    cli, write, tmp_path, monkeypatch
):
    """Each epoch writes last.keras with one ``model.save``; an epoch that improves gets
    model.keras as a copy of those bytes (not a second save, about 0.5 s on a 155-layer
    model)."""
    import keras

    saved = []
    real_save = keras.Model.save

    def counted(self, path, *args, **kwargs):  # the real save, counted
        saved.append(os.path.basename(path))
        return real_save(self, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", counted)
    config = write(TINY + "  monitor: loss\n")
    run_dir = tmp_path / "run"
    result = cli("train", config, "--out", run_dir, "--seed", 0)
    assert result.exit_code == 0, result.output
    history = json.loads((run_dir / "history.json").read_text())
    assert len(saved) == len(history) == 2
    assert all(".last.keras" in name for name in saved)  # the pending last.keras, each epoch
    state = json.loads((run_dir / "state.json").read_text())
    assert state["best_epoch"] == 2  # the training loss falls from epoch 1
    assert (run_dir / "model.keras").read_bytes() == (run_dir / "last.keras").read_bytes()


def test_the_training_and_validation_steps_are_traced_once_for_the_whole_run(
    cli, write, tmp_path, monkeypatch
):
    """Over 3 epochs TensorFlow traces ``train_step`` and ``test_step`` once each: every
    variable the training step uses exists before its first trace (else TensorFlow traces
    it twice, the first trace having made the optimizer's and metrics' variables), the
    build adds no trace of its own, and no epoch clears the kernel caches
    (``tf.random.set_seed`` would)."""
    import keras

    traced = []
    for step in ("train_step", "test_step"):  # Python runs them once per trace, not per step

        def counted(self, data, real=getattr(keras.Model, step), step=step):
            traced.append(step)
            return real(self, data)

        monkeypatch.setattr(keras.Model, step, counted)
    config = write(TINY)
    result = cli("train", config, "--out", tmp_path / "run", "--seed", 0, "--epochs", 3)
    assert result.exit_code == 0, result.output
    assert "epoch 3/3" in result.output
    assert sorted(traced) == ["test_step", "train_step"], traced


def test_building_the_step_state_first_changes_nothing_the_run_computes(
    cli, write, tmp_path, monkeypatch
):
    """The same seed gives the same losses, weights and gradient flow whether cnnbuild
    builds the step's variables first or Keras makes them in its first trace (its own
    path on one device); the model has BatchNormalization, Dropout and an augmentation."""
    import importlib

    import keras

    fit = importlib.import_module("cnnbuild.train.fit")
    config = write(
        TINY.replace(
            "  - Conv2D: {filters: 8, kernel_size: 3, strides: 2, activation: relu}\n",
            "  - RandomFlip: {mode: horizontal}\n"
            "  - Conv2D: {filters: 8, kernel_size: 3, strides: 2, activation: relu}\n"
            "  - BatchNormalization\n  - Dropout: {rate: 0.3}\n",
        )
    )
    runs = {}
    for name in ("built first", "keras' own"):
        if name == "keras' own":
            monkeypatch.setattr(fit, "build_training_state", lambda model, spec: None)
        run_dir = tmp_path / name.replace(" ", "_").replace("'", "")
        assert cli("train", config, "--out", run_dir, "--seed", 5).exit_code == 0
        model = keras.saving.load_model(run_dir / "last.keras")
        flow = json.loads((run_dir / "gradients.json").read_text())
        runs[name] = (
            [{k: v for k, v in h.items() if "loss" in k or "acc" in k} for h in _history(run_dir)],
            model.get_weights() + [v.numpy() for v in model.optimizer.variables],
            [e["layers"] for e in flow["epochs"]],
        )
    (h1, w1, g1), (h2, w2, g2) = runs.values()
    assert h1 == h2 and g1 == g2
    assert len(w1) == len(w2) and all(np.array_equal(a, b) for a, b in zip(w1, w2, strict=True))


def test_a_deep_model_runs_one_step_per_call_on_a_cpu_unless_told(cli, write, tmp_path):
    """Past CPU_MULTI_STEP_LAYERS layers the CPU default is one step per compiled call
    (Keras' multi-step loop costs a deep model more to trace than it saves; TINY, a
    small one, keeps 8 in the first test), and --steps-per-execution wins at any depth."""
    from cnnbuild.train.settings import CPU_MULTI_STEP_LAYERS

    repeat = CPU_MULTI_STEP_LAYERS // 2 + 1
    deep = write(
        "name: deep\ninput: [32, 32, 3]\n"
        "blocks:\n  pair:\n    layers: [{Conv2D: {filters: 4, kernel_size: 1}}, ReLU]\n"
        f"layers:\n  - pair: {{repeat: {repeat}}}\n  - GlobalAveragePooling2D\n"
        "  - Dense: {units: 10}\n" + TINY[TINY.index("compile:") :],
        "deep.yaml",
    )
    assert len(load_config(deep).nodes) > CPU_MULTI_STEP_LAYERS
    for extra, want in (((), 1), (("--steps-per-execution", 4), 4)):
        run_dir = tmp_path / f"run{want}"
        result = cli("train", deep, "--out", run_dir, "--epochs", 1, "--limit", 96, *extra)
        assert result.exit_code == 0, result.output
        assert _metrics(run_dir)["steps_per_execution"] == want
        assert load_config(run_dir / "config.yaml").train.steps_per_execution == want


def test_a_tensorflow_error_in_fit_is_read_for_its_node_and_reason():
    """A real error from a traced training step, with the Python frames that made its node
    (an index out of range in a gather), gives the model's node and TensorFlow's reason,
    not a frame; an eager one-line error gives its reason; an empty one says so."""
    import keras
    import tensorflow as tf

    from cnnbuild.train.fit import op_error_parts

    inputs = keras.Input((3,), dtype="int32")
    hidden = keras.layers.Flatten()(keras.layers.Embedding(5, 2, name="lookup")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden), name="gathers")
    model.compile(optimizer="sgd", loss="mse")
    try:
        model.fit(np.full((4, 3), 9, "int32"), np.zeros((4, 2)), verbose=0)
    except tf.errors.InvalidArgumentError as exc:
        message = exc.message
    else:
        raise AssertionError("an index of 9 into 5 rows trained")
    assert 'File "' in message  # the frames are there to skip
    node, reason = op_error_parts(message)
    assert node.startswith("gathers") and "lookup" in node, node
    assert reason == "indices[0,0] = 9 is not in [0, 5)", reason
    eager = "{{function_node __wrapped__Conv2D}} No OpKernel was registered [Op:Conv2D] name: "
    assert op_error_parts(eager) == (
        "",
        "{{function_node __wrapped__Conv2D}} No OpKernel was registered",
    )
    assert op_error_parts("") == ("", "no message")


def test_same_seed_same_metrics_on_cpu(cli, write, tmp_path):
    config = write(TINY)
    for name in ("a", "b"):
        assert cli("train", config, "--out", tmp_path / name, "--seed", 7).exit_code == 0
    first, second = (json.loads((tmp_path / n / "history.json").read_text()) for n in "ab")
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    assert [[h[k] for k in keys] for h in first] == [[h[k] for k in keys] for h in second]
    assert _metrics(tmp_path / "a")["test_loss"] == _metrics(tmp_path / "b")["test_loss"]


def test_test_metrics_are_model_keras_when_the_best_epoch_is_not_the_last(cli, write, tmp_path):
    """The test evaluation uses the best epoch's weights (kept in memory when that epoch
    was saved): ``cnnbuild evaluate`` on model.keras gives the very same numbers."""
    config = write(
        TINY.replace("epochs: 2", "epochs: 4")
        + "  monitor: val_loss\n"
        + "  phases:\n    - {epochs: 2}\n    - {epochs: 2, learning_rate: 0.5}\n"
    )
    run_dir = tmp_path / "run"
    assert cli("train", config, "--out", run_dir, "--seed", 0).exit_code == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best_epoch"] < metrics["epochs"] == 4  # phase 2's rate 0.5 made it worse
    result = cli("evaluate", run_dir)
    assert result.exit_code == 0, result.output
    evaluation = json.loads((run_dir / "evaluate" / "evaluation.json").read_text())
    assert evaluation["loss"] == metrics["test_loss"]
    assert evaluation["accuracy"] == metrics["test_accuracy"]
    import keras

    last = keras.saving.load_model(run_dir / "last.keras")
    best = keras.saving.load_model(run_dir / "model.keras")
    pairs = zip(last.get_weights(), best.get_weights(), strict=True)
    assert any(not np.array_equal(a, b) for a, b in pairs)  # so the two differ


def test_resume_continues_with_optimizer_state(cli, write, tmp_path):
    import keras

    config = write(TINY)
    run_dir = tmp_path / "run"
    assert cli("train", config, "--out", run_dir, "--epochs", 1, "--seed", 1).exit_code == 0
    steps = _metrics(run_dir)["train_images"] // 32 + 1
    saved = keras.saving.load_model(run_dir / "last.keras")
    assert int(saved.optimizer.iterations) == steps
    result = cli("train", "--resume", run_dir, "--epochs", 3)
    assert result.exit_code == 0, result.output
    assert "epoch 1/" not in result.output and "epoch 2/3" in result.output
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert int(keras.saving.load_model(run_dir / "last.keras").optimizer.iterations) == 3 * steps
    assert _metrics(run_dir)["epochs"] == 3
    assert load_config(run_dir / "config.yaml").train.epochs == 3


def test_ctrl_c_saves_and_prints_the_resume_command(write, tmp_path):
    config = write(TINY.replace("epochs: 2", "epochs: 200"))
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnbuild", "train", str(config), "--out", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    deadline = time.time() + 240
    for line in proc.stdout:
        if line.startswith("epoch 2/200") or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, out, err)
    assert "Traceback" not in err
    assert f"cnnbuild train --resume {run_dir}" in err
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "interrupted" and state["epochs_done"] >= 2
    assert (run_dir / "last.keras").is_file()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(cli, write, tmp_path):
    config = write(
        TINY.replace("{adam: {learning_rate: 0.003}}", "{sgd: {learning_rate: 1.0e+30}}")
    )
    result = cli("train", config, "--out", tmp_path / "run", "--epochs", 3)
    assert result.exit_code == 1
    assert "the loss became nan" in result.output or "the loss became inf" in result.output
    assert "Lower the learning rate" in result.output
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["status"] == "diverged"
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_cifar_from_data_dir_trains_and_tampered_is_refused(cli, write, tmp_path):
    config = write(TINY.replace("dataset: shapes", "dataset: cifar10"))
    tar = write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", cifar_batches())
    result = cli("train", config, "--data-dir", tar, "--out", tmp_path / "ok", "--epochs", 1)
    assert result.exit_code == 0, result.output
    assert (
        _metrics(tmp_path / "ok")["train_images"] + _metrics(tmp_path / "ok")["validation_images"]
        == 100
    )
    marker = tmp_path / "pwned"
    evil = write_cifar_tar(
        tmp_path / "evil.tar.gz",
        cifar_batches(),
        raw={"test_batch": pickle.dumps(Evil(f"touch {marker}"), protocol=2)},
    )
    result = cli("train", config, "--data-dir", evil, "--out", tmp_path / "bad")
    assert result.exit_code == 1
    assert "refused to load" in result.output and "tampered" in result.output
    assert not marker.exists()


def test_early_stopping_from_the_config(cli, write, tmp_path):
    config = write(
        TINY.replace(
            "limit: 256",
            "limit: 256\n  early_stopping: {monitor: val_loss, min_delta: 100.0, patience: 1}",
        )
    )
    result = cli("train", config, "--out", tmp_path / "run", "--epochs", 10)
    assert result.exit_code == 0, result.output
    metrics = _metrics(tmp_path / "run")
    assert metrics["status"] == "early_stopped" and metrics["epochs"] == 2
    assert metrics["epochs_planned"] == 10


def test_mixed_precision_and_xla_paths_run_on_cpu(cli, write, tmp_path):
    """Mixed precision (on a CPU: mixed_bfloat16, with a float32 output layer) and XLA,
    forced on."""
    import keras

    config = write(TINY)
    result = cli(
        "train",
        config,
        "--out",
        tmp_path / "run",
        "--epochs",
        1,
        "--mixed-precision",
        "--xla",
        "--steps-per-execution",
        "4",
    )
    assert result.exit_code == 0, result.output
    metrics = _metrics(tmp_path / "run")
    assert metrics["mixed_precision"] is True and metrics["jit_compile"] is True
    assert metrics["steps_per_execution"] == 4
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert model.layers[-1].dtype_policy.name == "float32"
    assert model.layers[1].dtype_policy.name == "mixed_bfloat16"
    assert metrics["precision_policy"] == "mixed_bfloat16"
    keras.mixed_precision.set_global_policy("float32")


def _npz_dataset(path, classes: int, size=(8, 8, 3), n_test: int = 12, labels=None):

    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (20, *size), dtype=np.uint8),
        y_train=np.arange(20) % classes,
        x_test=rng.integers(0, 256, (n_test, *size), dtype=np.uint8),
        y_test=np.arange(n_test) % classes if labels is None else labels,
    )
    return f"npz:{path}"


def test_zero_test_images_trains_and_says_so(cli, write, tmp_path):
    dataset = _npz_dataset(tmp_path / "d.npz", 10, size=(32, 32, 3), n_test=0)
    result = cli(
        "train", write(TINY), "--dataset", dataset, "--out", tmp_path / "run", "--epochs", 1
    )
    assert result.exit_code == 0, result.output
    assert "no test images, so no test accuracy" in result.output
    metrics = _metrics(tmp_path / "run")
    assert metrics["test_images"] == 0 and metrics["test_accuracy"] is None


def test_resume_is_faithful_with_dropout_and_augmentation(cli, write, tmp_path):
    """Interrupted after epoch 1 and resumed equals uninterrupted (4 decimals): the shuffle
    order and every layer's RNG are derived from (seed, epoch), not from how far the
    process got."""
    config = write(
        TINY.replace(
            "  - Flatten\n",
            "  - Flatten\n  - Dropout: {rate: 0.5}\n",
        ).replace("layers:\n", "layers:\n  - RandomFlip: {mode: horizontal}\n")
    )
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli("train", config, "--out", whole, "--seed", 5, "--epochs", 3).exit_code == 0
    assert cli("train", config, "--out", parts, "--seed", 5, "--epochs", 1).exit_code == 0
    assert cli("train", "--resume", parts, "--epochs", 3).exit_code == 0
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    first, second = (json.loads((d / "history.json").read_text()) for d in (whole, parts))
    assert [[round(h[k], 4) for k in keys] for h in first] == [
        [round(h[k], 4) for k in keys] for h in second
    ]


def test_resume_refuses_an_uncompiled_or_foreign_last_keras(cli, write, tmp_path):
    import keras

    run_dir = tmp_path / "run"
    assert cli("train", write(TINY), "--out", run_dir, "--epochs", 1).exit_code == 0
    keras.saving.load_model(run_dir / "last.keras", compile=False).save(run_dir / "last.keras")
    result = cli("train", "--resume", run_dir, "--epochs", 2)
    assert result.exit_code == 1
    assert "holds no optimizer state (it was saved uncompiled" in result.output
    (run_dir / "last.keras").unlink()
    result = cli("train", "--resume", run_dir, "--epochs", 2)
    assert result.exit_code == 1
    assert "last.keras is missing but state.json records 1 finished epoch(s)" in result.output
    assert "Traceback" not in result.output
