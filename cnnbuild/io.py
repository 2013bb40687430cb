"""Atomic file writes: a crash never leaves half a file where a whole one was."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically (temp file in the same folder, then ``os.replace``)."""
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def save_model(model: Any, path: str | Path) -> None:
    """``model.save`` to a temp ``.keras`` file beside ``path``, then rename it into place."""
    _atomic(Path(path), lambda tmp: model.save(tmp))


def save_figure(fig: Any, path: str | Path) -> None:
    _atomic(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight"))
