"""Every README example of a TensorFlow-free command prints what the README shows."""

from __future__ import annotations

import pytest

from tests.readme_examples import README, examples, is_static, run

EXAMPLES = examples(README.read_text())


def test_the_readme_has_static_examples_of_each_command():
    commands = {e.argv[1] for e in EXAMPLES}
    assert {"validate", "summary", "trace", "layers"} <= commands, commands


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.command for e in EXAMPLES])
def test_pasted_output_is_the_real_output(example):
    output, code = run(example)
    assert output == example.pasted, (
        f"README example `{example.command}` drifted; run: python -m tests.readme_examples --update"
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
    ],
)
def test_which_commands_are_static(line, static):
    assert is_static(line.split()) is static
