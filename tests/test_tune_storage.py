"""The study storage (``cnnbuild/tune/storage.py``) against faults: a server that accepts
and never answers, a locked SQLite file, damaged rows, missing drivers and output paths
that cannot be written. Each must end in one message naming the thing, with no traceback,
well within a minute."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cnnbuild.tune.storage import CONNECT_SECONDS, LOCK_SECONDS, READ_SECONDS
from tests.conftest import CONFIGS, ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
CONFIG = CONFIGS / "shapes_tune.yaml"  # its study is named shapes_tune
BOUND = 60  # seconds: what the issue allows a dead storage before the message


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte.

    It runs in a thread and stops by itself after ``lifetime`` seconds, or when the
    ``with`` block ends.
    """

    def __init__(self, lifetime: float = BOUND + 30) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.deadline = time.monotonic() + lifetime
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted.append(conn)
        for conn in self.accepted:
            conn.close()
        self.sock.close()

    def __enter__(self) -> SilentServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def _tune(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """``cnnbuild tune`` in a process of its own, killed (failing the test) past BOUND."""
    return subprocess.run(
        [sys.executable, "-m", "cnnbuild", "tune", str(CONFIG), *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=BOUND,
    )


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize(
    "scheme, module",
    [
        ("mysql+pymysql", "pymysql"),
        ("postgresql+psycopg", "psycopg"),
        ("postgresql+psycopg2", "psycopg2"),
    ],
)
def test_a_server_that_accepts_and_never_answers_fails_within_a_minute(tmp_path, scheme, module):
    if not _installed(module):
        pytest.skip(f"the {module} driver is not installed (pip install it to run this case)")
    with SilentServer() as server:
        url = f"{scheme}://tuner:secret@127.0.0.1:{server.port}/optuna"
        result = _tune("--storage", url, "--out", tmp_path / "study", cwd=tmp_path)
        assert server.accepted, "the driver never connected: the test proves nothing"
    err = result.stderr
    assert result.returncode == 1, (result.stdout, err)
    assert "Traceback" not in err and "secret" not in err
    assert f"--storage {scheme}://tuner:***@127.0.0.1:{server.port}/optuna: " in err
    assert f"cannot use the database server at 127.0.0.1:{server.port}" in err
    assert f"waits {CONNECT_SECONDS} s for a connection and {READ_SECONDS} s" in err
    assert not (tmp_path / "study").exists()  # nothing written for a study that never opened


def test_a_locked_sqlite_file_is_named_after_a_short_wait(tmp_path):
    import optuna

    db = tmp_path / "study.db"
    optuna.create_study(study_name="other", storage=f"sqlite:///{db}")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process would hold it the same way
    try:
        result = _tune("--storage", f"sqlite:///{db}", "--out", tmp_path, cwd=tmp_path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert (
        f"error: --storage sqlite:///{db}: the SQLite file {db} is locked by another process "
        f"(waited {LOCK_SECONDS} s); if no other cnnbuild tune is using this study, close the "
        "program that holds it"
    ) in " ".join(result.stderr.split())


@pytest.mark.parametrize(
    "damage, kind",
    [
        ("UPDATE trials SET state = 'BOGUS'", "LookupError: 'BOGUS' is not among"),
        ("UPDATE trial_params SET distribution_json = '{bad'", "JSONDecodeError: Expecting"),
        ("UPDATE trial_params SET distribution_json = '{}'", "KeyError: 'type'"),
    ],
)
def test_a_damaged_row_in_a_study_is_a_message(cli, tmp_path, damage, kind):
    import optuna

    db = tmp_path / "study.db"
    study = optuna.create_study(study_name="shapes_tune", storage=f"sqlite:///{db}")
    trial = study.ask()
    trial.suggest_float("train.batch_size", 0.0, 1.0)
    study.tell(trial, 0.5)
    with sqlite3.connect(db) as con:
        con.execute(damage)
    con.close()
    result = cli("tune", CONFIG, "--storage", f"sqlite:///{db}", "--out", tmp_path)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert f"error: --storage sqlite:///{db}: study 'shapes_tune' holds a record Optuna " in text
    assert f"cannot read ({kind}" in text
    assert "Restore it from a copy, or start again under another --study" in text


@pytest.mark.parametrize(
    "where",
    [
        ["--out", "{file}"],
        ["--out", "{file}/study"],
        ["--storage", "sqlite:///{file}/study.db", "--out", "{tmp}/study"],
    ],
)
def test_an_output_path_under_a_file_is_refused_naming_the_file(cli, tmp_path, where):
    file = tmp_path / "notes.txt"
    file.write_text("mine\n")
    args = [a.format(file=file, tmp=tmp_path) for a in where]
    result = cli("tune", CONFIG, *args)
    assert result.exit_code == 1, result.output
    assert f"error: {file}: Not a directory; it is a file, not a folder; choose another path" in (
        " ".join(result.output.split())
    )
    assert file.read_text() == "mine\n"  # the user's file is untouched
    assert not (tmp_path / "study").exists()


def _refusing_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create anything in."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    probe = Path("/sys/cnnbuild-probe")  # root writes anywhere but in sysfs
    try:
        probe.mkdir()
    except OSError:
        return Path("/sys")
    probe.rmdir()
    pytest.skip("running as root with a writable /sys: no folder refuses a write here")


def test_a_folder_that_refuses_writes_is_named(cli, tmp_path):
    folder = _refusing_folder(tmp_path)
    try:
        result = cli("tune", CONFIG, "--out", folder / "study")
    finally:
        if folder.is_relative_to(tmp_path):
            folder.chmod(0o755)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert f"error: {folder / 'study'}: " in text
    assert "choose a folder you can write to" in text


@pytest.mark.parametrize(
    "url, module, advice",
    [
        (
            "postgresql://tuner:secret@127.0.0.1:1/optuna",
            "psycopg",
            "pip install 'psycopg[binary]'",
        ),
        (
            "postgresql+psycopg2://tuner:secret@127.0.0.1:1/optuna",
            "psycopg2",
            "pip install psycopg2-binary (or install psycopg 3 with pip install "
            "'psycopg[binary]' and write the URL as postgresql+psycopg://...)",
        ),
        (
            "mysql://tuner:secret@127.0.0.1:1/optuna",
            "MySQLdb",
            "pip install pymysql and write the URL as mysql+pymysql://...",
        ),
    ],
)
def test_a_missing_driver_is_named_with_the_command_that_installs_it(
    cli, tmp_path, url, module, advice
):
    if _installed(module):
        pytest.skip(f"{module} is installed here")
    result = cli("tune", CONFIG, "--storage", url, "--out", tmp_path / "study")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    shown = url.replace(":secret@", ":***@")
    assert (
        f"error: --storage {shown}: the database driver is not installed "
        f"(no module {module!r}); {advice}"
    ) in text
    assert "secret" not in text


def test_a_storage_that_is_not_a_url_is_a_usage_error(cli, tmp_path):
    result = cli("tune", CONFIG, "--storage", "study.db", "--out", tmp_path / "study")
    assert result.exit_code == 2, result.output
    assert "error: --storage study.db: not a database URL SQLAlchemy knows; write e.g. " in (
        " ".join(result.output.split())
    )


# -- a real PostgreSQL server: workers on several machines share one study ---------------


def _postgres_url() -> str:
    """The URL of the PostgreSQL server the tests may use (``.ci/run`` starts one with
    ``.ci/postgres`` and exports it), or a skip naming why there is none."""
    url = os.environ.get("CNNBUILD_TEST_POSTGRES")
    if not url:
        pytest.skip(
            os.environ.get("CNNBUILD_TEST_POSTGRES_SKIP")
            or "no PostgreSQL server: CNNBUILD_TEST_POSTGRES is not set (start one with "
            "`.ci/postgres start DIR`, which prints the URL to set)"
        )
    if not _installed("psycopg"):
        pytest.skip("the psycopg driver is not installed (pip install 'psycopg[binary]')")
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
    try:
        engine.connect().close()
    except sqlalchemy.exc.OperationalError as exc:
        pytest.skip(f"the PostgreSQL server at {url} cannot be reached: {exc.orig}")
    finally:
        engine.dispose()
    return url


def _first_trial(proc: subprocess.Popen, timeout: float) -> int:
    """Read a tune process's output up to its first ``trial N start`` line: N."""
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if line.startswith("trial ") and line.split()[2:3] == ["start"]:
            return int(line.split()[1])
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"no trial started: {proc.communicate()}")


@pytest.mark.slow
def test_two_workers_share_a_study_on_postgresql_and_survive_one_killed(tmp_path):
    """Two `cnnbuild tune` processes on one study in a real PostgreSQL; one is killed
    (SIGKILL) in the middle of a trial, the other goes on, and the killed one, started
    again, finds the study complete."""
    import optuna

    from tests.test_tune import TINY

    url = _postgres_url()
    name = f"shared_{os.getpid()}_{time.monotonic_ns()}"
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("epochs: 2", "epochs: 1").replace("trials: 3", "trials: 4"))
    args = ["tune", str(config), "--study", name, "--storage", url]

    def worker(out: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "cnnbuild", *args, "--out", str(tmp_path / out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            cwd=tmp_path,
        )

    killed, other = worker("a"), worker("b")
    try:
        number = _first_trial(killed, 300)
        time.sleep(1)  # inside the trial: its model is training
        killed.kill()
        killed.communicate(timeout=60)
        assert killed.returncode == -signal.SIGKILL
        out, err = other.communicate(timeout=600)
        assert other.returncode == 0 and "Traceback" not in err, (out, err)
        again = worker("a")
        out, err = again.communicate(timeout=600)
        assert again.returncode == 0 and "Traceback" not in err, (out, err)
        trials = optuna.load_study(study_name=name, storage=url).get_trials()
    finally:
        for proc in (killed, other):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    lost = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.number for t in lost] == [number]
    assert lost[0].user_attrs["lost"].startswith("its process (pid ")
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == number)
    assert retry.params == lost[0].params and retry.state.is_finished()
    done = [t for t in trials if t.state.is_finished() and t not in lost]
    assert len(done) == 4
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in trials)
    optuna.delete_study(study_name=name, storage=url)
