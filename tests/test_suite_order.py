"""The suite's own order (tests/file_durations.py): the files it lists exist, and the
collection starts with the longest."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT
from tests.file_durations import load


def test_the_listed_files_exist_and_the_longest_is_collected_first():
    seconds = load()
    assert seconds, "tests/file_durations.json is missing or empty"
    assert [path for path in seconds if not (ROOT / path).is_file()] == []
    files = ["tests/test_backend.py", "tests/test_deep_model.py", "tests/test_zoo.py"]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    order = list(
        dict.fromkeys(line.split("::")[0] for line in out.stdout.splitlines() if "::" in line)
    )
    assert order == sorted(files, key=lambda path: -seconds.get(path, 0.0)), out.stdout[-2000:]
