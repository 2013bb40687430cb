"""User-facing findings and errors.

A :class:`Finding` is one problem (or remark) about one place in one config file.
Everything that checks user input returns findings instead of raising, so a command
can report every problem in every file at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

    from cnnbuild.source import Document

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

SEVERITIES = ("error", "warning", "info")

# machine-readable kinds of finding, in ``Finding.extra["code"]``, for code that acts on them
UNKNOWN_KEY = "unknown-key"  # a key (argument, parameter) its mapping does not take


@dataclass(frozen=True)
class Position:
    """A 1-based line/column span in a source file."""

    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None


@dataclass
class Finding:
    """One problem found in a config.

    Attributes:
        file: path of the config as the user gave it.
        line: 1-based line (0 when the problem is about the whole file).
        column: 1-based column.
        severity: "error", "warning" or "info".
        rule: stable rule id, e.g. ``schema`` or ``dense-on-4d``.
        message: one sentence: what happened, what was expected, what was received.
        path: dotted location inside the config, e.g. ``layers[3].Conv2D.strides``.
        hint: how to fix it, when we know.
    """

    file: str
    line: int
    column: int
    severity: str
    rule: str
    message: str
    path: str = ""
    hint: str = ""
    end_line: int | None = None
    end_column: int | None = None
    extra: dict = field(default_factory=dict)

    def format(self) -> str:
        """Render as ``FILE:LINE:COL: severity: [path: ]message [rule]``."""
        where = f"{self.path}: " if self.path else ""
        text = f"{self.file}:{self.line}:{self.column}: {self.severity}: {where}{self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return f"{text} [{self.rule}]"

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("extra")
        return data


class CnnbuildError(Exception):
    """An error in user input or in a run, shown as a message with exit code 1."""

    exit_code = EXIT_INVALID

    def __init__(self, message: str, findings: list[Finding] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.findings = findings or []


class ConfigError(CnnbuildError):
    """A config that does not validate; carries every finding."""


class UsageError(CnnbuildError):
    """Wrong use of a command (exit 2)."""

    exit_code = EXIT_USAGE


class DataError(CnnbuildError):
    """A dataset that cannot be found, downloaded, verified or parsed."""


class RunError(CnnbuildError):
    """A training or evaluation run that failed."""


class WriteError(CnnbuildError):
    """What the OS refused, in every command: a file that could not be written or read,
    or a folder not made (disk full, read-only, a path under a file). The message names
    the path and what to do (see :func:`cnnbuild.io.os_error_message`); exit 1."""


class Interrupted(RunError):
    """A run stopped by SIGINT or SIGTERM after saving what it had (exit 130)."""

    exit_code = EXIT_INTERRUPTED


def shape_str(shape: tuple | list | None) -> str:
    """Format a shape as a Python tuple, ``(32, 32, 3)``; ``None`` dims stay ``None``."""
    if shape is None:
        return "?"
    items = tuple(None if d is None else int(d) for d in shape)
    return str(items)


def _meant(word: str, options: Iterable[str], n: int, cutoff: float) -> list[str]:
    """Up to ``n`` options ``word`` most likely meant (typos), else one that differs only
    in case."""
    from difflib import get_close_matches

    options = [str(o) for o in options]
    close = get_close_matches(word, options, n=n, cutoff=cutoff)
    return close or [o for o in options if o.lower() == word.lower()][:1]


def closest(word: str, options: Iterable[str]) -> str | None:
    """The option ``word`` most likely meant (a typo or a case slip), if any."""
    close = _meant(word, options, 1, 0.6)
    return close[0] if close else None


def suggest(word: str, options: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> str:
    """``"; did you mean 'Conv2D'?"`` for the closest option (up to ``n`` of them, joined
    by "or"), or ``""``. The one "did you mean" of every command and message."""
    close = _meant(word, options, n, cutoff)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def pydantic_message(error: dict) -> str:
    """pydantic's message for one error, without its ``Value error, `` prefix."""
    return error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")


def pydantic_problems(
    exc: ValidationError, where: Callable[[tuple], str], limit: int | None = None
) -> str:
    """``WHERE: message; WHERE: message`` for the errors of a pydantic ValidationError.

    Args:
        exc: the error.
        where: names an error's location (``loc``) as the user knows it, e.g. a flag.
        limit: at most this many errors.
    """
    return "; ".join(f"{where(e['loc'])}: {pydantic_message(e)}" for e in exc.errors()[:limit])


def from_pydantic(
    doc: Document,
    exc: ValidationError,
    base: tuple,
    data: Any,
    what: str,
    fields: Iterable[str] = (),
    note: str = "",
) -> list[Finding]:
    """Turn a pydantic error into findings at the YAML location of each bad value.

    pydantic's ``loc`` may hold union-member segments that are not in the document;
    only segments that exist in ``data`` are kept (so a location is always a real path).
    A misspelt argument gives one finding, not a second "needs" for the field it meant.

    Args:
        doc: the document (a :class:`cnnbuild.source.Document`).
        exc: the error.
        base: the path of ``data`` in the document.
        data: the mapping that was validated.
        what: how to name its owner in messages, e.g. ``Conv2D``.
        fields: the names the model accepts, for suggestions.
        note: appended to every message (where a template was used).
    """
    fields = list(fields)
    out: list[Finding] = []
    seen: set[tuple] = set()
    errors = exc.errors()
    meant = {closest(str(e["loc"][-1]), fields) for e in errors if e["type"] == "extra_forbidden"}
    for err in errors:
        path: list = []
        node = data
        loc = list(err["loc"])
        for seg in loc:
            if (isinstance(node, dict) and seg in node) or (
                isinstance(node, list) and isinstance(seg, int) and 0 <= seg < len(node)
            ):
                path.append(seg)
                node = node[seg]
        full = (*base, *path)
        typ = err["type"]
        if typ == "missing" and loc and loc[-1] in meant:
            continue
        if (full, typ) in seen:
            continue
        seen.add((full, typ))
        if typ == "extra_forbidden":
            key = loc[-1]
            msg = f"unknown argument {key!r} for {what}{suggest(str(key), fields)}"
            finding = doc.finding(full, msg + note, prefer="key")
            finding.extra["code"] = UNKNOWN_KEY
            out.append(finding)
        elif typ == "missing":
            out.append(doc.finding(full, f"{what} needs `{loc[-1]}`{note}", prefer="key"))
        else:
            out.append(doc.finding(full, pydantic_message(err) + note))
    return out
