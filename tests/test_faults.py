"""Fault injection: real SIGKILL, SIGTERM and SIGINT at every step of a short run (mid-epoch,
inside each checkpoint write, between checkpoint and state), then ``--resume``.

Each fault runs ``cnnbuild train`` in a subprocess through :mod:`tests.fault_driver`, which
sends the signal to itself at the chosen point. Every resumed run must end with the same
history as an uninterrupted run of the same seed (to 4 decimals), ``epochs x steps``
optimizer steps, no temp files, and no reported epoch lost.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from cnnbuild.io import is_temp
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

EPOCHS = 3
CONFIG = """
name: tiny
input: [32, 32, 3]
layers:
  - Conv2D: {filters: 4, kernel_size: 3, strides: 2, activation: relu}
  - MaxPooling2D: {pool_size: 2}
  - Flatten
  - Dense: {units: 10}
compile:
  optimizer: {adam: {learning_rate: 0.003}}
  loss: sparse_categorical_crossentropy
  from_logits: true
train:
  dataset: shapes
  epochs: 3
  batch_size: 32
  limit: 128
  seed: 11
  steps_per_execution: 2
"""
KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def _history(run_dir) -> list[list[float]]:
    history = json.loads((run_dir / "history.json").read_text())
    return [[round(h[k], 4) for k in KEYS] for h in history]


def _drive(point: str, config, run_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tests.fault_driver", point, "train", str(config)]
        + ["--out", str(run_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=run_dir.parent,
        timeout=300,
    )


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The config, and the history and step count of an uninterrupted run."""
    from typer.testing import CliRunner

    from cnnbuild.cli import app

    folder = tmp_path_factory.mktemp("baseline")
    config = folder / "tiny.yaml"
    config.write_text(CONFIG)
    result = CliRunner().invoke(app, ["train", str(config), "--out", str(folder / "run")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((folder / "run" / "metrics.json").read_text())
    steps = -(-metrics["train_images"] // 32)
    return config, _history(folder / "run"), steps


def _check_resumed(cli, run_dir, baseline, reported: int) -> None:
    import keras

    _, history, steps = baseline
    state = (
        json.loads((run_dir / "state.json").read_text())
        if (run_dir / "state.json").exists()
        else {}
    )
    committed = state.get("epochs_done", 0)
    assert committed >= reported, "an epoch reported as saved was lost"
    result = cli("train", "--resume", run_dir)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert _history(run_dir) == history
    saved = keras.saving.load_model(run_dir / "last.keras")
    assert int(saved.optimizer.iterations) == EPOCHS * steps
    assert not [p.name for p in run_dir.iterdir() if is_temp(p.name)]
    assert json.loads((run_dir / "state.json").read_text())["status"] == "completed"


KILL_POINTS = [
    "replace:2",  # config.yaml in place, before the first state.json
    "batch:1",  # mid epoch 1
    "save:1",  # half-way through epoch 1's last.keras
    "copy:1",  # half-way through copying it to model.keras (epoch 1 is the best so far)
    "replace:3",  # checkpoints saved, commit record not yet in place
    "replaced:3",  # commit record in place, no checkpoint renamed
    "replaced:4",  # last.keras renamed, model.keras not
    "replaced:5",  # both renamed, state not yet updated
    "replaced:6",  # state updated, history not written
    "batch:3",  # mid epoch 2
    "save:2",  # inside epoch 2's checkpoint write
]


def test_sigkill_before_anything_is_written_leaves_a_folder_to_start_again(baseline, cli, tmp_path):
    config = baseline[0]
    run_dir = tmp_path / "run"
    proc = _drive("replace:1", config, run_dir)  # before config.yaml is in place
    assert proc.returncode == -9, (proc.returncode, proc.stdout, proc.stderr)
    result = cli("train", "--resume", run_dir)
    assert result.exit_code == 2
    assert f"nothing to resume; start it again with --out {run_dir}" in result.output
    assert cli("train", config, "--out", run_dir).exit_code == 0
    assert _history(run_dir) == baseline[1]
    assert not [p.name for p in run_dir.iterdir() if is_temp(p.name)]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_then_resume(point, baseline, cli, tmp_path):
    config = baseline[0]
    run_dir = tmp_path / "run"
    proc = _drive(point, config, run_dir)
    assert proc.returncode == -9, (proc.returncode, proc.stdout, proc.stderr)
    reported = max((int(n) for n in re.findall(r"^epoch (\d+)/", proc.stdout, re.M)), default=0)
    _check_resumed(cli, run_dir, baseline, reported)


@pytest.mark.parametrize(("point", "epoch"), [("save:1:term", 1), ("save:2:int", 2)])
def test_sigterm_and_sigint_mid_save_finish_the_save(point, epoch, baseline, cli, tmp_path):
    config = baseline[0]
    run_dir = tmp_path / "run"
    proc = _drive(point, config, run_dir)
    assert proc.returncode == 130, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    signame = "SIGTERM" if point.endswith("term") else "SIGINT"
    assert f"{signame}: interrupted; epoch {epoch} is saved" in proc.stderr
    assert f"cnnbuild train --resume {run_dir}" in proc.stderr
    assert f"epoch {epoch}/3" in proc.stdout and f"epoch {epoch + 1}/3" not in proc.stdout
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "interrupted" and state["epochs_done"] == epoch
    assert state["pending"] == []
    assert not [p.name for p in run_dir.iterdir() if is_temp(p.name) or p.name.startswith(".cnn")]
    _check_resumed(cli, run_dir, baseline, epoch)
