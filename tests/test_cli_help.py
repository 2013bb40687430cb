"""``cnnbuild --help`` guides: commands in panels, each first line says when to use it,
metavars as users read them (INTEGER, PATH, TEXT), text wrapped by rich, not the source."""

from __future__ import annotations

import re

import pytest
import typer

from cnnbuild.cli import app
from cnnbuild.cli_help import LOOK, SHIP, TRAIN, WRITE
from tests.conftest import run_process

GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)
PANELS = {
    WRITE: {"validate", "diff", "summary", "trace", "schema", "layers"},
    TRAIN: {"train", "tune", "evaluate"},
    LOOK: {"show", "plot", "report"},
    SHIP: {"build", "import", "export", "predict"},
}
# Typer's own type labels: <bool>, <int>, <list[str]>, <text|json>, {paths}...
TYPER_LABEL = re.compile(r"<[a-z][a-z_\[\]|, ]*>|\{[a-z_]+\}")


def _help(*args: str, columns: int = 200) -> str:
    done = run_process(*args, "--help", columns=columns, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _panels(text: str) -> dict[str, set[str]]:
    """Panel title -> the command names listed in it, read from the rendered help."""
    panels, current = {}, None
    for line in text.splitlines():
        if title := re.match(r"╭─ (.+?) ─", line):
            current = panels.setdefault(title.group(1), set())
        elif current is not None and (row := re.match(r"│ (\S+) ", line)):
            current.add(row.group(1))
    return panels


def test_the_root_help_groups_every_command_in_panels():
    panels = _panels(_help())
    panels.pop("Options")
    assert len(panels) >= 3
    assert panels == PANELS
    assert set().union(*panels.values()) == set(COMMANDS)


def test_the_panels_come_in_the_order_of_the_work():
    text = _help()
    assert [text.index(f"╭─ {p} ") for p in (WRITE, TRAIN, LOOK, SHIP)] == sorted(
        text.index(f"╭─ {p} ") for p in (WRITE, TRAIN, LOOK, SHIP)
    )


@pytest.mark.parametrize("name", COMMANDS)
def test_a_command_help_shows_types_as_users_read_them(cli, name):
    result = cli(name, "--help")
    assert result.exit_code == 0, result.output
    assert not TYPER_LABEL.findall(result.output), result.output
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert usage.rstrip().endswith(("]", "...", *(a.upper() for a in _arguments(name)))), usage


def _arguments(name: str) -> list[str]:
    return [p.name for p in GROUP.commands[name].params if p.param_type_name == "argument"]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_paragraphs_are_not_wrapped_in_the_source(name):
    """Each paragraph is one line, so rich wraps it to the terminal, never mid-sentence."""
    help_text = GROUP.commands[name].help
    assert help_text and all("\n" not in p for p in help_text.split("\n\n")), help_text


def test_a_paragraph_reads_on_one_line_in_a_wide_terminal():
    text = _help("export", columns=300)
    assert (
        "An existing output is replaced only with --force and only when it is an earlier export "
        "(a file of the format, or a SavedModel folder with its cnnbuild_export.json)."
    ) in text


@pytest.mark.parametrize("name", COMMANDS)
def test_the_first_line_says_when_to_use_the_command(name):
    first = GROUP.commands[name].help.split("\n\n")[0]
    when, _, what = first.partition(": ")
    assert what, f"{name}: the first line should start with when to use it: {first!r}"
    assert re.match(r"(Before|When|To|Once|After|For|While) ", when), first


def test_flags_show_no_type_and_values_show_theirs():
    text = _help("train")
    assert re.search(r"--epochs\s+INTEGER\s", text)
    assert re.search(r"--out\s+PATH\s", text)
    assert re.search(r"--dataset\s+TEXT\s", text)
    assert re.search(r"--device\s+auto\|cpu\|gpu\s", text)
    assert re.search(r"--xla\s+--no-xla\s+XLA jit_compile", text)
