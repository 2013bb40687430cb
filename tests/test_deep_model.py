"""A 2,000-layer model that ``cnnbuild build`` saves opens in every command that opens a
model: predict, show, evaluate, report, export and ``trace --grads --weights`` (each goes
through :func:`cnnbuild.runs.load_model`, which gives Keras the recursion room it needs,
and keeps it for the sub-models show and report build)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deep_run(tmp_path_factory):
    """A run directory holding a 2,005-layer model (1,000 repeats of a two-layer block)
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
        "layers": [{"two": {"repeat": 1000}}, "GlobalAveragePooling2D", {"Dense": {"units": 2}}],
        "train": {"dataset": {"npz": str(folder / "tiny.npz")}},
    }
    run = folder / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_cli("build", run / "config.yaml", "-o", run / "model.keras")
    assert result.exit_code == 0, result.output
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / "x.png")
    return run


def test_the_model_is_2000_layers_deep(deep_run):
    from cnnbuild.runs import load_model

    assert len(load_model(deep_run / "model.keras").layers) > 2000


def test_predict(deep_run):
    result = run_cli("predict", deep_run, deep_run.parent / "x.png", "-f", "json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["predictions"]) == 1


def test_show(deep_run, tmp_path):
    result = run_cli(
        "show", deep_run, deep_run.parent / "x.png", "--layer", "two_1000_conv2d", "-o", tmp_path
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
    for name in ("two_1_conv2d", "two_1000_conv2d", "dense"):
        for mine, theirs in zip(
            model.get_layer(name).get_weights(), saved.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(mine, theirs)
