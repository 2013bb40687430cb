"""Model review: `cnnbuild diff` (alignment, JSON, markdown, REF:PATH through a real git
repository, exit codes) and `validate --baseline REF` (growth limits, notes, markdown)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cnnbuild.review import compare, is_changed
from cnnbuild.validate import load_traced
from tests.conftest import CONFIGS, ROOT

TUTORIAL = (CONFIGS / "cifar10_tutorial.yaml").read_text()
FIRST_CONV = "  - Conv2D: {filters: 32, kernel_size: 3, activation: relu}\n"
THIRD_CONV = "  - Conv2D: {filters: 64, kernel_size: 3, activation: relu}"
GROWTH = "budget:\n  growth: {{params: {limit}, macs: 50%}}\n"


def edited(text: str = TUTORIAL) -> str:
    """The issue's change: a BatchNormalization after the first conv, the third conv 64->96."""
    assert text.count(FIRST_CONV) == 1 and text.count(THIRD_CONV) == 1
    text = text.replace(FIRST_CONV, FIRST_CONV + "  - BatchNormalization\n")
    return text.replace(THIRD_CONV, THIRD_CONV.replace("64", "96"))


def git(repo, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A real git repository holding the tutorial config as model.yaml, committed; the
    working copy has the issue's change. The current directory is the repository."""
    git(tmp_path, "init", "-q")
    (tmp_path / "model.yaml").write_text(TUTORIAL)
    git(tmp_path, "add", "model.yaml")
    git(tmp_path, "commit", "-qm", "base")
    (tmp_path / "model.yaml").write_text(edited())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def summary_json(cli, path) -> dict:
    result = cli("summary", "--static", "--json", path)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def check_done_when(data: dict, old_summary: dict, new_summary: dict) -> None:
    """The issue's 'Done when': one added, conv/Flatten/Dense changed, deltas as summary."""
    changes = [(r["change"], (r["new"] or r["old"])["name"]) for r in data["layers"]]
    assert [c for c in changes if c[0] == "added"] == [("added", "batch_normalization")]
    assert [c for c in changes if c[0] == "changed"] == [
        ("changed", "conv2d_2"),
        ("changed", "flatten"),
        ("changed", "dense"),
    ]
    assert [c[0] for c in changes].count("unchanged") == len(changes) - 4
    assert not [c for c in changes if c[0] == "removed"]
    assert data["counts"] == {"added": 1, "removed": 0, "changed": 3, "unchanged": 6}
    for key in ("total_params", "trainable_params", "non_trainable_params", "macs"):
        assert data["delta"][key] == new_summary[key] - old_summary[key], key
    assert data["delta"]["activation_bytes"] == (
        new_summary["activation_bytes"] - old_summary["activation_bytes"]
    )
    for dtype, size in new_summary["weight_bytes"].items():
        assert data["delta"]["weight_bytes"][dtype] == size - old_summary["weight_bytes"][dtype]
    for side, summary in (("old", old_summary), ("new", new_summary)):
        expected = {k: v for k, v in summary.items() if k != "layers"}
        assert {k: v for k, v in data[side].items() if k != "file"} == expected
    conv = next(r for r in data["layers"] if r["change"] == "changed")
    assert conv["arguments"] == {"filters": {"old": 64, "new": 96}}
    assert conv["old"].keys() == {"name", "type", "output_shape", "params", "macs"}


def test_done_when_between_two_files(cli, tmp_path):
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(TUTORIAL)
    new.write_text(edited())
    result = cli("diff", old, new, "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"old", "new", "delta", "percent", "not_comparable", "layers", "counts"}
    assert data["not_comparable"] == []
    check_done_when(data, summary_json(cli, old), summary_json(cli, new))
    assert data["percent"]["total_params"] == pytest.approx(
        100 * data["delta"]["total_params"] / data["old"]["total_params"], abs=1e-3
    )


def test_done_when_through_git_head(cli, repo):
    result = cli("diff", "HEAD:model.yaml", "model.yaml", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["old"]["file"] == "HEAD:model.yaml"
    (repo / "old.yaml").write_text(TUTORIAL)  # the same text, as a file, for summary
    check_done_when(data, summary_json(cli, repo / "old.yaml"), summary_json(cli, "model.yaml"))


def test_same_model_is_all_unchanged_and_removal_is_one_row(tmp_path):
    _, a = load_traced(CONFIGS / "cifar10_tutorial.yaml")
    assert {r["change"] for r in compare(a, a, "a", "a")["layers"]} == {"unchanged"}
    path = tmp_path / "fewer.yaml"
    path.write_text(TUTORIAL.replace("  - Dense: {units: 64, activation: relu}\n", ""))
    _, b = load_traced(path)
    data = compare(a, b, "a", "b")
    removed = [r for r in data["layers"] if r["change"] == "removed"]
    assert [r["old"]["name"] for r in removed] == ["dense"]
    assert removed[0]["new"] is None
    changed = [r for r in data["layers"] if r["change"] == "changed"]
    changed = [(r["old"]["name"], r["new"]["name"]) for r in changed]
    assert changed == [("dense_1", "dense")]  # renamed by Keras; reads 1024 features, not 64


def test_text_and_markdown(cli, repo):
    text = cli("diff", "HEAD:model.yaml", "model.yaml")
    assert text.exit_code == 0, text.output
    assert "(4, 4, 64) → (4, 4, 96)" in text.stdout
    assert "1 added, 3 changed, 6 unchanged" in text.stdout
    md = cli("diff", "HEAD:model.yaml", "model.yaml", "--format", "markdown").stdout
    lines = md.splitlines()
    assert lines[0] == "### cnnbuild diff: `HEAD:model.yaml` → `model.yaml`"
    added = (
        "| **added** | `batch_normalization` | `BatchNormalization` | (30, 30, 32) | 128 | 0 |  |"
    )
    assert added in lines
    assert "| Parameters | 122,570 | 173,930 | +51,360 | +41.9% |" in lines
    rows = [line for line in lines if line.startswith("| ") and "Rescaling" in line]
    assert rows == ["| unchanged | `input_scaling` | `Rescaling` | (32, 32, 3) | 0 | 0 |  |"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["HEAD:model.yaml", "nowhere.yaml"], 2, "no such config file: 'nowhere.yaml'"),
        (["HEAD:missing.yaml", "model.yaml"], 2, "'missing.yaml' does not exist at revision"),
        (["nobranch:model.yaml", "model.yaml"], 2, "unknown git revision 'nobranch'"),
        (["--", "-x:model.yaml", "model.yaml"], 2, "is not a git revision"),
        (["C:\\models\\a.yaml", "model.yaml"], 2, "no such config file"),
        (["model.yaml"], 2, "Missing argument"),
        (["HEAD:", "model.yaml"], 2, "'HEAD:'; read as REF:PATH, it names no path (e.g. HEAD:"),
        (["model.yaml", "model.yaml", "--format", "html"], 2, "Invalid value"),
    ],
)
def test_usage_errors_exit_2(cli, repo, args, code, message):
    result = cli("diff", *args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_folder_at_the_revision_is_a_usage_error(cli, repo):
    (repo / "sub").mkdir()
    (repo / "sub" / "a.yaml").write_text(TUTORIAL)
    git(repo, "add", "sub")
    git(repo, "commit", "-qm", "sub")
    result = cli("diff", "HEAD:sub", "model.yaml")
    assert result.exit_code == 2, result.output
    assert "HEAD:sub: is a tree, not a file" in result.output
    assert cli("diff", "sub", "model.yaml").exit_code == 2


def test_an_invalid_side_exits_1_with_its_findings(cli, repo):
    (repo / "bad.yaml").write_text("input: [32, 32, 3]\nlayers:\n  - Conv2d: {filters: 8}\n")
    result = cli("diff", "HEAD:model.yaml", "bad.yaml")
    assert result.exit_code == 1, result.output
    assert "bad.yaml:3:5: error:" in result.output
    assert "did you mean 'Conv2D'" in result.output


def test_not_a_repository_exits_2(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.yaml").write_text(TUTORIAL)
    result = cli("diff", "HEAD:model.yaml", "model.yaml")
    assert result.exit_code == 2, result.output
    assert "is not in a git repository" in result.output
    result = cli("validate", "--baseline", "HEAD", "model.yaml")
    assert result.exit_code == 2, result.output
    assert "is not in a git repository" in result.output


def test_a_missing_file_with_a_colon_says_both_readings(cli, repo):
    result = cli("diff", "models:v2.yaml", "model.yaml")
    assert result.exit_code == 2, result.output
    assert "no such config file: 'models:v2.yaml'; read as REF:PATH: unknown git revision" in (
        result.output
    )


def test_an_existing_file_with_a_colon_is_a_file(cli, repo):
    (repo / "HEAD:model.yaml").write_text(edited())  # a file by that very name
    data = json.loads(cli("diff", "HEAD:model.yaml", "model.yaml", "--format", "json").stdout)
    assert data["counts"]["unchanged"] == len(data["layers"])


def test_a_too_big_blob_is_refused_unread(cli, repo):
    (repo / "big.yaml").write_text("# " + "x" * 2_100_000 + "\n")
    git(repo, "add", "big.yaml")
    git(repo, "commit", "-qm", "big")
    result = cli("diff", "HEAD:big.yaml", "model.yaml")
    assert result.exit_code == 1, result.output
    assert "a model config is at most 2000000 bytes" in result.output


# -- validate --baseline ----------------------------------------------------------------


def with_growth(repo, limit: str) -> None:
    """Commit the tutorial with a growth budget; leave the edited model in the work tree."""
    budget = GROWTH.format(limit=limit)
    (repo / "model.yaml").write_text(TUTORIAL + budget)
    git(repo, "commit", "-qam", "budget")
    (repo / "model.yaml").write_text(edited() + budget)


def test_growth_below_the_real_growth_fails(cli, repo):
    with_growth(repo, "10%")  # the change adds 41.9% parameters
    result = cli("validate", "--baseline", "HEAD", "model.yaml")
    assert result.exit_code == 1, result.output
    line = next(ln for ln in result.stdout.splitlines() if "[budget]" in ln)
    assert line.startswith("model.yaml:26:12: error: budget.growth.params: parameters grew")
    assert "+41.9% against HEAD (122,570 (122.6K) -> 173,930 (173.9K))" in line
    assert "over the fail limit of 10%" in line
    assert "model.yaml: against HEAD: parameters 122,570 → 173,930 (+51,360, +41.9%)" in (
        result.stdout
    )


def test_a_renamed_config_is_compared_with_its_old_path(cli, repo):
    # found by the stranger tests: `git mv` made the config "new", escaping its growth limit
    with_growth(repo, "10%")
    git(repo, "mv", "model.yaml", "renamed.yaml")
    result = cli("validate", "--baseline", "HEAD", "renamed.yaml")
    assert result.exit_code == 1, result.output
    assert "renamed.yaml:0:0: info: renamed from model.yaml since HEAD: compared with it" in (
        result.stdout
    )
    assert "renamed.yaml:26:12: error: budget.growth.params: parameters grew +41.9%" in (
        result.stdout
    )


def test_an_empty_baseline_is_a_usage_error_not_no_baseline(cli, repo):
    # found by the stranger tests: `--baseline "$BASE_SHA"` with an empty variable ran
    # without any baseline, so no growth limit was checked, and passed
    with_growth(repo, "10%")
    result = cli("validate", "--baseline", "", "model.yaml")
    assert result.exit_code == 2, result.output
    assert "'' is not a git revision" in result.output


def test_growth_above_the_real_growth_passes(cli, repo):
    with_growth(repo, "50%")
    result = cli("validate", "--baseline", "HEAD", "model.yaml")
    assert result.exit_code == 0, result.output
    assert "[budget]" not in result.stdout


def test_warn_tier_warns_and_strict_fails(cli, repo):
    with_growth(repo, "{warn: 20%, fail: 50%}")
    result = cli("validate", "--baseline", "HEAD", "model.yaml")
    assert result.exit_code == 0, result.output
    assert "warning: budget.growth.params:" in result.stdout
    assert "over the warn limit of 20%" in result.stdout
    assert cli("validate", "--baseline", "HEAD", "--strict", "model.yaml").exit_code == 1
    ignored = cli("validate", "--baseline", "HEAD", "--ignore", "budget", "model.yaml")
    assert "[budget]" not in ignored.stdout


def test_new_file_gets_a_note_and_markdown_names_model_and_deltas(cli, repo):
    with_growth(repo, "10%")
    (repo / "extra.yaml").write_text(TUTORIAL)
    result = cli("validate", "--baseline", "HEAD", ".", "--format", "markdown")
    assert result.exit_code == 1, result.output
    md = result.stdout
    assert md.startswith("### cnnbuild: models against `HEAD`\n")
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert rows == [
        "| `extra.yaml` | new config | | | | |",
        "| `model.yaml` (`cifar10_tutorial`) | 122,570 → 173,930 (+51,360, +41.9%) | "
        "4,548,608 → 4,876,288 (+327,680, +7.2%) | 224.2 KiB → 340.7 KiB (+116.5 KiB, +52.0%) "
        "| 478.8 KiB → 679.4 KiB (+200.6 KiB, +41.9%) | 1 added, 3 changed |",
    ]
    assert "**validate fails**: 1 error(s), 0 warning(s)." in md
    assert (
        "- `model.yaml:26:12` error: `budget.growth.params: parameters grew +41.9% against HEAD"
        in md
    )
    as_json = cli("validate", "--baseline", "HEAD", "extra.yaml", "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    notes = json.loads(as_json.stdout)
    assert [(n["severity"], n["rule"]) for n in notes] == [("info", "budget")]
    assert "not in HEAD: a new config, no baseline to compare with" in notes[0]["message"]


def test_unchanged_configs_give_no_row(cli, repo):
    (repo / "model.yaml").write_text(TUTORIAL.replace("epochs: 10", "epochs: 20"))
    result = cli("validate", "--baseline", "HEAD", "model.yaml", "--format", "markdown")
    assert result.exit_code == 0, result.output
    assert "No model changed against `HEAD` (1 configs checked)." in result.stdout
    assert "| `" not in result.stdout


def test_baseline_with_an_unknown_revision_exits_2(cli, repo):
    result = cli("validate", "--baseline", "v9", "model.yaml")
    assert result.exit_code == 2, result.output
    assert "unknown git revision 'v9'" in result.output


def test_diff_and_baseline_import_no_tensorflow(repo):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from cnnbuild.cli import app\n"
        "r = CliRunner()\n"
        "a = r.invoke(app, ['diff', 'HEAD:model.yaml', 'model.yaml', '--format', 'json'])\n"
        "b = r.invoke(app, ['validate', '--baseline', 'HEAD', 'model.yaml'])\n"
        "assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_a_baseline_that_does_not_validate_gets_a_note(cli, repo):
    (repo / "model.yaml").write_text("input: [32, 32, 3]\nlayers:\n  - Conv2d: {filters: 8}\n")
    git(repo, "commit", "-qam", "broken")
    (repo / "model.yaml").write_text(edited())
    result = cli("validate", "--baseline", "HEAD", "model.yaml")
    assert result.exit_code == 0, result.output
    assert "model.yaml:0:0: info: its version at HEAD does not validate; growth limits not " in (
        result.stdout
    )


def test_markdown_without_a_baseline_lists_the_findings(cli, tmp_path):
    path = tmp_path / "over.yaml"
    path.write_text(TUTORIAL + "budget:\n  params: 100K\n")
    result = cli("validate", path, "--format", "markdown")
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "### cnnbuild validate",
        "",
        "**validate fails**: 1 error(s), 0 warning(s).",
    ]
    assert lines[3] == ""
    assert lines[4].startswith(
        f"- `{path}:25:3` error: `budget.params: parameters: 122,570 (122.6K), over the"
    )


@pytest.mark.parametrize("position", range(8))
def test_inserting_a_layer_anywhere_is_one_added_row(tmp_path, position):
    """A Dropout (same shape, no weights) inserted before any layer: one `added` row at that
    place, every other layer unchanged."""
    lines = TUTORIAL.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.startswith("  - "))
    lines.insert(first + position, "  - Dropout: {rate: 0.5}\n")
    path = tmp_path / "more.yaml"
    path.write_text("".join(lines))
    _, old = load_traced(CONFIGS / "cifar10_tutorial.yaml")
    _, new = load_traced(path)
    data = compare(old, new, "old", "new")
    assert data["counts"] == {"added": 1, "removed": 0, "changed": 0, "unchanged": 9}
    added = [i for i, r in enumerate(data["layers"]) if r["change"] == "added"]
    assert added == [position + 1]  # after input_scaling
    assert data["delta"]["total_params"] == 0 and data["delta"]["macs"] == 0


def test_shifted_automatic_names_do_not_decide_the_alignment(tmp_path):
    """A 1x1 conv that keeps the shape, inserted after the first pooling: Keras renames
    every later Conv2D (conv2d_1 -> conv2d_2...), yet only the new layer is `added`."""
    pool = "  - MaxPooling2D: {pool_size: 2}\n"
    one_by_one = "  - Conv2D: {filters: 32, kernel_size: 1, activation: relu}\n"
    path = tmp_path / "more.yaml"
    path.write_text(TUTORIAL.replace(pool, pool + one_by_one))
    _, old = load_traced(CONFIGS / "cifar10_tutorial.yaml")
    _, new = load_traced(path)
    data = compare(old, new, "old", "new")
    assert data["counts"] == {"added": 1, "removed": 0, "changed": 0, "unchanged": 9}
    renamed = [
        (r["old"]["name"], r["new"]["name"])
        for r in data["layers"]
        if r["old"] and r["new"] and r["old"]["name"] != r["new"]["name"]
    ]
    assert renamed == [("conv2d_1", "conv2d_2"), ("conv2d_2", "conv2d_3")]
    added = next(r["new"] for r in data["layers"] if r["change"] == "added")
    assert added["name"] == "conv2d_1" and added["output_shape"] == [15, 15, 32]


def test_a_layer_renamed_in_the_config_is_changed_an_automatic_name_is_not(tmp_path):
    # found by the stranger tests: `name: outputs` -> `name: logits` on the output layer
    # (the model's output name) was "14 unchanged"
    last = "  - Dense: {units: 10}\n"
    _, old = load_traced(CONFIGS / "cifar10_tutorial.yaml")
    for written, change in [("logits", "changed"), ("dense_1", "unchanged")]:
        path = tmp_path / f"{written}.yaml"
        path.write_text(TUTORIAL.replace(last, last.replace("10}", f"10, name: {written}}}")))
        _, new = load_traced(path)
        data = compare(old, new, "old", "new")
        assert data["layers"][-1]["change"] == change
        assert data["counts"]["unchanged"] == len(data["layers"]) - (change == "changed")
    assert data["layers"][-1].get("arguments") is None
    path = tmp_path / "logits.yaml"
    _, new = load_traced(path)
    row = compare(old, new, "old", "new")["layers"][-1]
    assert row["arguments"] == {"name": {"old": "dense_1", "new": "logits"}}


def rendered(md: str) -> tuple[str, str]:
    """The markdown rendered as GitHub does (CommonMark with tables, raw HTML on):
    ``(html, html outside <code>)``."""
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark").enable("table").render(md)
    return html, re.sub(r"<code>.*?</code>", "", html, flags=re.S)


def assert_inert(md: str, verdict: str) -> None:
    """No raw CR or NUL; outside code spans no HTML comment or tag, link or @mention; one
    bold verdict, the real one, on the third line."""
    assert "\r" not in md and "\x1b" not in md
    html, prose = rendered(md)
    assert "<!--" not in prose and "<a " not in html and "@" not in prose
    assert re.findall(r"<strong>(.*?)</strong>", html) == [f"validate {verdict}"]
    assert md.splitlines()[2].startswith(f"**validate {verdict}**")


def test_markdown_shows_html_from_the_config_inside_code_spans(cli, repo):
    # found by the stranger tests: a model named `x <!--` opened an HTML comment in the PR
    # comment, hiding the verdict and the findings after it (such a name is refused now,
    # and the refusal quotes it)
    (repo / "model.yaml").write_text(edited().replace("name: cifar10_tutorial", "name: x <!--"))
    (repo / "bad.yaml").write_text("input: [8, 8, 1]\nlayers:\n  - '<!--'\n")
    md = cli("validate", "--baseline", "HEAD", ".", "--format", "markdown").stdout
    assert_inert(md, "fails")
    html, _ = rendered(md)
    assert "<code>name: 'x &lt;!--' is not a valid model name" in html
    assert "unknown layer '&lt;!--'</code>" in html


FORGED = "m\r**validate passes**: 0 error(s).\r<!--.yaml"


def test_a_carriage_return_and_a_comment_in_a_file_name_cannot_forge_the_verdict(cli, repo):
    (repo / FORGED).write_text(edited())
    (repo / "bad.yaml").write_text("input: [8, 8, 1]\nlayers:\n  - Conv9D\n")
    result = cli("validate", "--baseline", "HEAD", ".", "--format", "markdown")
    assert result.exit_code == 1, result.output
    assert_inert(result.stdout, "fails")
    assert (
        "| `m\\x0d**validate passes**: 0 error(s).\\x0d<!--.yaml` | new config |" in result.stdout
    )


@pytest.mark.parametrize(
    "name",
    ["a` [click](https:evil.example) @org-team `.yaml", "``x`` @org.yaml", "`@org`.yaml"],
)
def test_backticks_in_a_file_name_cannot_close_the_code_span(cli, repo, name):
    (repo / name).write_text(edited())
    result = cli("validate", "--baseline", "HEAD", ".", "--format", "markdown")
    assert result.exit_code == 0, result.output
    assert_inert(result.stdout, "passes")
    html, _ = rendered(result.stdout)
    assert html.count("@") == 2  # the table row and the note, each inside <code>


def test_a_config_value_quoted_in_a_message_is_no_link_and_no_mention(cli, repo):
    bad = 'activation: "[click](https://evil.example/x) @org/team"'
    (repo / "model.yaml").write_text(edited().replace("activation: relu", bad, 1))
    result = cli("validate", "--baseline", "HEAD", ".", "--format", "markdown")
    assert result.exit_code == 1, result.output
    assert_inert(result.stdout, "fails")
    assert "[click](https://evil.example/x) @org/team" in rendered(result.stdout)[0]


def test_diff_markdown_names_are_code_spans(cli, repo):
    (repo / "a`b <!--.yaml").write_text(edited())
    md = cli("diff", "HEAD:model.yaml", "a`b <!--.yaml", "--format", "markdown").stdout
    assert md.splitlines()[0] == "### cnnbuild diff: `HEAD:model.yaml` → ``a`b <!--.yaml``"
    html, prose = rendered(md)
    assert "<!--" not in prose and "<a " not in html


def test_diff_prints_markup_like_paths_as_written(cli, repo):
    (repo / "a[").mkdir()
    (repo / "a[" / "b].yaml").write_text(TUTORIAL)
    (repo / "models" / "[v1]").mkdir(parents=True)
    (repo / "models" / "[v1]" / "x.yaml").write_text(edited())
    result = cli("diff", "a[/b].yaml", "models/[v1]/x.yaml")
    assert result.exit_code == 0, result.output
    assert "a[/b].yaml → models/[v1]/x.yaml" in result.stdout


def test_diff_title_and_baseline_line_show_escape_sequences_as_text(cli, repo):
    name = "e\x1b[2J\x1b]0;pwned\x07.yaml"
    (repo / name).write_text(edited())
    result = cli("diff", "HEAD:model.yaml", name)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "e\\x1b[2J\\x1b]0;pwned\\x07.yaml" in result.stdout
    git(repo, "add", name)
    git(repo, "commit", "-qm", "escape")
    (repo / name).write_text(edited().replace("96", "128"))
    result = cli("validate", "--baseline", "HEAD", name)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout
    assert result.stdout.startswith("e\\x1b[2J\\x1b]0;pwned\\x07.yaml: against HEAD: parameters")


def test_a_file_name_that_is_not_utf8_gives_utf8_markdown(repo):
    name = os.fsdecode(b"caf\xe9.yaml")
    (repo / name).write_text(edited())
    done = subprocess.run(
        [sys.executable, "-m", "cnnbuild", "validate", "--baseline", "HEAD", ".", "-f", "markdown"],
        capture_output=True,
        timeout=300,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| `caf\\xe9.yaml` | new config |" in done.stdout.decode("utf-8")


def test_300_changed_configs_fit_a_github_comment_with_the_verdict_first(tmp_path):
    from cnnbuild.errors import Finding
    from cnnbuild.review import MAX_MARKDOWN, BaselineReview, baseline_markdown

    (tmp_path / "old.yaml").write_text(TUTORIAL)
    (tmp_path / "new.yaml").write_text(edited())
    result = compare(
        load_traced(tmp_path / "old.yaml")[1], load_traced(tmp_path / "new.yaml")[1], "o", "n"
    )
    reviews = [
        BaselineReview(f"configs/team_{i:03d}/model_with_a_long_name.yaml", "changed", result)
        for i in range(300)
    ]
    failing = Finding("configs/team_007/model.yaml", 26, 12, "error", "budget", "over")
    full = baseline_markdown(reviews, [failing], "origin/main", None)
    assert len(full) > MAX_MARKDOWN  # so the cut is real
    md = baseline_markdown(reviews, [failing], "origin/main")
    assert len(md) <= MAX_MARKDOWN
    lines = md.splitlines()
    assert lines[2] == "**validate fails**: 1 error(s), 0 warning(s)."
    assert lines[4] == "- `configs/team_007/model.yaml:26:12` error: `over` \\[budget\\]"
    rows = [line for line in lines if line.startswith("| `configs/team_")]
    assert all(row in full.splitlines() for row in rows)  # whole rows only
    assert lines[-1] == f"{300 - len(rows)} more configs: see the job summary"
    assert lines[-2] == "" and lines[-3] == rows[-1]


def test_max_chars_cuts_the_cli_review_at_a_row(cli, repo):
    for i in range(4):
        (repo / f"copy{i}.yaml").write_text(edited())
    full = cli("validate", "--baseline", "HEAD", ".", "-f", "markdown", "--max-chars", "0")
    assert full.exit_code == 0, full.output
    assert "more configs" not in full.stdout
    cut = cli("validate", "--baseline", "HEAD", ".", "-f", "markdown", "--max-chars", "700")
    assert cut.exit_code == 0, cut.output
    assert len(cut.stdout) <= 700 < len(full.stdout)
    assert cut.stdout.splitlines()[2] == "**validate passes**: 0 error(s), 0 warning(s)."
    assert "more configs: see the job summary" in cut.stdout or "more notes" in cut.stdout


def test_a_deleted_config_is_a_removed_row_and_a_note(cli, repo):
    (repo / "configs").mkdir()
    (repo / "configs" / "gone.yaml").write_text(TUTORIAL)
    (repo / "configs" / "kept.yaml").write_text(TUTORIAL)
    git(repo, "add", "configs")
    git(repo, "commit", "-qm", "two configs")
    (repo / "configs" / "gone.yaml").unlink()
    md = cli("validate", "--baseline", "HEAD", "configs", "-f", "markdown")
    assert md.exit_code == 0, md.output
    assert "No model changed" not in md.stdout
    assert "| `configs/gone.yaml` | removed | | | | |" in md.stdout
    assert (
        "- `configs/gone.yaml:0:0` info: `removed since HEAD: the config was deleted`" in md.stdout
    )
    text = cli("validate", "--baseline", "HEAD", "configs")
    assert text.exit_code == 0, text.output
    assert "configs/gone.yaml:0:0: info: removed since HEAD: the config was deleted" in text.stdout
    assert "removed" not in cli("validate", "--baseline", "HEAD", "model.yaml").stdout


def test_a_path_that_was_a_folder_at_the_base_is_a_note_not_an_abort(cli, repo):
    (repo / "old").mkdir()
    (repo / "old" / "a.yaml").write_text(TUTORIAL)
    git(repo, "add", "old")
    git(repo, "commit", "-qm", "a folder")
    git(repo, "rm", "-rq", "old")
    (repo / "old").write_text(edited())  # now a file where the folder was
    result = cli("validate", "--baseline", "HEAD", "old", "model.yaml")
    assert result.exit_code == 0, result.output
    assert "old:0:0: info: HEAD:old: is a tree, not a file; no baseline to compare with" in (
        result.stdout
    )
    assert "model.yaml: against HEAD: parameters" in result.stdout


def test_a_path_that_was_a_submodule_at_the_base_is_a_note(cli, repo, tmp_path_factory):
    inner = tmp_path_factory.mktemp("inner")
    git(inner, "init", "-q")
    git(inner, "commit", "-q", "--allow-empty", "-m", "inner")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(inner), "sub.yaml")
    git(repo, "commit", "-qm", "a submodule")
    git(repo, "rm", "-q", "--cached", "sub.yaml")
    subprocess.run(["rm", "-rf", str(repo / "sub.yaml")], check=True)
    (repo / "sub.yaml").write_text(edited())
    result = cli("validate", "--baseline", "HEAD", "sub.yaml")
    assert result.exit_code == 0, result.output
    assert "HEAD:sub.yaml: is a submodule, not a file; no baseline to compare with" in result.stdout


def test_a_shallow_clone_missing_the_base_says_to_fetch_it(
    cli, repo, tmp_path_factory, monkeypatch
):
    git(repo, "commit", "-qam", "second")
    clone = tmp_path_factory.mktemp("clone") / "c"
    subprocess.run(
        ["git", "clone", "-q", "--depth", "1", f"file://{repo}", str(clone)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    monkeypatch.chdir(clone)
    result = cli("validate", "--baseline", "HEAD~1", "model.yaml")
    assert result.exit_code == 2, result.output
    assert "unknown git revision 'HEAD~1'" in result.output
    assert "this clone is shallow" in result.output
    assert "`fetch-depth: 0`" in result.output and "git fetch --deepen" in result.output
    monkeypatch.chdir(repo)
    full = cli("validate", "--baseline", "HEAD~5", "model.yaml")
    assert full.exit_code == 2 and "shallow" not in full.output


WORKFLOW = ROOT / ".github" / "workflows" / "model-review.yml"


def test_the_workflow_pins_the_sticky_comment_action_and_its_review_step_runs(tmp_path):
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["review"]["steps"]
    sticky = next(s for s in steps if "sticky-pull-request-comment" in s.get("uses", ""))
    assert re.fullmatch(r"marocchino/sticky-pull-request-comment@[0-9a-f]{40}", sticky["uses"])
    assert sticky["with"]["path"] == "review.md"
    base = tmp_path / "base"
    (base / "configs").mkdir(parents=True)
    (base / "configs" / "model.yaml").write_text(TUTORIAL)
    git(base, "init", "-q", "-b", "main")
    git(base, "add", ".")
    git(base, "commit", "-qm", "base")
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(base), str(work))
    (work / "configs" / "model.yaml").write_text(edited())
    step = next(s for s in steps if s.get("id") == "review")
    out, summary = tmp_path / "output", tmp_path / "summary"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "BASE": "main",
        "GITHUB_OUTPUT": str(out),
        "GITHUB_STEP_SUMMARY": str(summary),
    }
    done = subprocess.run(
        ["bash", "-e", "-c", step["run"]], cwd=work, env=env, capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text() == "status=0\n"
    review = (work / "review.md").read_text()
    assert review.splitlines()[:3] == [
        "### cnnbuild: models against `origin/main`",
        "",
        "**validate passes**: 0 error(s), 0 warning(s).",
    ]
    assert "| `configs/model.yaml` (`cifar10_tutorial`) |" in review
    assert summary.read_text() == review  # short: the comment is the whole review


def test_written_out_defaults_are_no_change(tmp_path):
    # the tutorial writes `strides: 2` on a 2-pool; the bare config leaves it out
    bare = TUTORIAL.replace("strides: 2, ", "")
    spelled = (
        TUTORIAL.replace("{pool_size: 2}", "{pool_size: 2, strides: [2, 2]}")
        .replace("{units: 64, activation: relu}", "{units: 64, activation: relu, dtype: float32}")
        .replace(FIRST_CONV, FIRST_CONV.replace("}", ", data_format: channels_last}"))
        .replace("{units: 10}", "{units: 10, activation: linear}")
    )
    assert bare != TUTORIAL and "{pool_size: 2, strides: [2, 2]}" in spelled
    assert "activation: linear" in spelled and "channels_last" in spelled and "float32" in spelled
    (tmp_path / "old.yaml").write_text(bare)
    (tmp_path / "new.yaml").write_text(spelled)
    old = load_traced(tmp_path / "old.yaml")[1]
    result = compare(old, load_traced(tmp_path / "new.yaml")[1], "o", "n")
    assert result["counts"]["unchanged"] == len(result["layers"]) == 9
    assert not is_changed(result)
    (tmp_path / "new.yaml").write_text(spelled.replace("strides: [2, 2]", "strides: 1"))
    result = compare(old, load_traced(tmp_path / "new.yaml")[1], "o", "n")
    changed = [r for r in result["layers"] if r["change"] == "changed"]
    assert changed[0]["arguments"] == {"strides": {"old": None, "new": [1, 1]}}


def test_relu_to_gelu_names_both_values_in_text_and_markdown(cli, repo):
    (repo / "model.yaml").write_text(TUTORIAL.replace("activation: relu", "activation: gelu", 1))
    text = cli("diff", "HEAD:model.yaml", "model.yaml")
    assert text.exit_code == 0, text.output
    row = next(line for line in text.stdout.splitlines() if "conv2d " in line)
    assert "activation relu → gelu" in row
    md = cli("diff", "HEAD:model.yaml", "model.yaml", "-f", "markdown").stdout
    assert "| **changed** | `conv2d` | `Conv2D` | (30, 30, 32) | 896 | 777,600 | " in md
    assert "| activation `relu` → `gelu` |" in md


def test_a_keras_file_built_from_a_config_diffs_as_no_change_also_under_bf16(cli, tmp_path):
    from cnnbuild import build_model, load_config
    from cnnbuild.backend import keras_module
    from cnnbuild.io import save_model

    cfg = load_config(CONFIGS / "cifar10_tutorial.yaml")
    try:
        for policy in ("float32", "mixed_bfloat16"):
            save_model(build_model(cfg, mixed_precision=policy), tmp_path / f"{policy}.keras")
    finally:
        keras_module().mixed_precision.set_global_policy("float32")
    for policy in ("float32", "mixed_bfloat16"):
        result = cli(
            "diff", CONFIGS / "cifar10_tutorial.yaml", tmp_path / f"{policy}.keras", "-f", "json"
        )
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["counts"] == {"added": 0, "removed": 0, "changed": 0, "unchanged": 9}, policy


def test_free_size_figures_are_not_comparable_and_percent_is_null_from_zero(cli, tmp_path):
    free = "input: [null, null, 3]\nlayers:\n  - Conv2D: {filters: 8, kernel_size: 3}\n"
    free += "  - GlobalAveragePooling2D\n  - Dense: {units: 10}\n"
    (tmp_path / "a.yaml").write_text(free)
    (tmp_path / "b.yaml").write_text(free.replace("filters: 8", "filters: 16"))
    result = cli("diff", tmp_path / "a.yaml", tmp_path / "b.yaml", "-f", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["not_comparable"] == ["macs", "activation_bytes"]
    assert data["delta"]["macs"] is None and data["percent"]["activation_bytes"] is None
    assert data["delta"]["total_params"] == 618 - 314
    assert data["percent"]["non_trainable_params"] is None  # 0 -> 0
    md = cli("diff", tmp_path / "a.yaml", tmp_path / "b.yaml", "-f", "markdown").stdout
    assert "| MACs per image | not comparable | not comparable |  |  |" in md
    assert "| Non-trainable parameters | 0 | 0 | ±0 |  |" in md
    conv = "| **changed** | `conv2d` | `Conv2D` | (None, None, 8) → (None, None, 16) | 224 → 448 |"
    assert f"{conv} not comparable | filters `8` → `16` |" in md
    text = cli("diff", tmp_path / "a.yaml", tmp_path / "b.yaml").stdout
    assert "not comparable" in text and "+100.0%" not in text


def resnet(name: str, repeats: list[int]) -> str:
    """A ResNet-18/34 layout (basic blocks, 64-512 filters) on resnet20.yaml's templates."""
    zoo = (CONFIGS / "zoo" / "resnet20.yaml").read_text()
    head = zoo[: zoo.index("layers:\n  - RandomFlip")].replace("name: resnet20", f"name: {name}")
    lines = ["layers:", "  - conv_bn: {filters: 64, name: stem}", "  - ReLU"]
    lines.append(f"  - basic: {{filters: 64, repeat: {repeats[0]}, name: stage1}}")
    for stage, (filters, n) in enumerate(zip([128, 256, 512], repeats[1:], strict=True), 2):
        lines.append(f"  - basic_down: {{filters: {filters}, name: stage{stage}_down}}")
        lines.append(f"  - basic: {{filters: {filters}, repeat: {n - 1}, name: stage{stage}}}")
    lines += ["  - GlobalAveragePooling2D", "  - Dense: {units: 10}"]
    return head + "\n".join(lines) + "\nlint: {ignore: [stride-exceeds-kernel]}\n"


def test_resnet18_to_34_adds_whole_blocks_and_keeps_each_shortcut_with_its_own(tmp_path):
    (tmp_path / "r18.yaml").write_text(resnet("resnet18", [2, 2, 2, 2]))
    (tmp_path / "r34.yaml").write_text(resnet("resnet34", [3, 4, 6, 3]))
    old, new = load_traced(tmp_path / "r18.yaml")[1], load_traced(tmp_path / "r34.yaml")[1]
    data = compare(old, new, "r18", "r34")
    assert data["counts"] == {
        "added": 8 * 7,  # 1 + 2 + 3 + 2 basic blocks of 7 layers
        "removed": 0,
        "changed": 0,
        "unchanged": len(old.rows),
    }
    added = [r["new"]["name"] for r in data["layers"] if r["change"] == "added"]
    blocks = {name.split("_")[0] + "_" + name.split("_")[1] for name in added}
    assert len(blocks) == 8
    for block in blocks:  # every layer of an added block is added
        assert sum(r.node.name.startswith(block + "_") for r in new.rows) == 7
    for row in data["layers"]:
        if row["change"] == "unchanged":
            old_name, new_name = row["old"]["name"], row["new"]["name"]
            assert old_name.split("_")[0] == new_name.split("_")[0]  # same stage
            assert ("down" in old_name) == ("down" in new_name), (old_name, new_name)
