"""Atomic, durable file writes, and OS errors turned into messages.

A write goes to a temp file beside its target (``.NAME.tmp-XXXX``), is fsynced, renamed
over the target and the folder is fsynced: a crash leaves either the old file or the new
one, never half of one. Temp files carry the ``.tmp-`` mark so a run directory can sweep
up what a ``kill -9`` left behind (:func:`is_temp`).

A read of a file a user names is bounded before a byte is read
(:func:`open_regular`, :func:`read_regular`): a regular file, at most a given size, opened
without blocking (a FIFO or a device is refused, never read); every refusal is one
:class:`FileRefused`, whose message is the reason.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import stat
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from cnnbuild.errors import UsageError, WriteError

MAX_PIXELS = 50_000_000
"""The most pixels an image file may declare: checked from its header, before decoding
(a folder dataset, ``predict`` and ``show`` alike)."""

TEMP_MARK = ".tmp-"


def class_folders(path: str | Path) -> list[str]:
    """The class names of an image folder dataset: its sub-folders, sorted, hidden ones
    (``.name``) and symbolic links left out. The one listing rule of ``folder:PATH``,
    read by the loader and by ``validate`` (without TensorFlow or Pillow).

    Raises:
        OSError: the folder cannot be listed.
    """
    with os.scandir(path) as entries:
        return sorted(
            e.name for e in entries if e.is_dir(follow_symlinks=False) and e.name[0] != "."
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_beside(path: Path) -> Path:
    """A new, empty temp file in ``path``'s folder, named ``.NAME.tmp-XXXX``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TEMP_MARK}")
    os.close(fd)
    return Path(tmp)


def is_temp(name: str) -> bool:
    """Whether a file name is one of our temp files."""
    return name.startswith(".") and TEMP_MARK in name


def atomic_write(path: str | Path, write: Callable[[str], Any], suffix: str = "") -> None:
    """Call ``write(tmp)`` on a temp file, fsync it, rename it onto ``path``.

    Args:
        path: the target.
        write: writes the whole content to the path it is given.
        suffix: a suffix the temp file needs (Keras wants ``.keras``).
    """
    path = Path(path)
    for folder in (path.parent, *path.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(folder))
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    if suffix:
        tmp.unlink()
        tmp = tmp.with_name(tmp.name + suffix)
    try:
        write(str(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


_NOT_REGULAR = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def check_output(path: str | Path, force: bool, flag: str = "--output") -> None:
    """Refuse an output path that is neither a new path nor a regular file.

    :func:`atomic_write` renames a temp file over its target, so it would replace a
    device (``/dev/full``, as root), a FIFO or a socket with a regular file: those are
    refused, and ``force`` never changes that. A link is judged by what it points to.

    Args:
        path: the output path a command was given.
        force: whether an existing regular file may be overwritten.
        flag: the option that gave the path, for the message.

    Raises:
        UsageError: the path is something else than a regular file, or it exists and
            ``force`` is off.
        WriteError: the OS cannot tell what the path is (permission denied, ...).
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # a new path (or one under a file, which the write reports)
    except OSError as exc:
        raise WriteError(os_error_message(exc, path)) from None
    what = next((name for test, name in _NOT_REGULAR if test(mode)), None)
    if what is not None or not stat.S_ISREG(mode):
        raise UsageError(
            f"{path}: it is {what or 'not a regular file'}; {flag} writes only a regular "
            "file or a new path (--force does not change that)"
        )
    if not force:
        raise UsageError(f"{path} exists; give --force to overwrite it")


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically and durably."""
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def save_model(model: Any, path: str | Path) -> None:
    """``model.save`` to a temp ``.keras`` file beside ``path``, then rename it into place."""
    atomic_write(Path(path), model.save, suffix=".keras")


def save_figure(fig: Any, path: str | Path) -> None:
    """Save a matplotlib figure atomically, in the format its suffix names (PNG by default)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format=fmt))


_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space or choose another folder",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose another folder",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.ENOTDIR: "it is a file, not a folder; choose another path",
    errno.EISDIR: "it is a folder; give a file path",
    errno.EEXIST: "it already exists; choose another path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}


def _target(filename: Any) -> Any:
    """The file a temp file of :func:`temp_beside` stands in for; other names unchanged."""
    name = os.path.basename(str(filename))
    if not is_temp(name):
        return filename
    return os.path.join(os.path.dirname(str(filename)), name[1 : name.index(TEMP_MARK)])


def os_error_message(exc: OSError, path: str | Path | None = None) -> str:
    """``PATH: what happened; what to do`` for an OS error; a temp file is named by the
    file it was to become."""
    where = _target(exc.filename) if exc.filename is not None else path
    reason = exc.strerror or type(exc).__name__
    advice = _ADVICE.get(exc.errno or -1) or (None if exc.strerror else str(exc))
    text = reason if advice is None else f"{reason}; {advice}"
    return f"{where}: {text}" if where is not None else text


@contextlib.contextmanager
def os_errors(path: str | Path | None = None) -> Iterator[None]:
    """Turn an :class:`OSError` raised inside into a :class:`WriteError` naming the path."""
    try:
        yield
    except OSError as exc:
        raise WriteError(os_error_message(exc, path)) from None


class FileRefused(Exception):
    """A file that :func:`open_regular` will not read; the message is the reason, without
    the path (the caller names the file in its own words).

    Attributes:
        size: the file's size when it is over the limit, else None.
        limit: the limit it was read under.
        os_error: the :class:`OSError` when the OS refused (missing, permission...), else
            None.
    """

    def __init__(
        self,
        reason: str,
        *,
        size: int | None = None,
        limit: int = 0,
        os_error: OSError | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason, self.size, self.limit, self.os_error = reason, size, limit, os_error

    @property
    def missing(self) -> bool:
        """Whether the file does not exist."""
        return isinstance(self.os_error, FileNotFoundError)


def check_regular(info: os.stat_result, limit: int) -> None:
    """Refuse a stat result that is not a regular file, or larger than ``limit`` bytes.

    Raises:
        FileRefused: "not a regular file" or "N bytes; the limit is L".
    """
    if not stat.S_ISREG(info.st_mode):
        raise FileRefused("not a regular file", limit=limit)
    if info.st_size > limit:
        raise FileRefused(
            f"{info.st_size:,} bytes; the limit is {limit:,}", size=info.st_size, limit=limit
        )


def open_regular(path: str | Path, limit: int, *, follow: bool = True) -> BinaryIO:
    """A binary file object for a regular file of at most ``limit`` bytes.

    The file is opened without blocking and checked on its descriptor (no race between a
    check and the open): a FIFO or a device is refused at once, never read.

    Args:
        path: the file.
        limit: the most bytes it may hold.
        follow: follow a symbolic link (``False``: refuse one, ``O_NOFOLLOW``).

    Raises:
        FileRefused: not a regular file, over the limit, or the OS refused to open it.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise FileRefused(exc.strerror or str(exc), limit=limit, os_error=exc) from None
    try:
        check_regular(os.fstat(fd), limit)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_regular(path: str | Path, limit: int, *, follow: bool = True) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (see :func:`open_regular`);
    the read is bounded too, in case the file grows in between.

    Example:
        ``read_regular("net.yaml", 2_000_000)`` is the file's bytes, or raises
        :class:`FileRefused` with "not a regular file" for ``/dev/zero``.

    Raises:
        FileRefused: not a regular file, over the limit, or unreadable.
    """
    with open_regular(path, limit, follow=follow) as handle:
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise FileRefused(exc.strerror or str(exc), limit=limit, os_error=exc) from None
    if len(data) > limit:
        raise FileRefused(
            f"more than {limit:,} bytes; the limit is {limit:,}", size=len(data), limit=limit
        )
    return data


# -- a zip member read in place ----------------------------------------------------------


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes at ``start`` of a file: a stored
    (uncompressed) zip member read in place, so h5py seeks cost nothing."""

    def __init__(self, file: Any, start: int, size: int) -> None:
        self.file, self.start, self.size, self.pos = file, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        self.file.seek(self.start + self.pos)
        data = self.file.read(n)
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def zip_member(file: Any, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Any:
    """A seekable file object for a member of ``archive`` (opened on ``file``): read in
    place when it is stored, so reading an h5 file's metadata never reads its data."""
    if info.compress_type != zipfile.ZIP_STORED:
        return archive.open(info)
    file.seek(info.header_offset)
    header = file.read(30)
    if header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return _Window(file, info.header_offset + 30 + name_len + extra_len, info.file_size)
