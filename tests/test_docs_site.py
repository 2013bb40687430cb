"""The documentation site builds with ``mkdocs build --strict`` (a broken link, a missing
include or an unknown generated section fails), and its reference pages hold everything
the code defines: every layer kind of ``cnnbuild layers --json``, every command of
``cnnbuild --help``, every lint rule, the JSON Schema."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys

import pytest

from cnnbuild.checks import RULES
from tests.conftest import CONFIGS, ROOT, run_process


def _cnnbuild(*args: str) -> str:
    done = run_process(*args, columns=200, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once from the working tree into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _page(site, path: str) -> str:
    return (site / path / "index.html").read_text(encoding="utf-8")


def _ids(text: str) -> set[str]:
    return set(re.findall(r'<h[1-6] id="([^"]+)"', text))


def test_every_layer_kind_has_its_section_with_arguments(site):
    page = _page(site, "reference/layers")
    kinds = [row["name"] for row in json.loads(_cnnbuild("layers", "--json"))]
    assert kinds
    ids = _ids(page)
    summary = page[: page.index("</table>")]
    for kind in kinds:
        assert kind.lower() in ids, kind
        assert f"<td>{kind}</td>" in summary, kind
    detail = json.loads(_cnnbuild("layers", "Conv2D", "--json"))
    section = page.split('id="conv2d"', 1)[1].split("<h2", 1)[0]
    cells = [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", section)]
    for arg in detail["args"]:
        assert f"<code>{arg['name']}</code>" in cells, arg["name"]
        assert f"<code>{arg['type']}</code>" in cells, arg["type"]


def test_every_command_of_the_help_has_its_section(site):
    page = _page(site, "reference/commands")
    listed = re.findall(r"^│ ([a-z]+) ", _cnnbuild("--help"), re.M)
    assert len(listed) >= 16
    ids = _ids(page)
    for command in listed:
        assert f"cnnbuild-{command}" in ids, command
        assert f"cnnbuild {command} [OPTIONS]" in page, command
    section = page.split('id="cnnbuild-train"', 1)[1].split("<h3", 1)[0]
    assert "<code>--epochs</code>" in section and "<code>INTEGER</code>" in section
    assert "&lt;bool&gt;" not in page and "&lt;int&gt;" not in page


def test_every_lint_rule_is_in_the_table_with_its_severity(site):
    page = html.unescape(_page(site, "reference/lint-rules"))
    for rule in RULES.values():
        ignorable = "yes" if rule.ignorable else "no"
        cells = [f"<code>{re.escape(rule.id)}</code>", rule.severity, ignorable]
        row = r"\s*".join(f"<td>{c}</td>" for c in cells)
        assert re.search(row, page), rule.id


def test_the_schema_page_is_the_committed_schema(site):
    page = _page(site, "reference/schema")
    block = page[page.index("<pre") : page.index("</pre>")]
    shown = html.unescape(re.sub(r"<[^>]+>", "", block))
    schema = json.loads((ROOT / "schema" / "cnnbuild.schema.json").read_text())
    assert json.loads(shown) == schema


def test_the_config_format_guide_shows_the_shipped_tutorial_config(site):
    page = html.unescape(re.sub(r"<[^>]+>", "", _page(site, "guides/config-format")))
    assert (CONFIGS / "cifar10_tutorial.yaml").read_text().strip() in page


def test_no_marker_is_left_and_the_pages_of_the_other_guides_are_in_the_nav(site):
    for page in site.rglob("*.html"):
        assert "<!-- generated:" not in page.read_text(encoding="utf-8"), page
    nav = _page(site, "")
    for guide in ("own-images", "fine-tuning", "training-speed", "model-review", "light-install"):
        assert f'href="guides/{guide}/"' in nav, guide
