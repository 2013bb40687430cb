"""The examples of TensorFlow-free commands in the README and the docs pages, run for real.

A code block of the README or of a page under ``docs/`` holds ``$ cnnbuild ...`` lines, each
followed by what the command printed. For the commands that never import TensorFlow
(``validate``, ``summary --static``, ``trace`` without ``--run``/``--grads``, ``layers``,
``schema``, ``diff``, any ``--help``), the pasted output must be what the command prints now;
``$ echo $?`` after one shows its exit code. Examples that depend on a state the repository
does not hold are samples and are not run: those after another command in the same block (it
made the state: ``cnnbuild import ... -o m.yaml``) and those that read a git revision
(``HEAD:PATH``, ``--baseline REF``: a working copy with changes, as the guide describes).
``tests/test_readme_examples.py`` checks that, and::

    python -m tests.readme_examples --update

rewrites the pasted outputs of every page in place after a deliberate change of output.
Output is read as the CLI prints it to a pipe (rich tables 160 columns wide), from the
repository root.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def pages() -> list[Path]:
    """The README and every Markdown page of the documentation site."""
    return [README, *sorted(DOCS.rglob("*.md"))]


_STATIC = {"validate", "layers", "schema", "diff"}
# what the installed ``cnnbuild`` script runs, under its name (usage lines say ``cnnbuild``)
_CONSOLE_SCRIPT = "import sys; sys.argv[0] = 'cnnbuild'; from cnnbuild.cli import main; main()"
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```$", re.M | re.S)


@dataclass
class Example:
    """One ``$ cnnbuild`` line of the README and the output pasted under it."""

    command: str
    argv: list[str]
    pasted: list[str]
    exit_code: int | None
    """The ``$ echo $?`` line's value after it, when there is one."""
    span: tuple[int, int]
    """Character offsets in the README of the pasted output (and any ``echo $?`` block)."""


def is_static(argv: list[str]) -> bool:
    """Whether a ``cnnbuild`` command line never imports TensorFlow."""
    if len(argv) < 2 or argv[0] != "cnnbuild":
        return False
    if argv[-1] in ("--help", "-h"):
        return True
    sub = argv[1]
    if sub == "summary":
        return "--static" in argv
    if sub == "trace":
        return not {"--run", "--grads", "--weights"} & set(argv)
    return sub in _STATIC


def reads_git(argv: list[str]) -> bool:
    """Whether a command reads a git revision (``--baseline``, or a ``REF:PATH`` argument)."""
    return "--baseline" in argv or any(
        ":" in arg and not arg.startswith("-") and not (ROOT / arg).exists() for arg in argv[2:]
    )


def _command(line: str) -> list[str] | None:
    if not line.startswith("$ "):
        return None
    text = line[2:].split("  #", 1)[0].strip()
    try:
        return shlex.split(text)
    except ValueError:
        return None


def examples(text: str) -> list[Example]:
    """Every static ``$ cnnbuild`` example of ``text`` with its pasted output."""
    found = []
    for block in _FENCE.finditer(text):
        body, start = block.group(1), block.start(1)
        lines = body.splitlines(keepends=True)
        offsets = [start]
        for line in lines:
            offsets.append(offsets[-1] + len(line))
        i = 0
        while i < len(lines):
            argv = _command(lines[i])
            if argv is None:
                i += 1
                continue
            if not is_static(argv) or reads_git(argv):
                break  # a sample, and what follows it in this block depends on it

            j = i + 1
            while j < len(lines) and not lines[j].startswith("$ "):
                j += 1
            pasted = [line.rstrip("\n") for line in lines[i + 1 : j]]
            end, exit_code = j, None
            if j < len(lines) and lines[j].strip() == "$ echo $?" and j + 1 < len(lines):
                exit_code = int(lines[j + 1].strip())
                end = j + 2
            found.append(
                Example(
                    lines[i][2:].strip(), argv, pasted, exit_code, (offsets[i + 1], offsets[end])
                )
            )
            i = end
    return found


def run(example: Example) -> tuple[list[str], int]:
    """Run an example's command from the repository root; its output lines and exit code."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-c", _CONSOLE_SCRIPT, *example.argv[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = (done.stdout + done.stderr).rstrip("\n")
    return [line.rstrip() for line in out.splitlines()], done.returncode


def _render(example: Example, output: list[str], code: int) -> str:
    text = "".join(line + "\n" for line in output)
    if example.exit_code is not None:
        text += f"$ echo $?\n{code}\n"
    return text


def update(path: Path = README) -> int:
    """Rewrite every static example's pasted output in ``path``; the number changed."""
    text = path.read_text()
    changed = 0
    for example in reversed(examples(text)):
        output, code = run(example)
        new = _render(example, output, code)
        lo, hi = example.span
        if text[lo:hi] != new:
            text = text[:lo] + new + text[hi:]
            changed += 1
    path.write_text(text)
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python -m tests.readme_examples --update")
    for page in pages():
        if changed := update(page):
            print(f"{changed} example(s) rewritten in {page.relative_to(ROOT)}")
