"""The run directory as a transaction: one owner (a lock), a typed ``state.json``, and a
commit protocol that a ``kill -9`` at any point cannot break.

Commit of epoch N (:meth:`RunDir.commit_epoch`), with SIGINT/SIGTERM deferred:

1. each checkpoint (``last.keras``, and ``model.keras`` when the epoch is the best) is
   saved to ``.NAME.tmp-commit.keras`` and fsynced;
2. ``state.json`` is written (atomically) with epoch N done and ``pending`` naming those
   checkpoints: this is the commit point;
3. each pending checkpoint is renamed into place, then ``state.json`` is written again
   with nothing pending;
4. ``history.json``/``history.csv`` are written; only then is the epoch reported.

Recovery (:meth:`RunDir.recover`) redoes step 3 for whatever ``pending`` names (a pending
file that is gone was already renamed), then removes every temp file. A kill before step
2 loses at most the epoch being saved; a kill after it loses nothing.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import re
import shutil
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cnnbuild.errors import RunError, UsageError, pydantic_problems
from cnnbuild.io import TEMP_MARK, fsync_path, is_temp, os_error_message, write_json, write_text

STATE = "state.json"
LOCK = ".cnnbuild.lock"
CHECKPOINTS = ("model.keras", "last.keras")
STATUSES = ("running", "interrupted", "diverged", "failed", "completed", "early_stopped")


class State(BaseModel):
    """``state.json``: what a resume needs, and the commit record of the checkpoints."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: Literal[1] = 1
    status: Literal[STATUSES]
    epochs_done: Annotated[int, Field(ge=0)]
    steps_per_epoch: Annotated[int, Field(ge=1)] | None = None
    best: float | None = None
    best_epoch: Annotated[int, Field(ge=1)] | None = None
    monitor: str
    seed: Annotated[int, Field(ge=0, lt=2**32)]
    wall_seconds: Annotated[float, Field(ge=0)] = 0.0
    history: list[dict[str, float | int]] = []
    pending: list[Literal[CHECKPOINTS]] = []

    @model_validator(mode="after")
    def _consistent(self) -> State:
        if len(self.history) != self.epochs_done:
            raise ValueError(
                f"epochs_done is {self.epochs_done} but the history holds "
                f"{len(self.history)} epochs"
            )
        if self.best_epoch is not None and self.best_epoch > self.epochs_done:
            raise ValueError(f"best_epoch {self.best_epoch} is after epochs_done")
        return self


def sanitise(name: str) -> str:
    """A folder name safe to put under ``runs/``: no separators, no leading dots.

    >>> sanitise("../../escaped")
    'escaped'
    """
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return clean[:100] or "run"


# -- signals ----------------------------------------------------------------------------


class StopSignal(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread once no save is in progress."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class Signals:
    """SIGINT and SIGTERM handlers for the length of a run.

    Outside a save, a signal raises :class:`StopSignal` at once. Inside
    :meth:`deferred`, it is recorded and raised when the save is complete.
    """

    HANDLED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._depth = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum
        if self._depth == 0:
            raise StopSignal(signum)

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def deferred(self, reraise: bool = True) -> Iterator[None]:
        """Hold signals until the block ends; then raise one that came, if ``reraise``."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if reraise and self._depth == 0 and self.received is not None:
            raise StopSignal(self.received)


# -- the lock ---------------------------------------------------------------------------


class RunLock:
    """An exclusive ``flock`` on ``DIR/.cnnbuild.lock`` holding the owner's PID and host.

    The kernel drops the lock when its process dies (even by ``kill -9``), so a stale lock
    file never blocks a resume.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK
        self.fd: int | None = None

    def acquire(self, flag: str) -> None:
        """Take the lock.

        Raises:
            UsageError: another process holds it (exit 2), naming that process.
        """
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise UsageError(
                    f"{flag} {self.path.parent}: in use by {holder}; wait for that run to "
                    f"finish or stop it (if no such process runs, remove {self.path})"
                ) from None
            # the holder may have unlinked the file between our open and our flock
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = (
            f"cnnbuild (pid {os.getpid()} on {socket.gethostname()}, "
            f"since {datetime.now().isoformat(timespec='seconds')})"
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None


# -- the run directory ------------------------------------------------------------------


class RunDir:
    """A locked run directory: state, checkpoints (committed in order), history."""

    def __init__(self, path: Path, signals: Signals | None = None) -> None:
        self.path = path
        self.lock = RunLock(path)
        self.signals = signals or Signals()

    # opening

    @classmethod
    def create(cls, out: Path | None, name: str, signals: Signals | None = None) -> RunDir:
        """Make and lock a new run folder: ``out`` (new or empty) or ``runs/NAME-STAMP``.

        Raises:
            UsageError: ``out`` holds files (a run of ours, or anything else) or is locked.
            WriteError: the folder cannot be made.
        """
        if out is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            base = Path("runs") / f"{sanitise(name)}-{stamp}"
            path, n = base, 1
            _mkdir(base.parent, parents=True)
            while not _mkdir(path):
                n += 1
                path = base.with_name(f"{base.name}-{n}")
        else:
            path = out
            cls.check_out(path)
            _mkdir(path, parents=True)
            _refuse_used(path)
        run = cls(path, signals)
        run.lock.acquire("--out")
        try:
            _refuse_used(path)  # a run that took the folder before we locked it
        except UsageError:
            run.lock.release()
            raise
        run.sweep()  # what a run killed before it wrote anything left
        return run

    @staticmethod
    def check_out(out: Path | None) -> None:
        """Refuse an ``--out`` that cannot become this run's folder, before any work.

        Raises:
            UsageError: ``out`` is a file, or a folder holding files.
        """
        if out is None or not out.exists():
            return
        if not out.is_dir():
            raise UsageError(f"--out {out}: is a file; give a new or empty folder")
        _refuse_used(out)

    @classmethod
    def open(cls, path: Path, signals: Signals | None = None, flag: str = "--resume") -> RunDir:
        """Lock an existing run folder for ``--resume`` (or a multi-worker relaunch, which
        names it with ``--out``).

        Raises:
            UsageError: not a run directory, or locked by another process.
        """
        if not path.is_dir():
            raise UsageError(f"--resume {path}: no such folder")
        if not (path / STATE).is_file() and not (path / "config.yaml").is_file():
            if (path / LOCK).exists():
                raise UsageError(
                    f"--resume {path}: the run stopped before it wrote its config.yaml and "
                    f"{STATE}, so there is nothing to resume; start it again with --out {path}"
                )
            raise UsageError(f"--resume {path}: not a run directory (no {STATE})")
        run = cls(path, signals)
        run.lock.acquire(flag)
        return run

    def close(self) -> None:
        self.lock.release()

    def file(self, name: str) -> Path:
        return self.path / name

    def pending_file(self, name: str) -> Path:
        return self.path / f".{name}{TEMP_MARK}commit.keras"

    def copy_of(self, name: str) -> Callable[[str], None]:
        """A save for :meth:`commit_epoch` that copies the bytes of checkpoint ``name``
        saved earlier in the same commit (the same model, saved once)."""
        return lambda path: shutil.copyfile(self.pending_file(name), path)

    # state

    def read_state(self) -> State | None:
        """The typed state, or None when no ``state.json`` was written yet.

        Raises:
            RunError: a damaged ``state.json``, saying what is wrong with it.
        """
        path = self.file(STATE)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunError(
                f"{path}: damaged (not UTF-8 JSON: {exc}); this run cannot be resumed; "
                "start it again in a new folder"
            ) from None
        if not isinstance(data, dict):
            raise RunError(
                f"{path}: damaged (expected a JSON object, received "
                f"{type(data).__name__}); start the run again in a new folder"
            )
        try:
            return State.model_validate(data)
        except ValidationError as exc:
            problems = pydantic_problems(exc, lambda loc: ".".join(map(str, loc)) or "state", 5)
            raise RunError(
                f"{path}: damaged ({problems}); start the run again in a new folder"
            ) from None

    def write_state(self, state: State) -> None:
        write_json(self.file(STATE), state.model_dump(mode="json"))

    # the commit protocol

    def commit_epoch(self, state: State, saves: dict[str, Callable[[str], None]]) -> None:
        """Commit one epoch: checkpoints, then the state that points to them, then history.

        Args:
            state: the state after this epoch (``pending`` is filled in here).
            saves: checkpoint name -> a function that saves the model to the path given.
        """
        with self.signals.deferred():
            try:
                for name, save in saves.items():
                    tmp = self.pending_file(name)
                    tmp.unlink(missing_ok=True)
                    save(str(tmp))
                    fsync_path(tmp)
            except BaseException:
                for name in saves:
                    self.pending_file(name).unlink(missing_ok=True)
                raise
            state.pending = list(saves)
            self.write_state(state)  # the commit point
            self._finish_pending(state)
            self.write_history(state.history)

    def _finish_pending(self, state: State) -> None:
        for name in state.pending:
            tmp = self.pending_file(name)
            if tmp.exists():
                os.replace(tmp, self.file(name))
        fsync_path(self.path)
        if state.pending:
            state.pending = []
            self.write_state(state)

    def save(self, state: State) -> None:
        """Write ``state.json`` (signals held until it is on disk)."""
        with self.signals.deferred(reraise=False):
            self.write_state(state)

    def recover(self) -> tuple[State | None, list[str]]:
        """Finish a commit a kill interrupted, and remove temp files left behind.

        Returns:
            The state, and the names of the temp files removed.
        """
        state = self.read_state()
        if state is not None:
            if state.pending:
                self._finish_pending(state)
            self.write_history(state.history)  # a kill may have come before it was written
        return state, self.sweep()

    def sweep(self) -> list[str]:
        """Remove our temp files (``.NAME.tmp-*``) from the folder."""
        removed = []
        for entry in os.scandir(self.path):
            if is_temp(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
        return sorted(removed)

    def write_history(self, history: list[dict]) -> None:
        write_json(self.file("history.json"), history)
        keys: list[str] = []
        for record in history:
            keys += [k for k in record if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        write_text(self.file("history.csv"), buf.getvalue())


def _mkdir(path: Path, parents: bool = False) -> bool:
    """``mkdir``; False when it exists already (as a folder)."""
    try:
        path.mkdir(parents=parents, exist_ok=parents)
        return True
    except FileExistsError:
        if not path.is_dir():
            raise UsageError(f"{path}: is a file, not a folder; choose another path") from None
        return False
    except NotADirectoryError:
        raise UsageError(
            f"--out {path}: a part of the path is a file, not a folder; choose another path"
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            raise UsageError(f"--out {os_error_message(exc, path)}") from None
        raise


def _refuse_used(path: Path) -> None:
    entries = sorted(e for e in os.listdir(path) if e != LOCK and not is_temp(e))
    if not entries:
        return
    if STATE in entries or "metrics.json" in entries:
        raise UsageError(
            f"--out {path}: already holds a run; resume it with --resume {path}, "
            "or choose another folder"
        )
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise UsageError(
        f"--out {path}: not empty (holds {shown}); a run only fills a new or empty "
        "folder, so it never overwrites files it did not write; choose another folder"
    )
