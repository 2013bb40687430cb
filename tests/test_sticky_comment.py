"""The workflow's sticky-comment script against a real HTTP server on 127.0.0.1 standing
in for the GitHub API: the first run creates the comment, later runs edit the same one.
Also: the CI guide's workflow is the committed one, and it runs what this repo ships."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from tests.conftest import ROOT

SCRIPT = ROOT / ".github" / "scripts" / "sticky_comment.py"
WORKFLOW = ROOT / ".github" / "workflows" / "model-review.yml"
MARKER = "<!-- cnnbuild-model-review -->"
BOT = "github-actions[bot]"


class FakeGitHub:
    """The three endpoints the script uses, over a list of comments on PR 7 of o/r."""

    def __init__(self) -> None:
        self.comments: list[dict] = []
        self.requests: list[tuple[str, str, dict | None, str]] = []
        self.fail_with: int | None = None
        self.next_id = 1000

    def add(self, body: str, login: str = "someone") -> int:
        self.next_id += 1
        self.comments.append({"id": self.next_id, "body": body, "user": {"login": login}})
        return self.next_id

    def handler(self):
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, code: int, data: object) -> None:
                raw = json.dumps(data).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                auth = self.headers.get("Authorization", "")
                fake.requests.append((self.command, self.path, body, auth))
                if fake.fail_with:
                    return self._answer(fake.fail_with, {"message": "nope"})
                url = urlparse(self.path)
                if self.command == "GET" and url.path == "/repos/o/r/issues/7/comments":
                    query = parse_qs(url.query)
                    per, page = int(query["per_page"][0]), int(query["page"][0])
                    return self._answer(200, fake.comments[(page - 1) * per : page * per])
                if self.command == "POST" and url.path == "/repos/o/r/issues/7/comments":
                    new = fake.add(body["body"], BOT)
                    return self._answer(201, {"id": new, "body": body["body"]})
                prefix = "/repos/o/r/issues/comments/"
                if self.command == "PATCH" and url.path.startswith(prefix):
                    cid = int(url.path[len(prefix) :])
                    for comment in fake.comments:
                        if comment["id"] == cid:
                            comment["body"] = body["body"]
                            return self._answer(200, comment)
                return self._answer(404, {"message": "Not Found"})

            do_GET = do_POST = do_PATCH = _handle  # noqa: N815 (http.server's names)

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture
def github():
    fake = FakeGitHub()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


def run_script(fake: FakeGitHub, body_file, tmp_path, **extra) -> subprocess.CompletedProcess:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 7}}))
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and "GITHUB" not in k}
    env.update(
        GITHUB_API_URL=fake.url,
        GITHUB_REPOSITORY="o/r",
        GITHUB_TOKEN="t0ken",
        GITHUB_EVENT_PATH=str(event),
        **extra,
    )
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(body_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_first_run_creates_second_run_updates_the_same_comment(github, tmp_path):
    github.add("LGTM")  # someone else's comment stays untouched
    body = tmp_path / "review.md"
    body.write_text("### cnnbuild: models against `origin/main`\n\nfirst\n")
    first = run_script(github, body, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "created comment 1002"
    assert [r[0] for r in github.requests] == ["GET", "POST"]
    assert github.requests[1][3] == "Bearer t0ken"
    body.write_text("### cnnbuild: models against `origin/main`\n\nsecond\n")
    second = run_script(github, body, tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "updated comment 1002"
    assert [r[0] for r in github.requests] == ["GET", "POST", "GET", "PATCH"]
    assert github.requests[3][1] == "/repos/o/r/issues/comments/1002"
    assert [c["body"] for c in github.comments] == [
        "LGTM",
        f"{MARKER}\n### cnnbuild: models against `origin/main`\n\nsecond\n",
    ]


def test_a_comment_by_someone_else_holding_the_marker_is_left_alone(github, tmp_path):
    # found by the stranger tests: a reviewer's comment quoting the marker was taken for the
    # sticky one; editing it fails with HTTP 403 for the job's token, on every run
    theirs = github.add(f"{MARKER}\nnot the bot", "someone")
    body = tmp_path / "review.md"
    body.write_text("review")
    for expected in ("created comment 1002", "updated comment 1002"):
        result = run_script(github, body, tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected
    assert github.comments[0] == {
        "id": theirs,
        "body": f"{MARKER}\nnot the bot",
        "user": {"login": "someone"},
    }
    assert [r[0] for r in github.requests] == ["GET", "POST", "GET", "PATCH"]


def test_the_comment_is_found_on_a_later_page(github, tmp_path):
    for i in range(130):
        github.add(f"comment {i}")
    sticky = github.add(f"{MARKER}\nold", BOT)
    body = tmp_path / "review.md"
    body.write_text("new")
    result = run_script(github, body, tmp_path, PR_NUMBER="7")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"updated comment {sticky}"
    gets = [r[1] for r in github.requests if r[0] == "GET"]
    assert gets == [
        "/repos/o/r/issues/7/comments?per_page=100&page=1",
        "/repos/o/r/issues/7/comments?per_page=100&page=2",
    ]
    assert github.comments[-1]["body"] == f"{MARKER}\nnew"
    assert len(github.comments) == 131


def test_api_errors_are_one_message_and_exit_1(github, tmp_path):
    github.fail_with = 403
    body = tmp_path / "review.md"
    body.write_text("x")
    result = run_script(github, body, tmp_path)
    assert result.returncode == 1
    assert "HTTP 403" in result.stderr
    assert "Traceback" not in result.stderr
    missing = run_script(github, tmp_path / "nowhere.md", tmp_path)
    assert missing.returncode == 1
    assert "nowhere.md" in missing.stderr and "Traceback" not in missing.stderr


def test_a_dead_server_is_one_message(tmp_path):
    fake = FakeGitHub()
    fake.url = "http://127.0.0.1:9"  # discard port: nothing listens
    body = tmp_path / "review.md"
    body.write_text("x")
    result = run_script(fake, body, tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: GET http://127.0.0.1:9/repos/o/r/issues/7/comments")
    assert "Traceback" not in result.stderr


def test_the_ci_guide_shows_the_committed_workflow():
    """The guide includes the file itself (the docs build fails if it is gone)."""
    text = WORKFLOW.read_text()
    guide = (ROOT / "docs" / "guides" / "ci.md").read_text()
    assert '```yaml\n--8<-- ".github/workflows/model-review.yml"\n```' in guide
    steps = yaml.safe_load(text)["jobs"]["review"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "cnnbuild validate configs/ --baseline" in runs
    assert "--format markdown > review.md" in runs
    assert 'cat review.md >> "$GITHUB_STEP_SUMMARY"' in runs
    assert "python .github/scripts/sticky_comment.py review.md" in runs
