"""The primer's models (docs/cnn-primer.md), written as there with no
``compile:`` section, pass validate, the views and build; the classifiers train."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT

PRIMER = sorted((ROOT / "tests" / "data" / "primer").glob("*.yaml"))
IDS = [p.stem for p in PRIMER]


def test_the_primer_models_are_all_here():
    assert IDS == ["cifar_cnn", "shape_watch", "small_cnn"]


@pytest.mark.parametrize("path", PRIMER, ids=IDS)
def test_validate_passes(cli, path):
    result = cli("validate", path)
    assert result.exit_code == 0, result.output
    assert "error" not in result.output.strip().splitlines()[-1]


@pytest.mark.parametrize("path", PRIMER, ids=IDS)
def test_static_views_show_the_model(cli, path):
    static = cli("summary", "--static", "--json", path)
    assert static.exit_code == 0, static.output
    data = json.loads(static.stdout)
    assert data["layers"][0]["name"] == "input_scaling" and data["total_params"] > 0
    traced = cli("trace", path)
    assert traced.exit_code == 0 and "conv2d" in traced.stdout


@pytest.mark.slow
@pytest.mark.parametrize("path", PRIMER, ids=IDS)
def test_keras_summary_and_build_agree_with_the_static_engine(cli, path, tmp_path):
    static = json.loads(cli("summary", "--static", "--json", path).stdout)
    real = cli("summary", "--json", path)
    assert real.exit_code == 0, real.output
    assert json.loads(real.stdout) == static
    target = tmp_path / f"{path.stem}.keras"
    built = cli("build", path, "-o", target)
    assert built.exit_code == 0, built.output
    assert target.is_file() and f"{static['total_params']:,} parameters" in built.stdout


@pytest.mark.slow
def test_the_primer_classifiers_train_as_written(cli, tmp_path):
    """Both classifiers train with no compile section: their Dense(10) logits give
    from_logits true, which the run's config.yaml records."""
    import numpy as np
    import yaml
    from PIL import Image

    # the small CNN takes 128x128 images: a folder dataset of 40x40 PNGs, resized on load
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    for label in range(10):
        (folder / f"class{label}").mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"class{label}" / f"{i}.png")
    runs = {
        "cifar_cnn": ["--dataset", "shapes", "--limit", "128"],
        "small_cnn": ["--dataset", f"folder:{folder}"],
    }
    for name, data in runs.items():
        out = tmp_path / f"run-{name}"
        result = cli(
            "train", ROOT / "tests" / "data" / "primer" / f"{name}.yaml",
            *data, "--epochs", "1", "--batch-size", "16", "--out", out,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        resolved = yaml.safe_load((out / "config.yaml").read_text())
        assert resolved["compile"]["from_logits"] is True
        assert (out / "model.keras").is_file()
