"""A model too deep for the recursion limit it starts under, saved by ``cnnbuild build``,
opens in every command that opens a model: predict, show, evaluate, report, export and
``trace --grads --weights`` (each goes through :func:`cnnbuild.runs.load_model`, which
gives Keras the recursion room it needs, and keeps it for the sub-models show and report
build).

Keras fails to load a model of about as many layers as the recursion limit: 1,004 layers
under Python's default 1,000 (test_keras_crosscheck builds, saves and loads a 1,000-layer
stack under that default through the loader). Here every test starts under a limit of
300 with a 304-layer model, which Keras fails to load just the same (the first test
checks it in a fresh process): the same failure without the room, at 30% of what each
command costs on 1,004 layers (the file took 150 s alone at that depth)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import recursion_limit, run_cli

pytestmark = pytest.mark.slow

REPEAT = 150  # 304 layers in all
LIMIT = 300  # the recursion limit every test starts under


@pytest.fixture(autouse=True)
def low_recursion_limit():
    """Each test starts under :data:`LIMIT`: the room an earlier test's load kept would
    otherwise let a command that skipped the loader pass."""
    with recursion_limit(LIMIT):
        yield


@pytest.fixture(scope="module")
def deep_run(tmp_path_factory):
    """A run directory holding a 304-layer model (150 repeats of a two-layer block)
    as ``cnnbuild build`` saved it, its config and a tiny npz dataset."""
    folder = tmp_path_factory.mktemp("deep")
    rng = np.random.default_rng(0)
    np.savez(
        folder / "tiny.npz",
        x_train=rng.integers(0, 256, (8, 8, 8, 1), dtype=np.uint8),
        y_train=np.arange(8) % 2,
        x_test=rng.integers(0, 256, (8, 8, 8, 1), dtype=np.uint8),
        y_test=np.arange(8) % 2,
    )
    config = {
        "name": "deep",
        "input": [8, 8, 1],
        "blocks": {"two": {"layers": [{"Conv2D": {"filters": 2, "kernel_size": 1}}, "ReLU"]}},
        "layers": [{"two": {"repeat": REPEAT}}, "GlobalAveragePooling2D", {"Dense": {"units": 2}}],
        "train": {"dataset": {"npz": str(folder / "tiny.npz")}},
    }
    run = folder / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_cli("build", run / "config.yaml", "-o", run / "model.keras")
    assert result.exit_code == 0, result.output
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / "x.png")
    return run


def test_the_model_is_too_deep_for_keras_under_the_limit(deep_run):
    """The model's depth is the point of this file: plain Keras, in a fresh process under
    :data:`LIMIT`, fails to load it; ``runs.load_model`` loads it."""
    from cnnbuild.runs import load_model

    layers = load_model(deep_run / "model.keras").layers
    assert len(layers) == 1 + 1 + 2 * REPEAT + 2  # InputLayer, scaling, the stack, pool, Dense
    plain = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, str(LIMIT), str(deep_run / "model.keras")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plain.returncode == 3, plain.stdout + plain.stderr[-3000:]


PLAIN_LOAD = """
import sys
import keras
sys.setrecursionlimit(int(sys.argv[1]))
try:
    keras.saving.load_model(sys.argv[2])
except RecursionError:
    sys.exit(3)
"""


def test_predict(deep_run):
    result = run_cli("predict", deep_run, deep_run.parent / "x.png", "-f", "json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["predictions"]) == 1


def test_show(deep_run, tmp_path):
    result = run_cli(
        "show",
        deep_run,
        deep_run.parent / "x.png",
        "--layer",
        f"two_{REPEAT}_conv2d",
        "-o",
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x-gradcam.png").is_file()


def test_evaluate(deep_run):
    result = run_cli("evaluate", deep_run, "--dataset", f"npz:{deep_run.parent / 'tiny.npz'}")
    assert result.exit_code == 0, result.output
    assert (deep_run / "evaluate" / "evaluation.json").is_file()


def test_report(deep_run):
    result = run_cli("report", deep_run)
    assert result.exit_code == 0, result.output
    assert (deep_run / "report.html").is_file()


def test_export_saved_model(deep_run, tmp_path):
    result = run_cli(
        "export", deep_run, "--format", "saved_model", "-o", tmp_path / "sm", "--images", 8
    )
    assert result.exit_code == 0, result.output


def test_trace_grads_weights_loads_the_saved_weights(deep_run):
    """What ``trace --grads --weights RUN`` does to open the run: the config's model,
    given the saved model's weights layer by layer (the per-layer backward pass that
    follows is the same for every depth and is tested in test_insight_grads.py)."""
    from cnnbuild.builder import build_model
    from cnnbuild.insight.grads import copy_weights
    from cnnbuild.runs import load_model
    from cnnbuild.validate import load_config

    cfg = load_config(deep_run / "config.yaml")
    model = build_model(cfg, compile=False)
    copy_weights(model, deep_run / "model.keras", f"--weights {deep_run}", cfg.file)
    saved = load_model(deep_run / "model.keras")
    for name in ("two_1_conv2d", f"two_{REPEAT}_conv2d", "dense"):
        for mine, theirs in zip(
            model.get_layer(name).get_weights(), saved.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(mine, theirs)
