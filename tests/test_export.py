"""``cnnbuild export``: each artefact passes its own verification, then loads and runs in a
fresh process with its runtime alone (no TensorFlow for LiteRT and ONNX)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cnnbuild.export import FLOAT_TOLERANCE, INT8_MIN_AGREEMENT
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slow


FRESH = {
    "saved_model": """
        import tensorflow as tf
        model = tf.saved_model.load(sys.argv[1])
        y = model.serve(tf.constant(x)).numpy()
    """,
    "onnx": """
        import onnxruntime as ort
        session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
        y = session.run(None, {session.get_inputs()[0].name: x})[0]
        assert "tensorflow" not in sys.modules
    """,
    "litert": """
        from ai_edge_litert.interpreter import Interpreter
        it = Interpreter(model_path=sys.argv[1])
        inp = it.get_input_details()[0]
        it.resize_tensor_input(inp["index"], list(x.shape))
        it.allocate_tensors()
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        feed = x
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            feed = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], feed)
        it.invoke()
        y = it.get_tensor(out["index"])
        if out["dtype"] == np.int8:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        assert "tensorflow" not in sys.modules
    """,
}


def _run_fresh(fmt: str, artefact, images_file, out_file) -> np.ndarray:
    script = (
        "import sys\nimport numpy as np\nx = np.load(sys.argv[2])\n"
        + textwrap.dedent(FRESH[fmt])
        + "np.save(sys.argv[3], np.asarray(y, dtype=np.float32))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(artefact), str(images_file), str(out_file)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out_file)


@pytest.mark.parametrize(
    ("fmt", "int8"), [("saved_model", False), ("litert", False), ("litert", True), ("onnx", False)]
)
def test_export_verifies_and_loads_in_a_fresh_process(demo_run, tmp_path, fmt, int8):
    import keras

    flags = ["--int8"] if int8 else []
    result = run_cli("export", demo_run, "--format", fmt, *flags, "--images", 100, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    artefact = (
        demo_run
        / "export"
        / (
            {"saved_model": "saved_model", "onnx": "model.onnx"}.get(fmt)
            or ("model_int8.tflite" if int8 else "model.tflite")
        )
    )
    assert report["path"] == str(artefact) and report["passed"] is True
    assert report["images"] == 100 and report["data"] == "shapes"  # the run's dataset
    assert report["bytes"] > 0 and report["ms_per_image"] > 0
    if int8:
        assert report["top1_agreement"] >= INT8_MIN_AGREEMENT
        assert report["bytes"] < report["keras_bytes"] / 3
    else:
        assert report["max_abs_diff"] <= report["limit"]

    from cnnbuild.train import load_data, resolve_train
    from cnnbuild.validate import load_config

    settings = resolve_train(load_config(demo_run / "config.yaml"), {})
    x = load_data((32, 32, 3), settings, quiet=True).x_test[:16].astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    got = _run_fresh(fmt, artefact, tmp_path / "x.npy", tmp_path / "y.npy")
    from cnnbuild.export import float32_model

    model = keras.saving.load_model(demo_run / "model.keras", compile=False)
    trained = np.asarray(model.predict(x, verbose=0))  # in the policy it trained in
    # the artefact is the float32 computation of the trained weights (bf16 here by default)
    want = np.asarray(float32_model(keras, model).predict(x, verbose=0))
    assert got.shape == want.shape == trained.shape
    assert np.mean(got.argmax(1) == trained.argmax(1)) >= 15 / 16
    if int8:
        assert np.mean(got.argmax(1) == want.argmax(1)) >= 15 / 16
    else:
        assert np.max(np.abs(got - want)) <= FLOAT_TOLERANCE * max(1.0, np.max(np.abs(want)))


def test_mixed_precision_model_exports_in_float32(tmp_path, cli, write):
    from cnnbuild.builder import build_model
    from cnnbuild.validate import load_config

    config = write(
        """
        name: tiny_mixed
        input: [32, 32, 3]
        layers:
          - Conv2D: {filters: 8, kernel_size: 3, activation: relu}
          - GlobalAveragePooling2D
          - Dense: {units: 10, activation: softmax}
        compile: {optimizer: adam, loss: sparse_categorical_crossentropy}
        """
    )
    model = build_model(load_config(config), compile=False, mixed_precision=True)
    assert model.layers[1].dtype_policy.name == "mixed_float16"
    try:
        model.save(tmp_path / "mixed.keras")
    finally:
        import keras

        keras.mixed_precision.set_global_policy("float32")
    out = tmp_path / "mixed.onnx"
    result = cli(
        "export", tmp_path / "mixed.keras", "--format", "onnx", "--data", "shapes",
        "--images", 16, "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "passed" in result.stdout and out.is_file()
    import onnx

    types = {i.data_type for i in onnx.load(out).graph.initializer}
    assert onnx.TensorProto.FLOAT in types
    assert not types & {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def test_usage_errors(demo_run, cli, tmp_path):
    result = cli("export", demo_run, "--format", "onnx", "--int8")
    assert result.exit_code == 2
    assert "--int8 is for --format litert; received --format onnx" in result.stderr
    result = cli("export", demo_run, "--format", "litert", "-o", tmp_path / "m.onnx")
    assert result.exit_code == 2
    assert "must end in .tflite" in result.stderr
    bare = tmp_path / "copy.keras"
    bare.write_bytes((demo_run / "model.keras").read_bytes())
    result = cli("export", bare, "--format", "litert", "--int8")
    assert result.exit_code == 2
    assert "--int8 calibrates on training images: give --data" in result.stderr
    rng = np.random.default_rng(0)
    small = {k: rng.integers(0, 256, (8, 28, 28, 3), dtype=np.uint8) for k in ("x_train", "x_test")}
    np.savez(tmp_path / "small.npz", **small, y_train=np.arange(8) % 10, y_test=np.arange(8) % 10)
    result = cli("export", bare, "--format", "onnx", "--data", f"npz:{tmp_path / 'small.npz'}")
    assert result.exit_code == 1
    assert "has images of shape (28, 28, 3) but the model takes (32, 32, 3)" in result.stderr


# -- the inference function (issue 18) and placement (issue 17) --------------------------

FLOWERS = """
name: tiny_flowers
input: [16, 16, 3]
layers:
  - RandomFlip: {mode: horizontal}
  - RandomRotation: {factor: 0.1}
  - RandomZoom: {height_factor: 0.1}
  - Rescaling: {scale: 0.00392156862745098}
  - Conv2D: {filters: 8, kernel_size: 3, padding: same, activation: relu}
  - MaxPooling2D: {pool_size: 2}
  - Conv2D: {filters: 8, kernel_size: 3, padding: same, activation: relu}
  - Dropout: {rate: 0.3}
  - Flatten
  - Dense: {units: 3}
compile: {optimizer: adam, loss: sparse_categorical_crossentropy, from_logits: true}
train: {dataset: {npz: DATA}, epochs: 1, batch_size: 16, validation_split: 0, seed: 3}
"""


@pytest.fixture(scope="module")
def flowers_run(tmp_path_factory):
    """The TF flowers tutorial's pattern (augmentation, Rescaling, convs, Dropout, Dense)
    trained one epoch on 48 random 16x16 images: a real run directory."""
    root = tmp_path_factory.mktemp("flowers")
    rng = np.random.default_rng(0)
    np.savez(
        root / "data.npz",
        x_train=rng.integers(0, 256, (48, 16, 16, 3), dtype=np.uint8),
        y_train=np.arange(48) % 3,
        x_test=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
        y_test=np.arange(16) % 3,
    )
    config = root / "flowers.yaml"
    config.write_text(FLOWERS.replace("DATA", str(root / "data.npz")), encoding="utf-8")
    result = run_cli("train", config, "--out", root / "run")  # the machine's default precision
    assert result.exit_code == 0, result.output
    return root / "run"


def _runtime(fmt: str, path, x: np.ndarray) -> np.ndarray:
    """The artefact run by its own runtime: TF's SavedModel loader, onnxruntime, LiteRT."""
    if fmt == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        return loaded.serve(tf.constant(x)).numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(inp["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


@pytest.mark.parametrize("fmt", ["saved_model", "onnx", "litert"])
def test_augmenting_model_exports_its_inference_function(flowers_run, tmp_path, fmt):
    import keras

    out = tmp_path / {"saved_model": "sm", "onnx": "m.onnx", "litert": "m.tflite"}[fmt]
    result = run_cli("export", flowers_run, "--format", fmt, "-o", out, "--images", 16, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["written"] and report["path"] == str(out)
    if fmt == "onnx":
        import onnx

        ops = {node.op_type for node in onnx.load(out).graph.node}
        assert not {op for op in ops if "Random" in op}, ops
    x = np.random.default_rng(1).uniform(0, 255, (8, 16, 16, 3)).astype(np.float32)
    from cnnbuild.export import float32_model

    model = keras.saving.load_model(flowers_run / "model.keras", compile=False)
    # what an export holds: the model's inference function in float32 (the run itself
    # trained in this machine's default precision, mixed_bfloat16 on a bf16 CPU)
    want = np.asarray(float32_model(keras, model)(x, training=False))
    first, second = _runtime(fmt, out, x), _runtime(fmt, out, x)
    np.testing.assert_array_equal(first, second)  # no augmentation at inference
    np.testing.assert_allclose(first, want, atol=FLOAT_TOLERANCE * max(1, np.abs(want).max()))
    assert not np.allclose(want, np.asarray(model(x, training=True)))  # augmentation is real


def _listing(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes()) for p in folder.rglob("*")
                  if p.is_file())  # fmt: skip


def test_export_never_replaces_what_it_did_not_write(flowers_run, tmp_path, cli):
    thesis = tmp_path / "v"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("\\documentclass{article}")
    run_before = _listing(flowers_run)
    for args in (["-o", thesis], ["-o", thesis, "--force"], ["-o", flowers_run, "--force"]):
        result = cli("export", flowers_run, "--format", "saved_model", *args, "--images", 4)
        assert result.exit_code == 2, result.output
        assert "export never deletes or moves what it did not write" in result.stderr
    assert (thesis / "thesis.tex").read_text() == "\\documentclass{article}"
    assert sorted(p.name for p in thesis.iterdir()) == ["thesis.tex"]
    assert _listing(flowers_run) == run_before
    mine = tmp_path / "mine.onnx"
    mine.write_text("my own file")
    result = cli("export", flowers_run, "--format", "onnx", "-o", mine, "--images", 4)
    assert result.exit_code == 2 and "give --force to replace it" in result.stderr
    assert mine.read_text() == "my own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.onnx", "v"]  # no .old, no temp


def test_force_replaces_an_earlier_export_but_not_a_file_added_to_it(flowers_run, tmp_path, cli):
    out = tmp_path / "sm"
    assert cli("export", flowers_run, "-f", "saved_model", "-o", out, "--images", 4).exit_code == 0
    result = cli("export", flowers_run, "-f", "saved_model", "-o", out, "--images", 4)
    assert result.exit_code == 2 and "give --force" in result.stderr
    result = cli("export", flowers_run, "-f", "saved_model", "-o", out, "--images", 4, "--force")
    assert result.exit_code == 0, result.output
    assert (out / "cnnbuild_export.json").is_file() and (out / "saved_model.pb").is_file()
    (out / "notes.txt").write_text("mine")
    result = cli("export", flowers_run, "-f", "saved_model", "-o", out, "--images", 4, "--force")
    assert result.exit_code == 2 and "not an earlier export" in result.stderr
    assert (out / "notes.txt").read_text() == "mine"
    # the export and its labels file (issue 25); no temp folder left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sm", "sm.labels.txt"]


def test_failed_verification_leaves_nothing_at_the_final_path(
    flowers_run, tmp_path, cli, monkeypatch
):
    import cnnbuild.export

    monkeypatch.setattr(cnnbuild.export, "FLOAT_TOLERANCE", -1.0)  # no output can pass
    for fmt, name in (("onnx", "m.onnx"), ("saved_model", "sm")):
        result = cli("export", flowers_run, "--format", fmt, "-o", tmp_path / name, "--images", 4)
        assert result.exit_code == 1, result.output
        assert "FAILED: the exported model does not match Keras; nothing was written at " in (
            result.stdout
        )
    assert list(tmp_path.iterdir()) == []  # neither the artefact nor its temp folder


@pytest.mark.parametrize(("fmt", "name"), [("onnx", "m.onnx"), ("saved_model", "sm")])
def test_sigkill_during_export_leaves_the_previous_artefact(flowers_run, tmp_path, cli, fmt, name):
    import os
    import signal
    import time

    out = tmp_path / name
    assert cli("export", flowers_run, "-f", fmt, "-o", out, "--images", 4).exit_code == 0
    before = _listing(out) if out.is_dir() else out.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnbuild", "export", str(flowers_run), "-f", fmt, "-o",
         str(out), "--images", "4", "--force"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not [p for p in tmp_path.iterdir() if p.name.startswith(f".{name}.tmp-")]:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # inside the conversion: its temp folder exists
    assert proc.wait() == -signal.SIGKILL  # killed mid-export, not after it
    assert (_listing(out) if out.is_dir() else out.read_bytes()) == before


def test_output_under_a_file_or_onto_a_folder_is_a_message(flowers_run, tmp_path, cli):
    (tmp_path / "file").write_text("x")
    result = cli("export", flowers_run, "-f", "onnx", "-o", tmp_path / "file" / "x.onnx")
    assert result.exit_code == 1, result.output
    assert f"{tmp_path / 'file'}: Not a directory; it is a file, not a folder" in result.stderr
    (tmp_path / "dir.onnx").mkdir()
    result = cli("export", flowers_run, "-f", "onnx", "-o", tmp_path / "dir.onnx")
    assert result.exit_code == 1, result.output
    assert f"{tmp_path / 'dir.onnx'}: Is a directory; it is a folder" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("fmt", "size", "readonly"), [("onnx", "4k", False),
                         ("saved_model", "24k", False), ("litert", "1m", True)])  # fmt: skip
def test_full_or_read_only_disk_is_a_message(flowers_run, tmp_path, cli, fmt, size, readonly):
    from tests.test_oserrors import _tmpfs

    with _tmpfs(tmp_path / "disk", size, readonly=readonly) as disk:
        out = disk / "run" / {"onnx": "m.onnx", "saved_model": "sm", "litert": "m.tflite"}[fmt]
        result = cli("export", flowers_run, "-f", fmt, "-o", out, "--images", 4)
        assert result.exit_code == 1, result.output
        reason = "Read-only file system" if readonly else "No space left on device"
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and reason in lines[0] and str(disk / "run") in lines[0], lines
        assert list((disk / "run").iterdir()) == []


def test_the_default_output_is_the_commands_output_folder(tmp_path):
    """runs.output_dir names export's folder, as it does show's and predict's: RUN/export/
    for a run, NAME-export/ beside a bare .keras file."""
    from cnnbuild.export import default_output
    from cnnbuild.runs import open_target

    (tmp_path / "net.keras").write_bytes(b"PK")
    bare = open_target(tmp_path / "net.keras")
    assert default_output(bare, "onnx", False) == tmp_path / "net-export" / "net.onnx"
    assert default_output(bare, "litert", True) == tmp_path / "net-export" / "net_int8.tflite"
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"PK")
    opened = open_target(run)
    assert default_output(opened, "saved_model", False) == run / "export" / "saved_model"
    assert default_output(opened, "onnx", False) == run / "export" / "model.onnx"
