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
    result = cli("export", bare, "--format", "onnx")
    assert result.exit_code == 2
    assert "give --data" in result.stderr
    rng = np.random.default_rng(0)
    small = {k: rng.integers(0, 256, (8, 28, 28, 3), dtype=np.uint8) for k in ("x_train", "x_test")}
    np.savez(tmp_path / "small.npz", **small, y_train=np.arange(8) % 10, y_test=np.arange(8) % 10)
    result = cli("export", bare, "--format", "onnx", "--data", f"npz:{tmp_path / 'small.npz'}")
    assert result.exit_code == 1
    assert "has images of shape (28, 28, 3) but the model takes (32, 32, 3)" in result.stderr
