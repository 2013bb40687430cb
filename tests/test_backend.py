"""cnnbuild.backend: the one Keras import point, recursion room, strategy names."""

from __future__ import annotations

import os
import subprocess
import sys

from cnnbuild.backend import STRATEGIES, keep_recursion_room, recursion_room, room_for
from tests.conftest import ROOT


def test_importing_the_backend_and_runs_does_not_import_tensorflow():
    code = (
        "import sys, cnnbuild.backend, cnnbuild.runs, cnnbuild.predict, cnnbuild.insight.show;"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_recursion_room_is_restored_and_kept_room_never_shrinks():
    before = sys.getrecursionlimit()
    with recursion_room(2000):
        assert sys.getrecursionlimit() == max(before, room_for(2000))
    assert sys.getrecursionlimit() == before
    try:
        keep_recursion_room(3000)
        assert sys.getrecursionlimit() == max(before, room_for(3000))
        keep_recursion_room(10)  # a shallow model later does not take the room away
        assert sys.getrecursionlimit() == max(before, room_for(3000))
    finally:
        sys.setrecursionlimit(before)


def test_the_strategy_names_are_one_list():
    from cnnbuild.cli import StrategyChoice
    from cnnbuild.schema.sections import TrainConfig

    assert [c.value for c in StrategyChoice] == list(STRATEGIES)
    for name in STRATEGIES:
        assert TrainConfig.model_validate({"strategy": name}).strategy == name
