"""Export a trained model to SavedModel, LiteRT (.tflite) or ONNX, then verify the file.

Verification runs test images through the exported file with the artefact's own
runtime (TensorFlow for a SavedModel, ai-edge-litert's ``Interpreter`` for LiteRT,
onnxruntime for ONNX) and compares with Keras on the same float32 0..255 pixels:

- float exports pass when the largest absolute difference from Keras is at most
  :data:`FLOAT_TOLERANCE` times ``max(1, largest |Keras output|)``;
- ``--int8`` LiteRT exports (int8 weights, activations, input and output, calibrated
  on training images) pass when top-1 agrees with Keras on at least
  :data:`INT8_MIN_AGREEMENT` of the images.

Mixed-precision models are exported in float32: the model is rebuilt under the float32
policy and the weights copied (onnxruntime rejects half-precision convolutions).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnbuild.errors import CnnbuildError, DataError, UsageError, shape_str
from cnnbuild.runs import Target, open_target
from cnnbuild.runs import load_model as load_keras_model

if TYPE_CHECKING:
    import numpy as np

FORMATS = ("saved_model", "litert", "onnx")
FLOAT_TOLERANCE = 1e-4
INT8_MIN_AGREEMENT = 0.98
CALIBRATION_IMAGES = 200
PACKAGES = {
    "saved_model": [],
    "litert": [("ai_edge_litert", "ai-edge-litert")],
    "onnx": [("tf2onnx", "tf2onnx"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime")],
}


def require(fmt: str) -> None:
    """Refuse early, naming the packages, when a format's exporter or runtime is missing.

    Raises:
        UsageError: with the ``pip install`` line that provides them.
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}; received {fmt!r}")
    needed = [("tensorflow", "tensorflow"), *PACKAGES[fmt]]
    missing = [pip for module, pip in needed if importlib.util.find_spec(module) is None]
    if missing:
        extras = "train,export" if "tensorflow" in missing else "export"
        raise UsageError(
            f"export --format {fmt} needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed; install them with: "
            f"pip install 'cnnbuild[{extras}]'"
        )


def default_output(opened: Target, fmt: str, int8: bool) -> Path:
    """``RUN/export/model.{onnx,tflite}``, ``model_int8.tflite`` or ``saved_model/``; beside
    a bare .keras file, ``NAME.onnx`` and so on."""
    stem = "model" if opened.run_dir is not None else opened.model_path.stem
    name = {
        "saved_model": f"{stem}_saved_model",
        "litert": f"{stem}_int8.tflite" if int8 else f"{stem}.tflite",
        "onnx": f"{stem}.onnx",
    }[fmt]
    if opened.run_dir is not None:
        return opened.run_dir / "export" / ("saved_model" if fmt == "saved_model" else name)
    return opened.model_path.with_name(name)


def float32_model(keras: Any, model: Any) -> Any:
    """The model itself when every layer computes in float32; else a float32 rebuild
    carrying the same weights."""
    import numpy as np

    policies = {layer.dtype_policy.name for layer in model.layers}
    if policies <= {"float32"}:
        return model

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
                return "float32"
            return {k: strip(v) for k, v in node.items()}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        rebuilt = model.__class__.from_config(strip(model.get_config()))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    rebuilt.set_weights([np.asarray(w, dtype=np.float32) for w in model.get_weights()])
    return rebuilt


# -- writing ----------------------------------------------------------------------------


def _place(tmp: Path, out: Path) -> None:
    """Flush a finished artefact to disk and move it into place; an older one is
    replaced only then."""
    for path in [tmp] if tmp.is_file() else [p for p in tmp.rglob("*") if p.is_file()]:
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
    if tmp.is_dir() and out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.replace(out)


def _int8_tflite(model: Any, calibration: np.ndarray, workdir: Path) -> bytes:
    """Full-integer LiteRT: int8 weights, activations, input and output."""
    import tensorflow as tf

    saved = workdir / "calibration_saved_model"
    model.export(str(saved), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [calibration[i : i + 1]] for i in range(len(calibration))
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def write_artifact(
    model: Any, fmt: str, out: Path, int8: bool, calibration: np.ndarray | None
) -> None:
    """Write the artefact to a temporary name beside ``out``, then move it into place."""
    from cnnbuild.builder import captured_fds

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:
        workdir = Path(work)
        tmp = workdir / ("artefact" + out.suffix if fmt != "saved_model" else "saved_model")
        try:
            with captured_fds() as log:
                if fmt == "litert" and int8:
                    tmp.write_bytes(_int8_tflite(model, calibration, workdir))
                else:
                    kind = {"saved_model": "tf_saved_model", "litert": "litert", "onnx": "onnx"}
                    model.export(str(tmp), format=kind[fmt], verbose=False)
        except Exception as exc:  # converters raise many types
            detail = (log[0].strip().splitlines() or [""])[-1] if log else ""
            raise CnnbuildError(
                f"exporting {model.name} to {fmt} failed: {exc}"
                + (f" ({detail})" if detail else "")
            ) from None
        _place(tmp, out)


# -- running ----------------------------------------------------------------------------


def run_artifact(path: Path, fmt: str, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Run float32 images through an exported file with its own runtime.

    Returns:
        The float32 outputs (int8 outputs dequantized) and the seconds of one timed call
        on the whole batch, after a warm-up call.
    """
    import numpy as np

    x = np.ascontiguousarray(images, dtype=np.float32)
    if fmt == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        call = lambda: loaded.serve(tf.constant(x)).numpy()  # noqa: E731
    elif fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        call = lambda: session.run(None, {name: x})[0]  # noqa: E731
    else:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
        inp = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(inp["index"], list(x.shape))
        interpreter.allocate_tensors()
        inp = interpreter.get_input_details()[0]
        outp = interpreter.get_output_details()[0]
        feed = x
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            feed = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)

        def call() -> np.ndarray:
            interpreter.set_tensor(inp["index"], feed)
            interpreter.invoke()
            y = interpreter.get_tensor(outp["index"])
            if outp["dtype"] == np.int8:
                scale, zero = outp["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            return np.asarray(y, dtype=np.float32)

    call()
    start = time.perf_counter()
    y = call()
    return np.asarray(y, dtype=np.float32), time.perf_counter() - start


def artefact_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# -- the command ------------------------------------------------------------------------


@dataclass
class Verification:
    format: str
    int8: bool
    path: str
    bytes: int
    keras_bytes: int
    images: int
    data: str
    max_abs_diff: float
    limit: float | None
    top1_agreement: float
    min_agreement: float | None
    ms_per_image: float
    keras_ms_per_image: float
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _images(opened: Target, data: str | None, shape: tuple, n: int, quiet: bool):
    """``n`` test images and some training images (int8 calibration) as float32."""
    import numpy as np

    from cnnbuild.runs import load_data, resolve_train

    if opened.config is None and data is None:
        raise UsageError(
            f"{opened.model_path}: a bare .keras file has no dataset; give --data "
            "(cifar10, cifar100, shapes, npz:PATH or folder:PATH) for the test images"
        )
    settings = resolve_train(opened.config, {"dataset": data, "limit": None} if data else {})
    dataset = load_data(shape, settings, quiet=quiet)
    if not len(dataset.x_test):
        raise UsageError(f"dataset {dataset.name} has no test images to verify with")
    want = tuple(shape)
    have = tuple(int(d) for d in dataset.x_test.shape[1:])
    if len(want) != len(have) or any(w not in (None, h) for w, h in zip(want, have, strict=False)):
        raise DataError(
            f"dataset {dataset.name} has images of shape {shape_str(have)} but the model "
            f"takes {shape_str(want)}; give --data with images of the model's size"
        )
    test = np.asarray(dataset.x_test[:n], dtype=np.float32)
    calibration = np.asarray(dataset.x_train[:CALIBRATION_IMAGES], dtype=np.float32)
    return dataset.name, test, calibration


def export(
    target: Path,
    fmt: str,
    *,
    output: Path | None = None,
    int8: bool = False,
    data: str | None = None,
    images: int = 128,
    verbose: bool = False,
    quiet: bool = True,
) -> Verification:
    """Write ``target``'s model as ``fmt`` and verify the file with its runtime.

    Args:
        target: a run directory or a ``.keras`` file.
        fmt: ``saved_model``, ``litert`` or ``onnx``.
        output: where to write (default :func:`default_output`).
        int8: full-integer quantization (LiteRT only).
        data: the dataset of the test images (default: the run's).
        images: how many test images to verify with.
        verbose: show TensorFlow's start-up messages.
        quiet: no download progress.

    Returns:
        The verification; ``passed`` is False beyond the tolerance.

    Raises:
        UsageError: bad flags, missing packages, no dataset.
    """
    require(fmt)
    import numpy as np

    if int8 and fmt != "litert":
        raise UsageError(f"--int8 is for --format litert; received --format {fmt}")
    if images < 1:
        raise UsageError(f"--images must be at least 1; received {images}")
    opened = open_target(target)
    out = output or default_output(opened, fmt, int8)
    suffix = {"litert": ".tflite", "onnx": ".onnx"}.get(fmt)
    if suffix and out.suffix != suffix:
        raise UsageError(f"--output for --format {fmt} must end in {suffix}; received {str(out)!r}")
    from cnnbuild.builder import keras_module

    keras = keras_module(verbose)
    model = float32_model(keras, load_keras_model(opened.model_path, verbose))
    shape = tuple(model.input.shape[1:])
    name, test, calibration = _images(opened, data, shape, images, quiet)
    model.predict(test, batch_size=len(test), verbose=0)  # built and traced (ONNX needs it)
    start = time.perf_counter()
    reference = np.asarray(model.predict(test, batch_size=len(test), verbose=0), dtype=np.float32)
    keras_seconds = time.perf_counter() - start
    write_artifact(model, fmt, out, int8, calibration)
    from cnnbuild.builder import captured_fds

    try:
        with captured_fds((2,)) as log:  # runtimes' C++ notes (XNNPACK delegate...)
            got, seconds = run_artifact(out, fmt, test)
    except Exception as exc:  # a runtime that refuses the file is a failed export
        raise CnnbuildError(f"{out}: the {fmt} runtime cannot run it: {exc}") from None
    if verbose and log:
        sys.stderr.write(log[0])
    got = got.reshape(reference.shape)
    diff = float(np.max(np.abs(got - reference)))
    flat_ref, flat_got = reference.reshape(len(test), -1), got.reshape(len(test), -1)
    if flat_ref.shape[1] == 1:
        threshold = 0.5 if float(flat_ref.min()) >= 0 and float(flat_ref.max()) <= 1 else 0.0
        agree = np.mean((flat_ref[:, 0] > threshold) == (flat_got[:, 0] > threshold))
    else:
        agree = np.mean(flat_ref.argmax(axis=1) == flat_got.argmax(axis=1))
    limit = None if int8 else FLOAT_TOLERANCE * max(1.0, float(np.max(np.abs(reference))))
    passed = bool(agree >= INT8_MIN_AGREEMENT) if int8 else diff <= limit
    return Verification(
        format=fmt,
        int8=int8,
        path=str(out),
        bytes=artefact_bytes(out),
        keras_bytes=opened.model_path.stat().st_size,
        images=len(test),
        data=name,
        max_abs_diff=diff,
        limit=limit,
        top1_agreement=float(agree),
        min_agreement=INT8_MIN_AGREEMENT if int8 else None,
        ms_per_image=seconds * 1000 / len(test),
        keras_ms_per_image=keras_seconds * 1000 / len(test),
        passed=passed,
    )


def report_lines(v: Verification) -> list[str]:
    """The verification as a few lines of text."""
    kind = f"{v.format}{' int8' if v.int8 else ''}"
    check = (
        f"top-1 agreement {v.top1_agreement:.1%} (needs >= {v.min_agreement:.0%})"
        if v.int8
        else f"max abs diff {v.max_abs_diff:.3g} (limit {v.limit:.3g})"
    )
    return [
        f"exported {kind} to {v.path} ({v.bytes:,} bytes; model.keras {v.keras_bytes:,})",
        f"verified on {v.images} {v.data} test images with its own runtime: {check}",
        f"  max abs diff {v.max_abs_diff:.3g}, top-1 agreement {v.top1_agreement:.1%}, "
        f"{v.ms_per_image:.3f} ms/image (Keras {v.keras_ms_per_image:.3f} ms/image, "
        f"batch of {v.images})",
        "passed" if v.passed else "FAILED: the exported model does not match Keras",
    ]
