"""``cnnbuild tune`` (``cnnbuild/tune/``): real Optuna studies on tiny data, resumed, shared
and interrupted."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnbuild.validate import load_config
from tests.conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}

TINY = """
name: tiny
input: [32, 32, 3]
layers:
  - Conv2D: {filters: 8, kernel_size: 3, strides: 2, padding: same, activation: relu}
  - MaxPooling2D: {pool_size: 2}
  - Conv2D: {filters: 8, kernel_size: 3, padding: same, activation: relu}
  - GlobalMaxPooling2D
  - Dense: {units: 10}
compile:
  optimizer: {adam: {learning_rate: 0.003}}
  from_logits: true
train:
  dataset: shapes
  epochs: 2
  batch_size: 32
  limit: 300
  seed: 1
tune:
  trials: 3
  space:
    compile.optimizer.adam.learning_rate: {float: [1.0e-3, 1.0e-2], log: true}
    layers[2].Conv2D.filters: {choice: [4, 8]}
"""


# -- studies (TensorFlow and Optuna, tiny data) -----------------------------------------


def _study(storage: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=storage)


def _trials_csv(folder: Path) -> list[dict]:
    with (folder / "trials.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_study_writes_best_yaml_that_validates_and_trains(cli, write, tmp_path):
    config = write(TINY)
    folder = tmp_path / "study"
    result = cli("tune", config, "--out", folder)
    assert result.exit_code == 0, result.output
    for n in range(3):
        assert f"trial {n} start  learning_rate=" in result.output
    assert "3/3 done  ETA 0s" in result.output
    assert "study tiny: 3 trials, best first" in result.output
    rows = _trials_csv(folder)
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert all(r["state"] in ("complete", "pruned") for r in rows)
    for r in rows:
        run = Path(r["run_dir"])
        assert run.name == f"trial-{int(r['trial']):04d}" and (run / "history.json").is_file()
        # the run fills its folder alone; the trial's config and epoch lines lie beside it
        trial_cfg = load_config(run.with_suffix(".yaml"))
        assert trial_cfg.compile.optimizer["adam"]["learning_rate"] == float(
            r["compile.optimizer.adam.learning_rate"]
        )
        assert "val_accuracy" in run.with_suffix(".log").read_text()
    for png in ("history.png", "importance.png"):
        assert (folder / png).read_bytes()[:4] == b"\x89PNG"
    best = folder / "best.yaml"
    complete = [r for r in rows if r["state"] == "complete"]
    top = max(complete, key=lambda r: float(r["val_accuracy"]))
    cfg = load_config(best)
    assert cfg.tune is None
    assert cfg.compile.optimizer["adam"]["learning_rate"] == float(
        top["compile.optimizer.adam.learning_rate"]
    )
    assert cfg.node("conv2d_1").args.filters == int(top["layers[2].Conv2D.filters"])
    assert cli("validate", best).exit_code == 0
    trained = cli("train", best, "--epochs", 1, "--out", tmp_path / "best-run")
    assert trained.exit_code == 0, trained.output
    # the study is complete: running it again trains nothing and rewrites the outputs
    again = cli("tune", config, "--out", folder)
    assert again.exit_code == 0 and "start" not in again.output
    assert len(_trials_csv(folder)) == 3


@pytest.mark.slow
def test_pruning_and_a_diverged_trial_are_recorded_and_the_study_goes_on(write, tmp_path):
    import optuna

    from cnnbuild.tune import open_study, run_study

    text = TINY.replace("trials: 3", "trials: 3\n  metric: val_loss").replace(
        "    compile.optimizer.adam.learning_rate: {float: [1.0e-3, 1.0e-2], log: true}\n"
        "    layers[2].Conv2D.filters: {choice: [4, 8]}",
        "    compile.optimizer.adam.learning_rate: {choice: [0.003, 1.0e-9, 1.0e+30]}",
    )
    text = text.replace("space:", "pruning: {startup_trials: 1, warmup_epochs: 0}\n  space:")
    config = write(text)
    storage = f"sqlite:///{tmp_path / 'forced.db'}"
    study = optuna.create_study(study_name="forced", storage=storage, direction="minimize")
    key = "compile.optimizer.adam.learning_rate"
    for lr in (0.003, 1.0e-9, 1.0e30):  # a good one, one that cannot learn, one that diverges
        study.enqueue_trial({key: lr})
    s = open_study(config, study="forced", storage=storage, out=tmp_path / "forced")
    summary = run_study(s)
    trials = _study(storage, "forced").get_trials()
    states = [t.state for t in trials]
    assert states == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
    ]
    assert list(trials[1].intermediate_values) == [0]  # stopped after its first epoch
    history = json.loads((tmp_path / "forced/trial-0001/history.json").read_text())
    assert len(history) == 1 and s.cfg.train.epochs == 2
    assert "the loss became" in trials[2].user_attrs["reason"]
    rows = _trials_csv(tmp_path / "forced")
    assert [r["state"] for r in rows] == ["complete", "pruned", "failed"]
    assert "the loss became" in rows[2]["reason"]
    assert summary["best_trial"] == 0 and summary["params"] == {key: 0.003}


def _tune_process(config: Path, *args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnbuild", "tune", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=cwd,
    )


@pytest.mark.slow
def test_two_processes_on_one_storage_share_the_trials(write, tmp_path):
    import optuna

    config = write(TINY.replace("epochs: 2", "epochs: 1").replace("trials: 3", "trials: 4"))
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    args = ("--study", "shared", "--storage", storage)
    procs = [
        _tune_process(config, *args, "--out", str(tmp_path / f"w{i}"), cwd=tmp_path) for i in (0, 1)
    ]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, (out, err)
        assert "Traceback" not in err
    trials = [t for t in _study(storage, "shared").get_trials() if not t.user_attrs.get("surplus")]
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert len(trials) == 4 and all(t.state in finished for t in trials)
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == 4
    ran = [
        int(d.name[6:]) for w in (0, 1) for d in (tmp_path / f"w{w}").glob("trial-*") if d.is_dir()
    ]
    assert sorted(ran) == sorted(t.number for t in trials)  # each trial ran once, somewhere
    for w in (0, 1):  # both processes end with the whole study's outputs
        assert len(_trials_csv(tmp_path / f"w{w}")) == 4


@pytest.mark.slow
def test_a_stopped_or_killed_study_resumes_and_completes_the_remaining_trials(write, tmp_path):
    import optuna

    config = write(TINY.replace("epochs: 2", "epochs: 1"))
    folder = tmp_path / "runs" / "tune" / "tiny"
    storage = f"sqlite:///{folder / 'study.db'}"

    def start_then(signum: int, line: str) -> tuple[int, str]:
        proc = _tune_process(config, cwd=tmp_path)
        deadline = time.time() + 300
        for text in proc.stdout:
            if text.startswith(line) or time.time() > deadline:
                break
        time.sleep(1)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
        return proc.returncode, err

    # SIGTERM: the trial is recorded as lost and queued again, the resume command printed
    code, err = start_then(signal.SIGTERM, "trial 1 start")
    assert code == 130 and "Traceback" not in err, err
    assert "interrupted (SIGTERM); 1 of 3 trials are done" in err
    assert f"Resume with:\n  cnnbuild tune {config} --study tiny --storage {storage}" in err
    # SIGKILL (a crash) while the queued trial runs again: nothing is recorded
    code, _ = start_then(signal.SIGKILL, "trial 2 start")
    assert code == -signal.SIGKILL
    assert _study(storage, "tiny").get_trials()[2].state == optuna.trial.TrialState.RUNNING
    resumed = _tune_process(config, cwd=tmp_path)
    out, err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, (out, err)
    trials = _study(storage, "tiny").get_trials()
    lost = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.number for t in lost] == [1, 2]
    assert lost[0].user_attrs["lost"] == "interrupted by SIGTERM"
    assert lost[1].user_attrs["lost"].startswith("its process (pid ")
    for t in lost:  # each ran again with the same params
        retry = next(r for r in trials if r.user_attrs.get("retry_of") == t.number)
        assert retry.params == t.params
    done = [t for t in trials if t.state.is_finished() and t not in lost]
    assert len(done) == 3 and len(trials) == 5
    rows = _trials_csv(folder)
    assert [r["state"] for r in rows].count("lost") == 2
    assert "queued to run again" in rows[1]["reason"]
    assert (folder / "best.yaml").is_file()


def test_tune_needs_a_tune_section_and_a_sound_space(cli, write):
    plain = write(TINY.split("tune:")[0], "plain.yaml")
    result = cli("tune", plain)
    assert result.exit_code == 2 and "no tune: section; add one" in result.output
    bad = write(TINY.replace("choice: [4, 8]", "choice: [4, 8.5]"), "bad.yaml")
    result = cli("tune", bad)
    assert result.exit_code == 1
    assert "tune.space.layers[2].Conv2D.filters: choice 8.5 makes the model invalid" in (
        result.output
    )
