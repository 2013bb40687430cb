"""Atomic, durable file writes, and OS errors turned into messages.

A write goes to a temp file beside its target (``.NAME.tmp-XXXX``), is fsynced, renamed
over the target and the folder is fsynced: a crash leaves either the old file or the new
one, never half of one. Temp files carry the ``.tmp-`` mark so a run directory can sweep
up what a ``kill -9`` left behind (:func:`is_temp`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cnnbuild.errors import WriteError

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
