"""CIFAR-10 and CIFAR-100: download once, verify SHA-256, parse without running pickle code.

The archives and cache locations are Keras' own (``keras.datasets.cifar10``): the file is
kept as ``$KERAS_HOME/datasets/cifar-10-batches-py-target_archive`` and Keras extracts it
to ``.../cifar-10-batches-py-target/cifar-10-batches-py``. Either one found in the cache
means nothing is downloaded. The batches are read straight out of the tar archive (nothing
is extracted to disk) with :class:`SafeUnpickler`, which builds only dicts, lists, bytes,
strings, numbers and numpy arrays.

``CNNBUILD_DATA_MIRROR`` (a base URL) replaces the official host; the tests point it at a
loopback server. The SHA-256 is always checked.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import pickle
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnbuild.data.base import Data, tidy
from cnnbuild.errors import DataError
from cnnbuild.io import FileRefused, read_regular

MIRROR_ENV = "CNNBUILD_DATA_MIRROR"
CHUNK = 1 << 16
STALL_SECONDS = 30.0
DEADLINE_SECONDS = 3600.0
MAX_MEMBER_BYTES = 256 << 20  # the largest real member (cifar-100 train) is 155 MB


@dataclass(frozen=True)
class Archive:
    name: str
    origin: str
    sha256: str
    cache_name: str  # Keras' fname; the archive is <cache_name>_archive
    folder: str  # the folder inside the archive
    train_members: tuple[str, ...]
    test_member: str
    meta_member: str
    label_key: str
    names_key: str

    @property
    def filename(self) -> str:
        return self.origin.rsplit("/", 1)[1]


ARCHIVES = {
    "cifar10": Archive(
        "cifar10",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        "cifar-10-batches-py-target",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
    ),
    "cifar100": Archive(
        "cifar100",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
        "cifar-100-python-target",
        "cifar-100-python",
        ("train",),
        "test",
        "meta",
        "fine_labels",
        "fine_label_names",
    ),
}


def keras_datasets_dir() -> Path:
    """Where Keras caches datasets: ``$KERAS_HOME/datasets`` or ``~/.keras/datasets``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets"


# -- safe unpickling -------------------------------------------------------------------


def _numpy_globals() -> dict[tuple[str, str], Any]:
    core = getattr(np, "_core", None) or np.core
    allowed = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = core.multiarray._reconstruct
    for module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "ndarray")] = np.ndarray
        allowed[(module, "dtype")] = np.dtype
    allowed[("_codecs", "encode")] = _latin1_encode  # how protocol-2 pickles hold bytes
    return allowed


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused to load _codecs.encode with {encoding!r}")
    return text.encode("latin1")


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays and plain containers, and nothing else.

    Any other global (``os.system``, ``builtins.eval``, a class) is refused before it is
    looked up, so a tampered file cannot run code.
    """

    _ALLOWED = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: only numpy "
                "arrays, dicts, lists, bytes and numbers are "
                "allowed"
            ) from None


def safe_loads(blob: bytes) -> Any:
    """Unpickle a CIFAR batch (Python 2 pickles, so byte strings stay bytes)."""
    obj = SafeUnpickler(io.BytesIO(blob), encoding="bytes").load()
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        raise pickle.UnpicklingError("object arrays are not allowed")
    return obj


# -- download ---------------------------------------------------------------------------


def download(
    url: str,
    target: Path,
    sha256: str,
    *,
    quiet: bool = False,
    stall: float = STALL_SECONDS,
    deadline: float = DEADLINE_SECONDS,
) -> Path:
    """Download ``url`` to ``target`` with a progress bar, verifying its SHA-256.

    The bytes go to ``target.part`` first; ``target`` appears only once complete and
    verified, so an interrupted or corrupted download never looks like a good file. The
    ``.part`` file is removed on every other exit (errors, Ctrl-C).

    Args:
        stall: seconds without a single byte, or with less than 64 KiB received, after
            which the download is abandoned.
        deadline: seconds the whole download may take.

    Raises:
        DataError: network or protocol failure, a stall, the deadline, a short read, or a
            checksum mismatch.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    transfer = _Transfer(url, stall, deadline)
    try:
        with urllib.request.urlopen(url, timeout=stall) as response, open(part, "wb") as out:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isascii() and total.isdigit() else None
            with _progress(quiet) as progress:
                task = progress.add_task(target.name, total=total)
                transfer.copy(response, out, lambda n: progress.update(task, advance=n))
        if total is not None and transfer.received != total:
            raise DataError(
                f"download of {url} was cut short: received {transfer.received:,} of "
                f"{total:,} bytes; run the command again to retry"
            )
    except DataError:
        part.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        raise _failure(exc, transfer) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    got = transfer.digest.hexdigest()
    if got != sha256:
        part.unlink(missing_ok=True)
        raise DataError(
            f"checksum mismatch for {url}: expected SHA-256 {sha256}, received "
            f"{got}; the file was deleted. A proxy or mirror may have served "
            "a different file"
        )
    os.replace(part, target)
    return target


@dataclass
class _Transfer:
    """One download in progress: its bytes so far, against its stall and deadline."""

    url: str
    stall: float
    deadline: float
    digest: Any = field(default_factory=hashlib.sha256)
    received: int = 0
    start: float = field(default_factory=time.monotonic)

    def copy(self, response: Any, out: Any, advance: Any) -> None:
        """Copy ``response`` into ``out`` until its end, hashing and counting.

        Raises:
            DataError: past the deadline, or less than :data:`CHUNK` bytes in ``stall``
                seconds.
        """
        window_start, window_bytes = time.monotonic(), 0
        while chunk := response.read1(CHUNK):
            out.write(chunk)
            self.digest.update(chunk)
            self.received += len(chunk)
            window_bytes += len(chunk)
            advance(len(chunk))
            now = time.monotonic()
            if now - self.start > self.deadline:
                raise DataError(
                    f"download of {self.url} took more than {self.deadline:.0f}s "
                    f"({self.received:,} bytes received); giving up"
                )
            if window_bytes >= CHUNK:
                window_start, window_bytes = now, 0
            elif now - window_start > self.stall:
                raise DataError(
                    f"download of {self.url} stalled: less than {CHUNK:,} bytes in "
                    f"{self.stall:.0f}s ({self.received:,} bytes received)"
                )


def _progress(quiet: bool) -> Any:
    """The download's progress bar (nothing shown when ``quiet``)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("[bold]downloading[/bold] {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        disable=quiet,
        transient=False,
    )


def _failure(exc: BaseException, transfer: _Transfer) -> DataError:
    """The message for a network, protocol or file error during a download."""
    url = transfer.url
    reason = getattr(exc, "reason", None) or exc
    if isinstance(exc, http.client.IncompleteRead):
        return DataError(
            f"download of {url} was cut short after {transfer.received:,} bytes; "
            "run the command again to retry"
        )
    if isinstance(exc, TimeoutError) or isinstance(reason, TimeoutError):
        reason = f"no data for {transfer.stall:.0f}s"
    return DataError(f"could not download {url}: {type(exc).__name__}: {reason}".rstrip(": "))


def offline_help(archive: Archive, target: Path, reason: str) -> str:
    return (
        f"{reason}\nThis machine cannot fetch {archive.name}. Download it elsewhere:\n"
        f"  {archive.origin}\n  (SHA-256 {archive.sha256})\n"
        f"and either save it as\n  {target}\n"
        f"or pass its location with --data-dir PATH (the .tar.gz or the extracted "
        f"{archive.folder} folder)."
    )


# -- reading ----------------------------------------------------------------------------


class _Members:
    """Read named CIFAR files from a tar.gz or a folder."""

    def __init__(self, path: Path, archive: Archive) -> None:
        self.path = path
        self.archive = archive
        self.tar: tarfile.TarFile | None = None
        self.folder: Path | None = None
        if path.is_dir():
            for candidate in (path / archive.folder, path):
                if (candidate / archive.test_member).is_file():
                    self.folder = candidate
                    return
            raise DataError(
                f"{path}: no {archive.folder}/{archive.test_member} inside; "
                f"expected the extracted {archive.folder} folder or the folder "
                "holding it"
            )
        try:
            self.tar = tarfile.open(path, "r:gz")  # noqa: SIM115 (closed by close())
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: not a readable .tar.gz archive ({exc})") from None

    def _too_big(self, name: str, size: int) -> DataError:
        return DataError(
            f"{self.path}: {name} is {size:,} bytes, more than any CIFAR file "
            f"({MAX_MEMBER_BYTES:,}); it was not read"
        )

    def read(self, member: str) -> bytes:
        if self.folder is not None:
            item = self.folder / member
            try:
                return read_regular(item, MAX_MEMBER_BYTES)
            except FileRefused as exc:
                if exc.size is not None:
                    raise self._too_big(str(item), exc.size) from None
                raise DataError(f"{item}: {exc}") from None
        name = f"{self.archive.folder}/{member}"
        try:
            # members are scanned only up to the one wanted (getmember would read every
            # header first, seeking past a forged size)
            info = next((i for i in self.tar if i.name == name), None)
            if info is None:
                raise KeyError(name)
            if info.isfile() and info.size > MAX_MEMBER_BYTES:
                raise self._too_big(name, info.size)
            fh = self.tar.extractfile(info) if info.isfile() else None
            if fh is None:
                raise KeyError(name)
            return fh.read(MAX_MEMBER_BYTES + 1)
        except KeyError:
            raise DataError(
                f"{self.path}: the archive has no {name}; is it the "
                f"{self.archive.name} python version?"
            ) from None

    def load(self, member: str) -> Any:
        try:
            blob = self.read(member)
            obj = safe_loads(blob)
        except DataError:
            raise
        except pickle.UnpicklingError as exc:
            raise DataError(
                f"{self.path}: {member}: {exc}; the file may have been tampered "
                "with, so it was not loaded"
            ) from None
        except (
            tarfile.TarError,
            OSError,
            EOFError,
            zlib.error,
            ValueError,
            TypeError,
            AttributeError,
            IndexError,
            KeyError,
            MemoryError,
        ) as exc:
            raise DataError(
                f"{self.path}: {member} is corrupted or truncated "
                f"({type(exc).__name__}: {exc}); fetch the archive again"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"{self.path}: {member} holds {type(obj).__name__}, not the "
                "dict a CIFAR batch holds"
            )
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()


def _batch(members: _Members, member: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = members.load(member)
    data, labels = d.get("data"), d.get(label_key)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
        or labels is None
    ):
        raise DataError(
            f"{members.path}: {member} is not a CIFAR batch (expected uint8 "
            f"data of shape (N, 3072) and {label_key} of length N)"
        )
    ids = np.asarray(labels) if isinstance(labels, (list, np.ndarray)) else np.asarray([])
    classes = 10 if label_key == "labels" else 100
    if (
        ids.ndim != 1
        or len(ids) != len(data)
        or (len(ids) and ids.dtype.kind not in "iu")
        or (len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= classes))
    ):
        raise DataError(
            f"{members.path}: {member}: {label_key} must be {len(data)} integer class ids "
            f"from 0 to {classes - 1}"
        )
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), ids.astype(np.int64)


def read_cifar(path: Path, archive: Archive) -> Data:
    """Parse a CIFAR python-version copy (tar.gz or extracted folder) into arrays."""
    members = _Members(path, archive)
    try:
        parts = [_batch(members, m, archive.label_key) for m in archive.train_members]
        x_test, y_test = _batch(members, archive.test_member, archive.label_key)
        try:
            names = members.load(archive.meta_member).get(archive.names_key)
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        except (DataError, TypeError):
            names = None
    finally:
        members.close()
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return tidy(archive.name, x_train, y_train, x_test, y_test, names, str(path))


def locate(archive: Archive, data_dir: str | Path | None) -> Path | None:
    """A local copy: ``data_dir`` when given, else one in Keras' cache."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.exists():
            raise DataError(f"--data-dir {path}: no such file or folder")
        if (
            path.is_dir()
            and not (path / archive.folder).is_dir()
            and not (path / archive.test_member).is_file()
        ):
            for name in (archive.filename, archive.cache_name + "_archive"):
                if (path / name).is_file():
                    return path / name
        return path
    cache = keras_datasets_dir()
    extracted = cache / archive.cache_name / archive.folder
    if (extracted / archive.test_member).is_file():
        return extracted
    tarball = cache / (archive.cache_name + "_archive")
    if tarball.is_file():
        return tarball
    return None


def load_cifar(name: str, *, data_dir: str | Path | None = None, quiet: bool = False) -> Data:
    """CIFAR-10 or CIFAR-100 (fine labels), downloading into Keras' cache if needed."""
    archive = ARCHIVES[name]
    path = locate(archive, data_dir)
    if path is None:
        target = keras_datasets_dir() / (archive.cache_name + "_archive")
        mirror = os.environ.get(MIRROR_ENV)
        url = mirror.rstrip("/") + "/" + archive.filename if mirror else archive.origin
        if not quiet:
            print(f"{archive.name} is not in {target.parent}; fetching {url}", file=sys.stderr)
        try:
            path = download(url, target, archive.sha256, quiet=quiet)
        except DataError as exc:
            raise DataError(offline_help(archive, target, exc.message)) from None
    return read_cifar(path, archive)
