"""Every example of a TensorFlow-free command in the README and the docs pages prints what
the page shows."""

from __future__ import annotations

import pytest

from tests.readme_examples import ROOT, examples, is_static, pages, run

EXAMPLES = [(page, e) for page in pages() for e in examples(page.read_text())]
IDS = [f"{page.relative_to(ROOT)}: {e.command}" for page, e in EXAMPLES]


def test_the_pages_have_static_examples_of_each_command():
    commands = {e.argv[1] for _, e in EXAMPLES}
    assert {"validate", "summary", "trace", "layers", "--help"} <= commands, commands


def test_the_guides_hold_examples():
    assert {page.relative_to(ROOT).as_posix() for page, _ in EXAMPLES} >= {
        "README.md",
        "docs/guides/check.md",
        "docs/guides/tuning.md",
    }


@pytest.mark.parametrize(("page", "example"), EXAMPLES, ids=IDS)
def test_pasted_output_is_the_real_output(page, example):
    output, code = run(example)
    assert output == example.pasted, (
        f"{page.relative_to(ROOT)}: example `{example.command}` drifted; run: "
        "python -m tests.readme_examples --update"
    )
    if example.exit_code is not None:
        assert code == example.exit_code


@pytest.mark.parametrize(
    ("line", "static"),
    [
        ("cnnbuild validate configs/", True),
        ("cnnbuild summary configs/a.yaml", False),
        ("cnnbuild summary configs/a.yaml --static", True),
        ("cnnbuild trace configs/a.yaml", True),
        ("cnnbuild trace configs/a.yaml --run", False),
        ("cnnbuild trace configs/a.yaml --grads", False),
        ("cnnbuild train configs/a.yaml", False),
        ("make demo", False),
        ("cnnbuild --help", True),
        ("cnnbuild train --help", True),
    ],
)
def test_which_commands_are_static(line, static):
    assert is_static(line.split()) is static
