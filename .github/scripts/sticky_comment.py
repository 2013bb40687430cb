"""Create or update ONE pull-request comment with a markdown file (a "sticky" comment).

Used by .github/workflows/model-review.yml after `cnnbuild validate --baseline ... --format
markdown`. The comment carries a hidden marker; a later run finds the comment holding it
and edits it in place instead of adding another. Only a comment by the job's own account
counts (``github-actions[bot]``, or ``--author``): anyone can post a comment holding the
marker, and editing theirs would fail (HTTP 403) on every run. Standard library only.

Usage: python sticky_comment.py BODY.md [--marker TEXT] [--author LOGIN]

Environment: GITHUB_TOKEN, GITHUB_REPOSITORY (owner/name), GITHUB_EVENT_PATH (the
pull_request event; or PR_NUMBER), GITHUB_API_URL (default https://api.github.com).
Exit 0 when the comment was written, 1 on any failure (with one message on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

MARKER = "<!-- cnnbuild-model-review -->"
AUTHOR = "github-actions[bot]"  # the account GITHUB_TOKEN posts as
MAX_BODY = 65_000  # GitHub refuses comments over 65,536 characters
TIMEOUT_S = 30
PER_PAGE = 100
MAX_PAGES = 50


class Failure(Exception):
    """A problem to report in one line (exit 1)."""


def _request(method: str, url: str, token: str, body: dict | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", "application/vnd.github+json")
    req.add_header("X-GitHub-Api-Version", "2022-11-28")
    req.add_header("User-Agent", "cnnbuild-sticky-comment")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            raw = resp.read(10_000_000)
    except urllib.error.HTTPError as exc:
        raise Failure(f"{method} {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise Failure(f"{method} {url}: {getattr(exc, 'reason', exc)}") from None
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise Failure(f"{method} {url}: the answer is not JSON") from None


def pr_number(env: dict) -> int:
    """The pull request's number: PR_NUMBER, or the event file's pull_request.number."""
    if env.get("PR_NUMBER"):
        return int(env["PR_NUMBER"])
    path = env.get("GITHUB_EVENT_PATH")
    if not path:
        raise Failure("no PR_NUMBER and no GITHUB_EVENT_PATH: run it on a pull_request event")
    try:
        event = json.loads(Path(path).read_text(encoding="utf-8"))
        return int(event["pull_request"]["number"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Failure(f"{path}: no pull_request.number ({exc})") from None


def find_comment(
    api: str, repo: str, number: int, token: str, marker: str, author: str = AUTHOR
) -> int | None:
    """The id of the first comment by ``author`` on the PR whose body starts with
    ``marker``, if any."""
    for page in range(1, MAX_PAGES + 1):
        url = f"{api}/repos/{repo}/issues/{number}/comments?per_page={PER_PAGE}&page={page}"
        comments = _request("GET", url, token)
        if not isinstance(comments, list):
            raise Failure(f"GET {url}: expected a list of comments")
        for comment in comments:
            user = comment.get("user") if isinstance(comment.get("user"), dict) else {}
            mine = user.get("login") == author
            if mine and str(comment.get("body", "")).startswith(marker):
                return int(comment["id"])
        if len(comments) < PER_PAGE:
            return None
    return None


def upsert(
    body_text: str, env: dict, marker: str = MARKER, author: str = AUTHOR
) -> tuple[str, int]:
    """Create the comment, or update the one holding ``marker``.

    Returns:
        ``("created" | "updated", comment id)``.
    """
    api = env.get("GITHUB_API_URL", "https://api.github.com").rstrip("/")
    repo = env.get("GITHUB_REPOSITORY", "")
    if repo.count("/") != 1:
        raise Failure(f"GITHUB_REPOSITORY must be owner/name; received {repo!r}")
    token = env.get("GITHUB_TOKEN", "")
    number = pr_number(env)
    if len(body_text) > MAX_BODY:
        body_text = body_text[:MAX_BODY] + "\n\n(truncated; the job summary has it all)\n"
    body = {"body": f"{marker}\n{body_text}"}
    found = find_comment(api, repo, number, token, marker, author)
    if found is None:
        made = _request("POST", f"{api}/repos/{repo}/issues/{number}/comments", token, body)
        return "created", int(made["id"]) if isinstance(made, dict) else -1
    _request("PATCH", f"{api}/repos/{repo}/issues/comments/{found}", token, body)
    return "updated", found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("body", type=Path, help="the markdown file to post")
    parser.add_argument("--marker", default=MARKER, help="the hidden text that marks the comment")
    parser.add_argument("--author", default=AUTHOR, help="the login the token posts as")
    args = parser.parse_args(argv)
    try:
        text = args.body.read_text(encoding="utf-8")
        action, comment = upsert(text, dict(os.environ), args.marker, args.author)
    except OSError as exc:
        print(f"error: {args.body}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except Failure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{action} comment {comment}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
