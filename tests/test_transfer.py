"""Fine-tuning end to end on real data: scikit-learn's digits 0-4 (upscaled to 32x32x3)
train a source run; its backbone starts a 5-class model of digits 5-9 from 60 images
(``init:``, ``freeze:``, ``train.phases``). Also the static check of ``init:``
(:mod:`cnnbuild.transfer`) and the weights of ``keras.applications`` from Keras' cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnbuild.charts import phase_starts
from cnnbuild.validate import check_file

sklearn_datasets = pytest.importorskip("sklearn.datasets")

BACKBONE = """
  - Conv2D: {filters: 8, kernel_size: 3, padding: same, use_bias: false, name: c1}
  - BatchNormalization: {name: bn1}
  - Activation: {activation: relu, name: r1}
  - MaxPooling2D: {pool_size: 4, name: mp}
  - Conv2D: {filters: FILTERS, kernel_size: 3, padding: same, activation: relu, name: c2}
  - GlobalAveragePooling2D: {name: pool}
"""
BACKBONE_LAYERS = ("c1", "bn1", "c2")


def _digits(classes: range, n_train: int | None, seed: int = 0) -> dict[str, np.ndarray]:
    """Digits of ``classes`` as uint8 32x32x3 images labelled from 0, split in two."""
    digits = sklearn_datasets.load_digits()
    keep = np.isin(digits.target, list(classes))
    pixels = np.rint(digits.images[keep] * (255 / 16)).astype(np.uint8)
    images = np.repeat(np.kron(pixels, np.ones((4, 4), np.uint8))[..., None], 3, axis=-1)
    labels = digits.target[keep] - classes.start
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = n_train if n_train is not None else len(order) * 4 // 5
    train, test = order[:cut], order[cut:]
    return {
        "x_train": images[train],
        "y_train": labels[train],
        "x_test": images[test],
        "y_test": labels[test],
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("digits")
    paths = {"old": folder / "digits04.npz", "new": folder / "digits59.npz"}
    np.savez(paths["old"], **_digits(range(0, 5), None))
    np.savez(paths["new"], **_digits(range(5, 10), 60))
    return paths


def _source_yaml(npz: Path, filters: int = 16) -> str:
    return (
        f"name: src\ninput: [32, 32, 3]\nlayers:{BACKBONE.replace('FILTERS', str(filters))}"
        "  - Dense: {units: 5, activation: softmax, name: head}\n"
        f"train: {{dataset: {{npz: {npz}}}, epochs: 2, batch_size: 32, seed: 1}}\n"
    )


def _target_yaml(source: Path, npz: Path, extra: str = "", filters: int = 16) -> str:
    return (
        f"name: tgt\ninput: [32, 32, 3]\ninit: {{from: {source}{extra}}}\n"
        "freeze: {until: pool}\n"
        f"layers:{BACKBONE.replace('FILTERS', str(filters))}"
        "  - Dense: {units: 5, activation: softmax, name: head59}\n"
        f"train: {{dataset: {{npz: {npz}}}, epochs: 2, batch_size: 16, seed: 2}}\n"
    )


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, data) -> Path:
    """A run trained on digits 0-4."""
    from tests.conftest import run_cli

    folder = tmp_path_factory.mktemp("source")
    config = folder / "src.yaml"
    config.write_text(_source_yaml(data["old"]), encoding="utf-8")
    result = run_cli("train", config, "--out", folder / "run")
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    return folder / "run"


def _weights(path: Path) -> dict[str, list[np.ndarray]]:
    import keras

    model = keras.saving.load_model(path, compile=False)
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_build_gives_the_source_backbone_exactly(cli, tmp_path, source_run, data):
    config = tmp_path / "tgt.yaml"
    config.write_text(_target_yaml(source_run, data["new"]), encoding="utf-8")
    result = cli("build", config, "-o", tmp_path / "tgt.keras")
    assert result.exit_code == 0, result.output
    assert "init: loaded the weights of 3 layers from " in result.output
    assert "new here, not in the source: head59" in result.output
    assert "in the source, not here: head" in result.output
    source, built = _weights(source_run / "model.keras"), _weights(tmp_path / "tgt.keras")
    for name in BACKBONE_LAYERS:
        assert _same(source[name], built[name]), name


def test_summary_static_counts_only_the_head_as_trainable(cli, tmp_path, source_run, data):
    config = tmp_path / "tgt.yaml"
    config.write_text(_target_yaml(source_run, data["new"]), encoding="utf-8")
    result = cli("summary", "--static", "--json", config)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    head = next(layer for layer in summary["layers"] if layer["name"] == "head59")
    assert summary["trainable_params"] == head["params"] == 16 * 5 + 5
    frozen = {layer["name"] for layer in summary["layers"] if layer.get("frozen")}
    assert frozen == {layer["name"] for layer in summary["layers"]} - {"head59"}
    traced = json.loads(cli("trace", "--json", config).output)
    assert [layer["name"] for layer in traced["layers"] if not layer["frozen"]] == ["head59"]
    keras = cli("summary", "--json", config)
    assert keras.exit_code == 0, keras.output
    assert json.loads(keras.output)["trainable_params"] == summary["trainable_params"]


def test_training_keeps_frozen_weights_and_statistics_bit_identical(
    cli, tmp_path, source_run, data
):
    config = tmp_path / "tgt.yaml"
    config.write_text(_target_yaml(source_run, data["new"]), encoding="utf-8")
    result = cli("train", config, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "loaded the weights of 3 layers" in result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_accuracy"] is not None and "test accuracy" in result.output
    source, tuned = _weights(source_run / "model.keras"), _weights(tmp_path / "run/last.keras")
    for name in BACKBONE_LAYERS:  # bn1: gamma, beta, moving mean and variance
        assert _same(source[name], tuned[name]), name


def test_two_phases_give_one_history_and_move_the_backbone_in_phase_two_only(
    cli, tmp_path, source_run, data
):
    text = _target_yaml(source_run, data["new"]).replace(
        "epochs: 2, batch_size: 16, seed: 2}",
        "batch_size: 16, seed: 2, phases: [{epochs: 1}, "
        "{epochs: 1, learning_rate: 0.0001, freeze: none}]}",
    )
    config = tmp_path / "tgt.yaml"
    config.write_text(text, encoding="utf-8")
    assert check_file(config)[2] == []
    out = tmp_path / "run"
    result = cli("train", config, "--out", out, "--epochs", 2)
    assert result.exit_code == 0, result.output
    assert "phase 1/2: epochs 1-1" in result.output
    assert "phase 2/2: epochs 2-2, learning rate 0.0001" in result.output
    history = json.loads((out / "state.json").read_text())["history"]
    assert [(h["epoch"], h["phase"]) for h in history] == [(1, 1), (2, 2)]
    assert phase_starts(history) == [2]  # curves.png marks it
    assert (out / "curves.png").is_file()
    assert history[1]["learning_rate"] == pytest.approx(1e-4)
    source = _weights(source_run / "model.keras")
    final = _weights(out / "last.keras")
    assert all(not _same(source[n], final[n]) for n in ("c1", "c2")), "phase 2 moved nothing"


def test_epochs_flag_must_match_the_phases(cli, tmp_path, source_run, data):
    text = _target_yaml(source_run, data["new"]).replace(
        "epochs: 2, batch_size: 16, seed: 2}",
        "batch_size: 16, seed: 2, phases: [{epochs: 1}, "
        "{epochs: 1, learning_rate: 0.0001, freeze: none}]}",
    )
    config = tmp_path / "tgt.yaml"
    config.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    result = cli("train", config, "--out", out, "--epochs", 1)
    assert result.exit_code == 2
    assert "--epochs 1: train.phases adds up to 2 epochs" in result.output


def test_a_changed_filter_count_is_refused_then_skipped_and_listed(cli, tmp_path, source_run, data):
    config = tmp_path / "tgt.yaml"
    config.write_text(_target_yaml(source_run, data["new"], filters=12), encoding="utf-8")
    static = cli("validate", config)
    assert static.exit_code == 1
    assert (
        "tgt.yaml:10:5: error: layers[4].Conv2D: init: layer 'c2' holds 876 weights here, "
        "but " in static.output
    )
    assert "holds 1,168 ((3, 3, 8, 16), (16,))" in static.output.replace("\n", "")
    refused = cli("build", config, "-o", tmp_path / "a.keras")
    assert refused.exit_code == 1
    assert "init: layer 'c2' holds 876 weights here" in refused.output
    assert not (tmp_path / "a.keras").exists()
    config.write_text(
        _target_yaml(source_run, data["new"], ", skip_mismatch: true", filters=12),
        encoding="utf-8",
    )
    assert cli("validate", config).exit_code == 0
    built = cli("build", config, "-o", tmp_path / "b.keras")
    assert built.exit_code == 0, built.output
    assert "skipped (skip_mismatch: true): c2 (3, 3, 8, 12) + (12,) here" in built.output
    assert "loaded the weights of 2 layers" in built.output


def test_loading_names_both_shapes_of_a_layer_that_does_not_fit(write, source_run, data):
    """The loading checks again (the static check compares counts; the same count in
    another shape shows only here), naming the layer and both shapes."""
    from cnnbuild.builder import build_model
    from cnnbuild.errors import RunError
    from cnnbuild.runs import load_model, transfer_weights
    from cnnbuild.validate import load_config

    text = _target_yaml(source_run, data["new"], ", skip_mismatch: true", filters=12)
    cfg = load_config(write(text))
    model = build_model(cfg, compile=False)
    source = load_model(source_run / "model.keras")
    with pytest.raises(RunError) as refused:
        transfer_weights(source, model, "SRC", skip_mismatch=False)
    assert (
        "layer 'c2' has (3, 3, 8, 12) + (12,) here but (3, 3, 8, 16) + (16,) in the source"
        in str(refused.value)
    )
    report = transfer_weights(source, model, "SRC", skip_mismatch=True)
    assert report.skipped == [("c2", [(3, 3, 8, 12), (12,)], [(3, 3, 8, 16), (16,)])]
    assert report.loaded == ["c1", "bn1"]


@pytest.mark.parametrize(
    ("init", "message"),
    [
        ("{from: missing}", "{dir}/missing does not exist"),
        ("{from: .}", "holds no model.keras; is it a run directory?"),
        ("{from: tgt.yaml}", "is neither a run directory nor a .keras file"),
        (
            "{from: keras.applications.MobileNetV3Larg, weights: imagenet}",
            "did you mean 'MobileNetV3Large'?",
        ),
        ("{from: keras.applications.MobileNetV2}", "add `weights: imagenet`"),
        ("{from: run, weights: imagenet}", "applies to `from: keras.applications.NAME` only"),
    ],
)
def test_validate_checks_init_without_tensorflow(write, tmp_path, init, message):
    path = write(
        f"input: [32, 32, 3]\ninit: {init}\nlayers:\n  - Flatten\n  - Dense: {{units: 10}}\n",
        "tgt.yaml",
    )
    findings = check_file(path)[2]
    assert [f.line for f in findings] == [2], findings
    assert message.format(dir=tmp_path) in findings[0].message


def test_freeze_names_a_layer_that_exists(write):
    path = write(
        "input: [8, 8, 3]\nfreeze: {until: pol}\nlayers:\n  - GlobalAveragePooling2D: "
        "{name: pool}\n  - Dense: {units: 10}\n"
    )
    (finding,) = check_file(path)[2]
    assert (finding.line, finding.column) == (2, 17)
    assert "no layer is named 'pol'; did you mean 'pool'?" in finding.message


def test_trainable_false_on_blocks_and_template_uses_freezes_every_layer_inside(write):
    path = write("""
        input: [8, 8, 3]
        blocks:
          unit:
            layers: [{Conv2D: {filters: 4, kernel_size: 3, use_bias: false}}, BatchNormalization]
        layers:
          - unit: {trainable: false}
          - Residual: {trainable: false, main: [{Conv2D: {filters: 4, kernel_size: 1}}]}
          - Parallel: {branches: [[Flatten], [GlobalAveragePooling2D, Flatten]]}
          - Dense: {units: 10}
    """)
    cfg, tr, findings = check_file(path)
    assert findings == []
    assert tr.trainable == tr.row("dense").out.params == (6 * 6 * 4 + 4) * 10 + 10
    assert cfg.frozen == {"unit_1_conv2d", "unit_1_batch_normalization", "conv2d", "add"}


def test_epochs_beside_phases_must_be_their_sum(write):
    path = write(
        "input: [8, 8, 3]\nlayers: [Flatten, {Dense: {units: 10}}]\n"
        "train:\n  epochs: 5\n  phases: [{epochs: 1}, {epochs: 3}]\n"
    )
    (finding,) = check_file(path)[2]
    assert finding.line == 4
    assert "train.epochs is 5 but the phases add up to 4 epochs (1 + 3)" in finding.message


def test_validate_of_init_imports_no_tensorflow(tmp_path, source_run, data):
    config = tmp_path / "tgt.yaml"
    config.write_text(_target_yaml(source_run, data["new"]), encoding="utf-8")
    script = (
        "import sys; from cnnbuild.validate import check_file; "
        f"print(len(check_file({str(config)!r})[2]), 'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.stdout.split() == ["0", "False"], out.stderr


# -- keras.applications weights, from Keras' cache only -------------------------------

MOBILENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
MOBILENET_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/" + MOBILENET_FILE
)
STEM = """
input: [96, 96, 3]
init: {from: keras.applications.MobileNetV2, weights: imagenet}
layers:
  - Conv2D: {filters: 32, kernel_size: 3, strides: 2, padding: same, use_bias: false, name: Conv1}
  - BatchNormalization: {epsilon: 0.001, momentum: 0.999, name: bn_Conv1}
  - GlobalAveragePooling2D
  - Dense: {units: 10, activation: softmax, name: head}
"""


def test_application_weights_offline_name_the_file_its_url_and_where(
    cli, write, tmp_path, monkeypatch
):
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    result = cli("build", write(STEM), "-o", tmp_path / "m.keras")
    assert result.exit_code == 1
    text = result.output
    assert "MobileNetV2 imagenet weights are not in Keras' cache" in text
    assert MOBILENET_URL in text
    assert f"and save it as\n  {home / 'models' / MOBILENET_FILE}" in text
    assert "Traceback" not in text and not (tmp_path / "m.keras").exists()


def test_application_weights_load_from_the_cache_by_layer_name(cli, write, tmp_path, monkeypatch):
    """The real loading code (keras.applications.MobileNetV2(weights="imagenet") through
    keras.utils.get_file) on a weights file this test saves under Keras' own file name.
    Keras gives no hash for MobileNetV2's weights, so get_file checks none here; for
    applications that have one, a file that is not Keras' own would be refused."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    home = tmp_path / "keras_home"
    (home / "models").mkdir(parents=True)
    keras.utils.set_random_seed(3)
    app = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(96, 96, 3))
    with h5py.File(home / "models" / MOBILENET_FILE, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, app)
    monkeypatch.setenv("KERAS_HOME", str(home))
    result = cli("build", write(STEM), "-o", tmp_path / "m.keras")
    assert result.exit_code == 0, result.output
    assert "loaded the weights of 2 layers from keras.applications.MobileNetV2" in result.output
    assert "new here, not in the source: head" in result.output
    built = _weights(tmp_path / "m.keras")
    for name in ("Conv1", "bn_Conv1"):
        assert _same(built[name], app.get_layer(name).get_weights()), name


@pytest.mark.parametrize("stop", [1, 2], ids=["at-the-phase-boundary", "inside-phase-2"])
def test_resume_continues_inside_the_right_phase(cli, tmp_path, source_run, data, stop):
    """Interrupted after epoch ``stop`` and resumed equals uninterrupted: inside phase 2
    the restored model keeps its frozen layers, learning rate and optimizer state; at the
    boundary phase 2 begins as it would have."""
    import os
    import signal

    import keras

    from cnnbuild.errors import Interrupted
    from cnnbuild.train import train

    text = _target_yaml(source_run, data["new"]).replace(
        "epochs: 2, batch_size: 16, seed: 2}",
        "batch_size: 16, seed: 2, phases: [{epochs: 1}, "
        "{epochs: 2, learning_rate: 0.0001, freeze: {until: mp}}]}",
    )
    config = tmp_path / "tgt.yaml"
    config.write_text(text, encoding="utf-8")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli("train", config, "--out", whole).exit_code == 0

    class StopAfterTwo(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == stop:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        train(config, {}, out=parts, extra_callbacks=[StopAfterTwo()])
    assert json.loads((parts / "state.json").read_text())["epochs_done"] == stop
    source = _weights(source_run / "model.keras")
    after = _weights(parts / "last.keras")
    moved = [n for n in BACKBONE_LAYERS if not _same(source[n], after[n])]
    assert moved == ([] if stop == 1 else ["c2"])  # phase 1 trains the head only
    resumed = cli("train", "--resume", parts)
    assert resumed.exit_code == 0, resumed.output
    entered = "phase 2/2: epochs 2-3, learning rate 0.0001" in resumed.output
    assert entered == (stop == 1), resumed.output
    keys = ("loss", "accuracy", "val_loss", "learning_rate", "phase")
    first, second = (json.loads((d / "history.json").read_text()) for d in (whole, parts))
    assert [h["phase"] for h in second] == [1, 2, 2]
    assert [[round(h[k], 4) for k in keys] for h in first] == [
        [round(h[k], 4) for k in keys] for h in second
    ]
    final = _weights(parts / "last.keras")
    assert _same(source["c1"], final["c1"]) and not _same(source["c2"], final["c2"])
