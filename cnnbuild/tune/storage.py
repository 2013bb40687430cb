"""Where a study is stored: Optuna's RDB storage, bounded in time, its faults as messages.

A study lives in a database that SQLAlchemy reaches from a URL: a SQLite file by default,
PostgreSQL or MySQL for workers on several machines. Every wait is bounded: connecting to a
server (:data:`CONNECT_SECONDS`), a MySQL answer (:data:`READ_SECONDS`), another process's
SQLite lock (:data:`LOCK_SECONDS`). A fault becomes one message naming the URL (password
hidden) and what to do. Errors are told apart by type and by the driver's error code,
never by their text.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnbuild.errors import RunError, UsageError, WriteError
from cnnbuild.io import os_error_message, os_errors

if TYPE_CHECKING:
    import optuna
    from sqlalchemy.engine import URL

HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 60
CONNECT_SECONDS = 10  # a database server that accepts the connection and never answers
READ_SECONDS = 20  # MySQL: one answer (PostgreSQL's connect_timeout covers its handshake)
LOCK_SECONDS = 15  # SQLite: another process holding the file's lock
STORAGE_ATTEMPTS = 5
SQLITE_LOCKED = ("SQLITE_BUSY", "SQLITE_LOCKED")
# (backend, driver) -> how to install the driver SQLAlchemy 2 loads for such a URL
DRIVERS = {
    ("postgresql", "psycopg"): "pip install 'psycopg[binary]'",
    ("postgresql", "psycopg2"): (
        "pip install psycopg2-binary (or install psycopg 3 with pip install 'psycopg[binary]' "
        "and write the URL as postgresql+psycopg://...)"
    ),
    ("mysql", "pymysql"): "pip install pymysql",
    ("mysql", "mysqldb"): (
        "pip install pymysql and write the URL as mysql+pymysql://... (or install mysqlclient, "
        "which needs a C compiler and the MySQL client library)"
    ),
}
# errors that a damaged row raises while Optuna reads it back (a bad enum value, bad JSON)
DAMAGED_ROW = (LookupError, ValueError, TypeError, AttributeError)


def sqlite_url(path: Path) -> str:
    """The SQLite URL of a file, absolute."""
    return f"sqlite:///{path.resolve()}"


def shown(url: str) -> str:
    """A storage URL with its password hidden, for messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def check_folder(path: Path) -> None:
    """Refuse, with a message naming it, a file where ``path`` or a folder above it
    should be.

    Raises:
        WriteError: ``path`` is a file, or lies under one.
    """
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                exc = NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
                raise WriteError(os_error_message(exc))
            return


def make_folder(path: Path) -> None:
    """``mkdir -p path``, refusing a file on the way.

    Raises:
        WriteError: a file where a folder should be, or the OS refuses (read-only, full).
    """
    check_folder(path)
    with os_errors(path):
        path.mkdir(parents=True, exist_ok=True)


def _parse(text: str) -> URL:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(text)
        url.get_driver_name()  # loads the dialect: an unknown database kind fails here
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise UsageError(
            f"--storage {shown(text)}: not a database URL SQLAlchemy knows; write e.g. "
            "sqlite:///runs/tune/NAME/study.db, postgresql+psycopg://USER:PASSWORD@HOST/DB "
            "or mysql+pymysql://USER:PASSWORD@HOST/DB"
        ) from None
    return url


def engine_kwargs(url: URL) -> dict[str, Any]:
    """SQLAlchemy engine arguments that bound every wait on this database."""
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": LOCK_SECONDS}}
    if backend == "postgresql" and driver in ("psycopg", "psycopg2"):
        return {"connect_args": {"connect_timeout": CONNECT_SECONDS}}
    if backend in ("mysql", "mariadb") and driver in ("pymysql", "mysqldb"):
        timeouts = {"read_timeout": READ_SECONDS, "write_timeout": READ_SECONDS}
        return {"connect_args": {"connect_timeout": CONNECT_SECONDS, **timeouts}}
    return {}


def _driver_advice(url: URL) -> str:
    backend, driver = url.get_backend_name(), url.get_driver_name()
    key = ("mysql" if backend == "mariadb" else backend, driver)
    return DRIVERS.get(key, f"install the Python driver {driver!r} that SQLAlchemy uses")


def _sqlite_code(exc: BaseException) -> str | None:
    """SQLite's error name (``SQLITE_BUSY``) of a database error, if SQLite raised it."""
    return getattr(getattr(exc, "orig", None), "sqlite_errorname", None)


def fault(text: str, exc: BaseException) -> RunError:
    """The message for a database error while opening or using the study storage."""
    url = _parse(text)
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    reason_text = reason[0] if reason else type(exc).__name__
    if url.get_backend_name() == "sqlite":
        if _sqlite_code(exc) in SQLITE_LOCKED:
            return RunError(
                f"--storage {shown(text)}: the SQLite file {url.database} is locked by another "
                f"process (waited {LOCK_SECONDS} s); if no other cnnbuild tune is using this "
                "study, close the program that holds it (a database browser, a stuck process) "
                "and run again"
            )
        return RunError(
            f"--storage {shown(text)}: the SQLite file {url.database} cannot be used: "
            f"{reason_text}; check that it is a study database on a local disk you can write to"
        )
    where = f"{url.host or 'localhost'}{f':{url.port}' if url.port else ''}"
    return RunError(
        f"--storage {shown(text)}: cannot use the database server at {where}: {reason_text}. "
        "Check that it runs at that address and accepts this user and database; cnnbuild "
        f"waits {CONNECT_SECONDS} s for a connection and {READ_SECONDS} s for an answer"
    )


def _probe(text: str, url: URL, kwargs: dict[str, Any]) -> None:
    """Connect once, bounded: a missing driver or a server that does not answer is told
    apart from the races of workers that create the tables together."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, **kwargs)
    except ImportError as exc:
        raise UsageError(
            f"--storage {shown(text)}: the database driver is not installed "
            f"(no module {exc.name!r}); {_driver_advice(url)}"
        ) from None
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.DBAPIError as exc:
        raise fault(text, exc) from None
    finally:
        engine.dispose()


def open_storage(
    text: str, on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None]
) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with heartbeats, so a dead worker's trial is noticed.

    Args:
        text: the storage URL.
        on_stale: called with a trial whose worker stopped beating.

    Raises:
        UsageError: not a database URL, or its driver is missing.
        WriteError: the SQLite file's folder cannot be made.
        RunError: the database cannot be reached, is locked or is not a study database.
    """
    import optuna
    from sqlalchemy import exc as db

    url = _parse(text)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        make_folder(Path(url.database).parent)
    kwargs = engine_kwargs(url)
    _probe(text, url, kwargs)
    race = (db.OperationalError, db.IntegrityError, db.ProgrammingError)
    for attempt in range(1, STORAGE_ATTEMPTS + 1):
        try:
            return optuna.storages.RDBStorage(
                text,
                engine_kwargs=kwargs,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=on_stale,
            )
        except db.SQLAlchemyError as exc:
            # workers starting together race to create the tables: the loser tries again
            locked = _sqlite_code(exc) in SQLITE_LOCKED
            if attempt == STORAGE_ATTEMPTS or locked or not isinstance(exc, race):
                raise fault(text, exc) from None
        except RuntimeError as exc:  # Optuna: the tables' schema is from another version
            raise RunError(f"--storage {shown(text)}: {exc}") from None
        time.sleep(0.5 + random.random())
    raise AssertionError("unreachable: the last attempt returns or raises")


@contextlib.contextmanager
def storage_errors(text: str) -> Iterator[None]:
    """Turn a database error while the study runs into a message naming the storage."""
    import sqlalchemy

    try:
        yield
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise fault(text, exc) from None


def read_back(text: str, name: str, read: Callable[[], Any]) -> Any:
    """Call ``read`` (Optuna reading the study's rows), refusing rows it cannot read.

    Raises:
        RunError: the storage fails, or holds a row Optuna cannot read (changed outside
            Optuna, or damaged).
    """
    with storage_errors(text):
        try:
            return read()
        except DAMAGED_ROW as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise RunError(
                f"--storage {shown(text)}: study {name!r} holds a record Optuna cannot read "
                f"({type(exc).__name__}: {first}); the database was changed outside Optuna "
                "or is damaged. Restore it from a copy, or start again under another --study"
            ) from None


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """A trial lost with its process (or interrupted) runs again with the same params."""
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def trial_id(storage: optuna.storages.RDBStorage, study: str, number: int) -> int:
    """The storage's id of trial ``number`` of study ``study``."""
    return storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study), number
    )
