"""User-facing findings and errors.

A :class:`Finding` is one problem (or remark) about one place in one config file.
Everything that checks user input returns findings instead of raising, so a command
can report every problem in every file at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

SEVERITIES = ("error", "warning", "info")


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
    """A file could not be written or a folder made (disk full, read-only, not a folder)."""


class Interrupted(RunError):
    """A run stopped by SIGINT or SIGTERM after saving what it had (exit 130)."""

    exit_code = EXIT_INTERRUPTED


def shape_str(shape: tuple | list | None) -> str:
    """Format a shape as a Python tuple, ``(32, 32, 3)``; ``None`` dims stay ``None``."""
    if shape is None:
        return "?"
    items = tuple(None if d is None else int(d) for d in shape)
    return str(items)
