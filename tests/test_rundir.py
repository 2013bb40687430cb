"""The run directory without TensorFlow: lock, --out rules, typed state, the commit
protocol failing at every step, and what recovery makes of each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cnnbuild.errors import RunError, UsageError
from cnnbuild.io import is_temp
from cnnbuild.train.rundir import LOCK, STATE, RunDir, State, sanitise
from tests.conftest import CONFIGS, ROOT


def _state(epochs: int = 0, **kw) -> State:
    history = [{"epoch": i + 1, "loss": 1.0 / (i + 1)} for i in range(epochs)]
    return State(
        status="running", epochs_done=epochs, monitor="val_accuracy", seed=1, history=history, **kw
    )


def _saver(content: bytes):
    def save(path: str) -> None:
        with open(path, "wb") as fh:
            fh.write(content)

    return save


class Boom(Exception):
    pass


def test_second_owner_is_refused_naming_the_holder(tmp_path):
    run = RunDir.create(tmp_path / "run", "net")
    try:
        script = (
            "import sys; from pathlib import Path; from cnnbuild.train.rundir import RunDir\n"
            "from cnnbuild.errors import UsageError\n"
            "try:\n    RunDir.open(Path(sys.argv[1]))\n"
            "except UsageError as e:\n    print(e.message); sys.exit(e.exit_code)\n"
        )
        run.write_state(_state())
        proc = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "run")],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert proc.returncode == 2
        assert f"in use by cnnbuild (pid {os.getpid()}" in proc.stdout
    finally:
        run.close()
    assert not (tmp_path / "run" / LOCK).exists()
    RunDir.open(tmp_path / "run").close()  # free again


def test_out_takes_only_a_new_or_empty_folder(tmp_path):
    RunDir.create(tmp_path / "new", "net").close()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "model.keras").write_bytes(b"user's own")
    with pytest.raises(UsageError, match=r"not empty \(holds model.keras\)"):
        RunDir.create(tmp_path / "mine", "net")
    assert (tmp_path / "mine" / "model.keras").read_bytes() == b"user's own"
    assert not (tmp_path / "mine" / LOCK).exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        RunDir.create(tmp_path / "file", "net")
    with pytest.raises(UsageError, match="is a file, not a folder|a part of the path is a file"):
        RunDir.create(tmp_path / "file" / "run", "net")


def test_derived_names_stay_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sanitise("../../escaped") == "escaped" and sanitise("a/b c") == "a_b_c"
    run = RunDir.create(None, "../../escaped")
    run.close()
    assert run.path.parts[0] == "runs" and run.path.name.startswith("escaped-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{}", "status: Field required"),
        (b"null", "expected a JSON object, received NoneType"),
        (b'{"status": 3}', "status"),
        ('{"status": "running"}'.encode("utf-16"), "not UTF-8 JSON"),
        (b"[1, 2", "not UTF-8 JSON"),
    ],
)
def test_damaged_state_is_a_message(tmp_path, content, message):
    (tmp_path / STATE).write_bytes(content)
    with pytest.raises(RunError, match="damaged") as err:
        RunDir(tmp_path).read_state()
    assert message in err.value.message and str(tmp_path / STATE) in err.value.message


def test_state_history_must_match_epochs():
    with pytest.raises(ValueError, match="epochs_done is 2 but the history holds 1"):
        State.model_validate({**_state(1).model_dump(), "epochs_done": 2})


def _fail_at(monkeypatch, target: str, nth: int) -> None:
    """Make the nth call of ``target`` (in cnnbuild.train.rundir) raise Boom."""
    import cnnbuild.train.rundir as rundir

    real = getattr(rundir if hasattr(rundir, target) else os, target)
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            raise Boom(target)
        return real(*args, **kwargs)

    if hasattr(rundir, target):
        monkeypatch.setattr(rundir, target, failing)
    else:
        monkeypatch.setattr(os, target, failing)


# (function that fails, which call, epoch a recovery finds committed)
STEPS = [
    ("fsync_path", 1, 1),  # model.keras temp written, not synced
    ("fsync_path", 2, 1),  # last.keras temp not synced
    ("write_state", 1, 1),  # the commit record itself
    ("replace", 2, 2),  # the record is in; model.keras not renamed
    ("replace", 3, 2),  # model.keras renamed; last.keras not
    ("write_state", 2, 2),  # both renamed; pending not cleared
    ("write_history", 1, 2),  # state done; history files not written
]


@pytest.mark.parametrize(("target", "nth", "committed"), STEPS)
def test_commit_fails_at_every_step_and_recovery_is_consistent(
    tmp_path, monkeypatch, target, nth, committed
):
    run = RunDir(tmp_path)
    first = _state(1)
    run.commit_epoch(first, {"last.keras": _saver(b"epoch1")})
    second = _state(2, best=0.5, best_epoch=2)
    with monkeypatch.context() as patch:
        if target in ("write_state", "write_history"):
            real = getattr(RunDir, target)
            calls = {"n": 0}

            def failing(self, *args, _real=real, **kwargs):
                calls["n"] += 1
                if calls["n"] == nth:
                    raise Boom(target)
                return _real(self, *args, **kwargs)

            patch.setattr(RunDir, target, failing)
        else:
            _fail_at(patch, target, nth)
        with pytest.raises(Boom):
            run.commit_epoch(
                second, {"model.keras": _saver(b"epoch2"), "last.keras": _saver(b"epoch2")}
            )
    state, _ = RunDir(tmp_path).recover()
    assert state.epochs_done == committed and state.pending == []
    assert (tmp_path / "last.keras").read_bytes() == f"epoch{committed}".encode()
    if committed == 2:
        assert (tmp_path / "model.keras").read_bytes() == b"epoch2"
    else:
        assert not (tmp_path / "model.keras").exists()
    assert not [p for p in os.listdir(tmp_path) if is_temp(p)]
    assert json.loads((tmp_path / STATE).read_text())["epochs_done"] == committed
    assert len(json.loads((tmp_path / "history.json").read_text())) == committed


def test_resume_and_out_refuse_to_touch_other_folders(cli, tmp_path):
    result = cli("train", "--resume", tmp_path)
    assert result.exit_code == 2 and "not a run directory" in result.output
    (tmp_path / "metrics.json").write_text("{}")
    result = cli("train", CONFIGS / "shapes_demo.yaml", "--out", tmp_path)
    assert result.exit_code == 2 and "already holds a run" in result.output
    assert (tmp_path / "metrics.json").read_text() == "{}"
