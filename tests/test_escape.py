"""``markdown_cell``: any text shows as written in a Markdown table cell, rendered by the
same Python-Markdown the docs site uses."""

from __future__ import annotations

import html
import re

import pytest

from cnnbuild.escape import markdown_cell

markdown = pytest.importorskip("markdown", reason="the docs extra installs Python-Markdown")

TEXTS = [
    r"str matching ^[A-Za-z_][A-Za-z0-9_.\-]*$ | null",
    "<bool> & <list[str]>",
    "one of: valid, same",
    "*bold* __init__ `code` [link](http://x)",
    "a\\|b",
    "two\nlines\u2028here",
]


@pytest.mark.parametrize("code", [False, True])
@pytest.mark.parametrize("text", TEXTS)
def test_a_cell_shows_its_text_as_written(text, code):
    table = f"| a | b |\n|---|---|\n| {markdown_cell(text, code=code)} | x |\n"
    rendered = markdown.markdown(table, extensions=["tables"])
    cells = re.findall(r"<td>(.*?)</td>", rendered, re.S)
    assert len(cells) == 2 and cells[1] == "x", rendered
    shown = cells[0]
    if code:
        assert shown.startswith("<code>") and shown.endswith("</code>"), shown
        shown = shown[len("<code>") : -len("</code>")]
    assert "<" not in shown, shown
    expected = " ".join(text.split())
    assert html.unescape(shown) == expected
