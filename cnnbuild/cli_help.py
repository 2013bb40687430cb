"""How ``cnnbuild --help`` reads: commands in panels, types as users read them, no hard wraps.

Typer shows a parameter's Python type (``<bool>``, ``<list[str]>``, ``{paths}...``) and keeps
a docstring's line breaks, so help breaks mid-sentence in a wide terminal. :class:`Command`
and :class:`Group` show ``INTEGER``, ``PATH``, ``TEXT``, a choice as its values, nothing for
a flag, arguments as ``CONFIG`` / ``PATHS...``, and each help paragraph as one line that
rich wraps to the terminal. ``cli`` gives every command ``cls=Command`` and a panel.
"""

from __future__ import annotations

import inspect

import typer
import typer.core

WRITE, TRAIN, LOOK, SHIP = "Write and check", "Train", "Look inside", "Ship"
PANELS = (WRITE, TRAIN, LOOK, SHIP)
"""The help panels, in order: commands grouped by what a user is doing."""

_TYPE_NAMES = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "bool": ""}


def _readable_type(label: str | None) -> str | None:
    """Typer's ``<int>``, ``<list[str]>``, ``<path>`` as users read them: INTEGER, TEXT, PATH.

    Choices stay a list of the values (``text|json``); a flag shows no type.
    """
    if not label:
        return label
    label = label.removeprefix("<").removesuffix(">").removesuffix(" range")
    if label.startswith("list[") and label.endswith("]"):
        label = label[5:-1]
    if "|" in label:
        return label
    return _TYPE_NAMES.get(label, label.upper())


def _one_paragraph_per_line(text: str | None) -> str | None:
    """Help text with each paragraph on one line, so rich wraps it to the terminal."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


class _Option(typer.core.TyperOption):
    def display_type_rich(self, ctx):
        return self.metavar or _readable_type(super().display_type_rich(ctx)) or None


class _Argument(typer.core.TyperArgument):
    @property
    def display_name_raw(self) -> str:
        return self.metavar or self.name.upper()

    def _usage_display_name(self) -> str:
        name = self.display_name_raw + ("..." if self.nargs != 1 else "")
        return name if self.required else f"[{name}]"

    def display_type_rich(self, ctx):
        return _readable_type(super().display_type_rich(ctx).removesuffix("...")) or None


def _readable_params(params: list) -> list:
    """Typer builds each parameter itself, with no hook for its class: give each the
    subclass above, which only changes how it is shown."""
    for param in params:
        if type(param) is typer.core.TyperOption:
            param.__class__ = _Option
        elif type(param) is typer.core.TyperArgument:
            param.__class__ = _Argument
    return params


class Command(typer.core.TyperCommand):
    """A command whose help reads as users write it: PATH, INTEGER, TEXT; no hard wraps."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.help = _one_paragraph_per_line(self.help)

    def get_params(self, ctx):
        return _readable_params(super().get_params(ctx))


class Group(typer.core.TyperGroup):
    """The root command: the same readable help, commands in panels."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.help = _one_paragraph_per_line(self.help)

    def get_params(self, ctx):
        return _readable_params(super().get_params(ctx))

    def list_commands(self, ctx) -> list[str]:
        """Commands panel by panel (Write and check, Train, Look inside, Ship)."""
        order = {panel: i for i, panel in enumerate(PANELS)}
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: order.get(self.commands[n].rich_help_panel, 99))
