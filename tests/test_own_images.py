"""Your own images end to end (issue 25): train on a class folder, evaluate a separate test
folder, export, predict with every artefact, and run each artefact with its own runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

CLASSES = ("red", "green", "blue")
CONFIG = """\
name: own_images
input: [16, 16, 3]
layers:
  - Conv2D: {filters: 8, kernel_size: 3, padding: same, activation: relu}
  - GlobalAveragePooling2D
  - Dense: {units: 3}
compile:
  optimizer: {adam: {learning_rate: 0.05}}
  loss: sparse_categorical_crossentropy
  from_logits: true
train: {dataset: {folder: FOLDER}, epochs: 4, batch_size: 8, validation_split: 0, seed: 1}
"""


def image_folder(root: Path, per_class: int, seed: int, classes=CLASSES) -> Path:
    """One sub-folder per class; each image a noisy field of its class's colour (class i
    is bright in channel i), so a tiny CNN learns them in a few epochs."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (16, 16, 3), dtype=np.uint8)
            pixels[..., c % 3] = rng.integers(160, 256, (16, 16), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.png")
    return root


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """A run trained on a 3-class folder of 30 images per class, and a separate test
    folder of 21 images (7 per class)."""
    root = tmp_path_factory.mktemp("own")
    train = image_folder(root / "train", 30, seed=0)
    test = image_folder(root / "test", 7, seed=1)
    config = root / "own.yaml"
    config.write_text(CONFIG.replace("FOLDER", str(train)), encoding="utf-8")
    # pinned to float32, and this is what it isolates: the tests compare the run's own
    # top-1 with its float32 exports' (ONNX, LiteRT, SavedModel hold the float32 inference
    # function), and a bf16 run may flip a near tie; bf16 runs export in test_strangers
    result = run_cli("train", config, "--out", root / "run", "--no-mixed-precision")
    assert result.exit_code == 0, result.output
    return root / "run", test


def test_evaluate_a_separate_folder_evaluates_every_image(own_run):
    run, test = own_run
    result = run_cli("evaluate", run, "--dataset", f"folder:{test}")
    assert result.exit_code == 0, result.output
    assert "21 test images" in result.stdout
    saved = json.loads((run / "evaluate" / "evaluation.json").read_text())
    assert saved["test_images"] == 21 and saved["split"] == "all"
    assert sum(map(sum, saved["confusion"])) == 21
    wrong = 21 - sum(saved["confusion"][i][i] for i in range(3))
    assert len(saved["mistakes"]) == wrong
    for item in saved["mistakes"]:
        assert Path(item["file"]).parent.name == item["label"] != item["predicted"]


def test_evaluate_split_test_keeps_the_runs_own_test_split(own_run):
    run, _ = own_run
    result = run_cli("evaluate", run, "--split", "test")
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "evaluate" / "evaluation.json").read_text())
    assert saved["test_images"] == 18 and saved["split"] == "test"  # 20% of 3 x 30
    result = run_cli("evaluate", run, "--split", "all")
    assert result.exit_code == 2
    assert "--split all goes with --dataset" in result.output


def test_evaluate_refuses_class_folders_that_are_not_the_runs_classes(own_run, tmp_path):
    run, _ = own_run
    other = image_folder(tmp_path / "other", 2, seed=2, classes=("cat", "dog", "fox"))
    result = run_cli("evaluate", run, "--dataset", f"folder:{other}")
    assert result.exit_code == 1
    assert "class folders are cat, dog, fox" in result.output
    assert "trained on blue, green, red" in result.output


def test_export_of_a_bare_keras_file_without_data_verifies_on_random_pixels(own_run, tmp_path):
    run, _ = own_run
    bare = tmp_path / "bare.keras"
    bare.write_bytes((run / "model.keras").read_bytes())
    result = run_cli("export", bare, "--format", "onnx")
    assert result.exit_code == 0, result.output
    assert "verified on 128 images of random raw pixels (uniform integers 0..255" in result.stdout
    assert (tmp_path / "bare-export" / "bare.onnx").is_file()  # runs.output_dir
    result = run_cli("export", bare, "--format", "onnx", "--force", "--json")
    assert json.loads(result.stdout)["data"] == "random pixels"


@pytest.fixture(scope="module")
def artefacts(own_run):
    """The run exported to ONNX, LiteRT and SavedModel (default paths under RUN/export/)."""
    run, _ = own_run
    for fmt in ("onnx", "litert", "saved_model"):
        result = run_cli("export", run, "--format", fmt)
        assert result.exit_code == 0, result.output
        assert "class names inside the artefact and in" in result.stdout
    export = run / "export"
    return {
        "onnx": export / "model.onnx",
        "litert": export / "model.tflite",
        "saved_model": export / "saved_model",
    }


def test_export_writes_the_class_names_into_each_artefact_and_beside_it(artefacts):
    import onnx

    from cnnbuild.runs import litert_meta

    names = sorted(CLASSES)
    props = {p.key: p.value for p in onnx.load(artefacts["onnx"]).metadata_props}
    assert json.loads(props["cnnbuild"]) == {"class_names": names, "outputs": "logits"}
    assert litert_meta(artefacts["litert"].read_bytes())["class_names"] == names
    saved = artefacts["saved_model"]
    assert (saved / "assets" / "labels.txt").read_text().splitlines() == names
    for beside in ("model.labels.txt", "saved_model.labels.txt"):
        assert (saved.parent / beside).read_text().splitlines() == names


def test_predict_gives_the_same_top1_with_the_run_and_each_artefact(own_run, artefacts):
    run, test = own_run
    tops = {}
    for what, target in [("run", run), *artefacts.items()]:
        result = run_cli("predict", target, test, "-k", 3, "--format", "json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert len(data["predictions"]) == 21
        tops[what] = {p["file"]: p["top"][0]["class"] for p in data["predictions"]}
        probs = [p["top"][0]["probability"] for p in data["predictions"]]
        assert all(0 < p <= 1 for p in probs)  # softmax applied to the logits
    assert set(tops["run"].values()) <= set(CLASSES)
    for what in artefacts:
        assert tops[what] == tops["run"], what
    right = sum(Path(f).parent.name == c for f, c in tops["run"].items())
    assert right >= 15  # the colours are learnt: names are not a permutation


def test_predict_reads_the_names_inside_a_copied_artefact_refuses_a_bogus_one(
    own_run, artefacts, tmp_path
):
    import shutil

    _, test = own_run
    plain = tmp_path / "plain.onnx"
    shutil.copy(artefacts["onnx"], plain)  # no labels file beside; names inside
    result = run_cli("predict", plain, test, "--format", "json")
    assert json.loads(result.stdout)["predictions"][0]["top"][0]["class"] in CLASSES
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not onnx")
    result = run_cli("predict", bogus, test)
    assert result.exit_code == 1
    assert "the onnx runtime cannot open it" in result.output
    result = run_cli("predict", tmp_path / "missing.tflite", test)
    assert result.exit_code == 2
    assert "missing.tflite: no such file" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--run", "--grads"], "--run and --grads are two different passes"),
        (["--seed", "3"], "--seed goes with --run or --grads"),
        (["--json", "--seed", "3"], "--seed goes with --run or --grads"),
        (["--run", "--mode", "inference"], "--weights, --data and --mode go with --grads"),
        (["--data"], "--weights, --data and --mode go with --grads"),
    ],
)
def test_trace_refuses_flags_it_would_ignore(args, message):
    from tests.conftest import CONFIGS

    result = run_cli("trace", CONFIGS / "shapes_demo.yaml", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_the_docs_page_runtime_snippets_run_against_exported_artefacts(
    own_run, artefacts, tmp_path
):
    """docs/guides/own-images.md: each Python block runs, in a fresh process, against
    artefacts exported here, and prints the class cnnbuild predict gives."""
    import os
    import re
    import subprocess
    import sys

    from tests.conftest import ROOT

    run, test = own_run
    (tmp_path / "run").symlink_to(run)
    (tmp_path / "test_photos").symlink_to(test)
    result = run_cli("predict", run, test / "red" / "red_0.png", "--format", "json")
    expected = json.loads(result.stdout)["predictions"][0]["top"][0]["class"]
    page = (ROOT / "docs" / "guides" / "own-images.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert len(blocks) == 3
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for code in blocks:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split()[0] == expected, done.stdout


def test_evaluate_an_npz_evaluates_its_x_test(own_run, tmp_path):
    run, _ = own_run
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)
    np.savez(
        tmp_path / "d.npz", x_train=x[:2], y_train=np.arange(2), x_test=x, y_test=np.arange(9) % 3
    )
    result = run_cli("evaluate", run, "--dataset", f"npz:{tmp_path / 'd.npz'}")
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "evaluate" / "evaluation.json").read_text())
    assert saved["test_images"] == 9 and sum(map(sum, saved["confusion"])) == 9
    assert "mistakes" not in saved  # an npz has no files to name


def test_predict_with_an_int8_tflite_dequantizes_its_outputs(own_run, tmp_path):
    run, test = own_run
    out = tmp_path / "int8.tflite"
    result = run_cli("export", run, "--format", "litert", "--int8", "-o", out)
    assert result.exit_code == 0, result.output
    tops = []
    for target in (run, out):
        result = run_cli("predict", target, test, "--format", "json")
        assert result.exit_code == 0, result.output
        tops.append({p["file"]: p["top"][0] for p in json.loads(result.stdout)["predictions"]})
    same = sum(tops[0][f]["class"] == tops[1][f]["class"] for f in tops[0])
    assert same >= 20  # int8 may flip a borderline image; the names are the run's
    assert all(0 < t["probability"] <= 1 for t in tops[1].values())
