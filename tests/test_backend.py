"""cnnbuild.backend: the one Keras import point, recursion room, strategy names."""

from __future__ import annotations

import os
import subprocess
import sys

from cnnbuild.backend import STRATEGIES, keep_recursion_room, recursion_room, room_for
from tests.conftest import ROOT


def _fresh_python(code: str) -> list[str]:
    """The lines ``code`` prints in a fresh Python process with this checkout on its path
    (it must end well)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()


def test_importing_the_backend_and_runs_does_not_import_tensorflow():
    code = (
        "import sys, cnnbuild.backend, cnnbuild.runs, cnnbuild.predict, cnnbuild.insight.show;"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    assert _fresh_python(code) == ["False False"]


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


def test_keras_is_imported_without_the_packages_it_only_needs_for_parts_we_never_call():
    """Keras imports scikit-learn (its wrappers) and matplotlib's pyplot (its
    visualization module) when it is imported, if they are installed: both are installed
    here (the dev extra), and `keras_module` leaves them out, yet both import afterwards
    (the digits dataset reads scikit-learn, the charts draw with pyplot). What the import
    leaves is frozen out of the garbage collector's scans."""
    code = (
        "import gc, sys\n"
        "from cnnbuild.backend import UNUSED_AT_IMPORT, keras_module\n"
        "keras = keras_module()\n"
        "print(*[name in sys.modules for name in UNUSED_AT_IMPORT], gc.get_freeze_count())\n"
        "import sklearn.datasets, matplotlib.pyplot\n"
        "print(sklearn.datasets.load_digits().images.shape, matplotlib.pyplot.figure)\n"
        "print(keras.layers.Dense(2)(keras.ops.ones((1, 3))).shape)\n"
    )
    lines = _fresh_python(code)
    hidden, frozen = lines[0].rsplit(" ", 1)
    assert hidden == "False False"
    assert int(frozen) > 100_000  # TensorFlow's and Keras' objects (about 280,000)
    assert lines[1].startswith("(1797, 8, 8) <function figure")
    assert lines[2] == "(1, 2)"


def test_a_hidden_package_that_keras_needs_at_import_is_imported_after_all():
    """Should a release of TensorFlow or Keras need one of the hidden packages when it is
    imported, `keras_module` imports it as it is instead of calling TensorFlow missing:
    here with numpy hidden, which TensorFlow cannot import without."""
    code = (
        "import sys\n"
        "import cnnbuild.backend as backend\n"
        "backend.UNUSED_AT_IMPORT = ('numpy',)\n"
        "keras = backend.keras_module()\n"
        "print(keras.layers.Dense(2)(keras.ops.ones((1, 3))).shape, 'numpy' in sys.modules)\n"
    )
    assert _fresh_python(code) == ["(1, 2) True"]
