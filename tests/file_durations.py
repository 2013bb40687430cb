"""How long each test file takes, so the suite starts the longest first.

Under ``--dist loadfile`` a file runs whole on one worker, and pytest-xdist hands out
files in collection order. Started last, a long file with few tests (a 155-layer model,
subprocess clusters) runs alone while the other workers idle. (On 2 cores the suite is
bound by its CPU work, so the order did not change its time measurably: 14-16 min either
way, within the machine's noise.) ``tests/conftest.py`` orders the files by the seconds in
``file_durations.json`` (a file it does not list counts as 0 s: it comes last), and
``make test`` turns off xdist's own order (by number of tests).

Write the file again from a full run's JUnit report::

    .venv/bin/python -m pytest -n auto --dist loadfile --junitxml=/tmp/suite.xml
    .venv/bin/python -m tests.file_durations /tmp/suite.xml
"""

from __future__ import annotations

import collections
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

FILE = Path(__file__).with_name("file_durations.json")


def seconds_per_file(junit: Path) -> dict[str, int]:
    """Seconds per test file (setup, call and teardown of its tests), longest first."""
    per: collections.Counter[str] = collections.Counter()
    for case in ET.parse(junit).iter("testcase"):
        path = case.get("classname", "").replace(".", "/") + ".py"
        per[path] += float(case.get("time") or 0)
    return {path: round(seconds) for path, seconds in per.most_common()}


def load() -> dict[str, float]:
    """The committed seconds per file (empty when the file is missing or unreadable)."""
    try:
        data = json.loads(FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))}


if __name__ == "__main__":
    FILE.write_text(json.dumps(seconds_per_file(Path(sys.argv[1])), indent=1) + "\n")
    print(f"wrote {FILE}")
