"""Export a trained model to SavedModel, LiteRT (.tflite) or ONNX, then verify the file.

Verification runs test images through the exported file with the artefact's own
runtime (TensorFlow for a SavedModel, ai-edge-litert's ``Interpreter`` for LiteRT,
onnxruntime for ONNX) and compares with Keras on the same float32 0..255 pixels:

- float exports pass when the largest absolute difference from Keras is at most
  :data:`FLOAT_TOLERANCE` times ``max(1, largest |Keras output|)``;
- ``--int8`` LiteRT exports (int8 weights, activations, input and output, calibrated
  on training images) pass when top-1 agrees with Keras on at least
  :data:`INT8_MIN_AGREEMENT` of the images.

Every format holds the inference function, ``model(x, training=False)``: augmentation
layers and Dropout are identity. The artefact is written under a temp name beside the
output, verified, and only then moved into place (see :func:`place`); an output path
holding anything but an earlier export of ours is refused (see :func:`check_output`).

Mixed-precision models are exported in float32: the model is rebuilt under the float32
policy and the weights copied (onnxruntime rejects half-precision convolutions).
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnbuild.errors import CnnbuildError, DataError, UsageError, WriteError, shape_str
from cnnbuild.io import TEMP_MARK, fsync_path, os_error_message, os_errors, write_text
from cnnbuild.runs import (
    ARTEFACT_META,
    SAVED_MODEL_LABELS,
    SAVED_MODEL_MARKER,
    Target,
    class_names,
    labels_beside,
    load_model,
    open_target,
    output_dir,
    output_kind,
)
from cnnbuild.schema.sections import DATASET_FORMS

if TYPE_CHECKING:
    import numpy as np

FORMATS = ("saved_model", "litert", "onnx")
FLOAT_TOLERANCE = 1e-4
INT8_MIN_AGREEMENT = 0.98
CALIBRATION_IMAGES = 200
RANDOM_DATA = "random pixels"
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
    """In :func:`cnnbuild.runs.output_dir`'s ``export`` folder (``RUN/export/``, or
    ``NAME-export/`` beside a bare .keras file): ``model.{onnx,tflite}``,
    ``model_int8.tflite`` or ``saved_model/``, named after the model."""
    stem = "model" if opened.run_dir is not None else opened.model_path.stem
    name = {
        "saved_model": "saved_model",
        "litert": f"{stem}_int8.tflite" if int8 else f"{stem}.tflite",
        "onnx": f"{stem}.onnx",
    }[fmt]
    return output_dir(opened, "export") / name


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


# -- placing ---------------------------------------------------------------------------

MARKER = SAVED_MODEL_MARKER
_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def _refuse(out: Path, what: str) -> UsageError:
    return UsageError(f"{out}: {what}; export never deletes or moves what it did not write")


def _entries(folder: Path) -> set[str]:
    """Every file, folder and link under ``folder``, as relative POSIX paths."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def _ours(folder: Path) -> bool:
    """Whether ``folder`` is an earlier SavedModel export: our marker lists everything in it."""
    try:
        listed = set(json.loads((folder / MARKER).read_text(encoding="utf-8"))["entries"])
        return _entries(folder) == listed | {MARKER}
    except (OSError, ValueError, KeyError, TypeError):
        return False


def check_output(out: Path, fmt: str, force: bool, opened: Target) -> None:
    """Refuse an output path whose current content is not an earlier export of ours.

    Nothing at ``out``: fine. An earlier export (a file of the format's suffix, or a
    SavedModel folder whose marker lists everything in it): replaced with ``--force``.
    Anything else (a folder of the user's, the run directory, a symlink, a file where a
    folder goes) is refused, ``--force`` or not.

    Raises:
        UsageError: what is at ``out`` is kept (exit 2).
        WriteError: a parent of ``out`` is a file, or a folder where a file goes (exit 1).
    """
    for folder in (out.parent, *out.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                err = NotADirectoryError(errno.ENOTDIR, "Not a directory", str(folder))
                raise WriteError(os_error_message(err))
            break
    if not os.path.lexists(out):
        return
    protected = {opened.model_path.resolve(), opened.model_path.parent.resolve()}
    if out.resolve() in protected:
        raise _refuse(out, "it holds the model being exported; choose another -o")
    if out.is_symlink():
        raise _refuse(out, "a symbolic link is there; choose another -o")
    if fmt != "saved_model":
        if out.is_dir():
            err = IsADirectoryError(errno.EISDIR, "Is a directory", str(out))
            raise WriteError(os_error_message(err) + f" (a {out.suffix} file goes there)")
    elif not out.is_dir():
        raise _refuse(out, "a file is there and a SavedModel is a folder; choose another -o")
    elif not _ours(out):
        raise _refuse(
            out,
            f"a folder that is not an earlier export (no {MARKER} listing all it holds)"
            "; choose a new -o",
        )
    if not force:
        what = "an earlier export is there" if fmt == "saved_model" else "a file is there"
        raise UsageError(f"{out}: {what}; give --force to replace it, or choose another -o")


def _fsync_tree(path: Path) -> None:
    items = [path] if path.is_file() else [*path.rglob("*"), path]
    for item in items:
        fsync_path(item)


def _rename(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the system lacks it (then the caller
    falls back to ``os.rename``)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.renameat2
    except (OSError, AttributeError):
        return False
    if call(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(dst))


def place(tmp: Path, out: Path) -> None:
    """Move a verified artefact from its temp name to ``out`` atomically.

    A file replaces an earlier one with ``os.replace``. A folder is renamed into a free
    path, or swapped with the earlier export in one ``renameat2(RENAME_EXCHANGE)`` (then
    the earlier one, now at the temp name, is removed). At every instant ``out`` holds the
    earlier artefact or the new one.
    """
    _fsync_tree(tmp)
    if tmp.is_file():
        if os.path.lexists(out):
            os.replace(tmp, out)
        else:
            try:
                os.link(tmp, out)  # fails if something appeared at out meanwhile
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links
                os.rename(tmp, out)
            else:
                tmp.unlink()
    elif not os.path.lexists(out):
        if not _rename(tmp, out, _RENAME_NOREPLACE):
            os.rename(tmp, out)
    elif _rename(tmp, out, _RENAME_EXCHANGE):
        shutil.rmtree(tmp)
    else:
        old = tmp.with_name(tmp.name + ".old")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old)
    fsync_path(out.parent)


# -- writing ----------------------------------------------------------------------------


def inference_saved_model(keras: Any, model: Any, path: Path) -> None:
    """The model's inference function, ``model(x, training=False)``, as a SavedModel with
    one ``serve`` endpoint (also ``serving_default``) taking float32 images of any batch.

    In inference mode augmentation layers (RandomFlip, RandomRotation...) and Dropout are
    identity, so no random op is traced.
    """
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.input.shape[1:]), tf.float32, name="inputs")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: model(x, training=False), input_signature=[spec])
    archive.write_out(str(path), verbose=False)


def _tflite(saved: Path, calibration: np.ndarray | None) -> bytes:
    """LiteRT from the inference SavedModel; full-integer (int8 weights, activations, input
    and output) when calibration images are given."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [calibration[i : i + 1]] for i in range(len(calibration))
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def _onnx(model: Any, path: Path) -> None:
    """ONNX of the inference function with tf2onnx (as Keras' own ONNX export does)."""
    import tensorflow as tf
    import tf2onnx

    try:
        from keras.src.export.tf2onnx_lib import patch_tf2onnx  # numpy 2 fixes Keras applies
    except ImportError:
        pass
    else:
        patch_tf2onnx()
    spec = tf.TensorSpec((None, *model.input.shape[1:]), tf.float32, name="inputs")
    call = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    tf2onnx.convert.from_function(call, input_signature=[spec], output_path=str(path))


def artefact_meta(opened: Target, model: Any) -> dict:
    """What travels inside the artefact: the class names in label order and whether the
    outputs are probabilities or logits (see :data:`cnnbuild.runs.ARTEFACT_META`)."""
    kind = output_kind(model, opened.config)
    names = class_names(opened, 2 if kind.units == 1 else kind.units)
    return {"class_names": names, "outputs": "probabilities" if kind.probabilities else "logits"}


def _onnx_meta(path: Path, meta: dict) -> None:
    """The meta as a JSON ``metadata_props`` entry of the ONNX model."""
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = ARTEFACT_META, json.dumps(meta)
    onnx.save(proto, str(path))


def _litert_meta(blob: bytes, meta: dict) -> bytes:
    """The LiteRT model with the meta as a JSON entry of its metadata table (the table
    TFLite metadata lives in; LiteRT's metadata writer is not part of ai-edge-litert)."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(blob))
    buffer = fb.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = fb.MetadataT()
    entry.name, entry.buffer = ARTEFACT_META, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _failure(exc: BaseException, model: Any, fmt: str, out: Path) -> CnnbuildError:
    """A converter's exception as one message (an OS error names the path and the fix)."""
    if isinstance(exc, OSError):  # named by the output, not by the temp file
        return WriteError(os_error_message(OSError(exc.errno, exc.strerror or str(exc)), out))
    text = str(exc).strip()
    for code, words in ((errno.ENOSPC, "No space left"), (errno.EROFS, "Read-only file")):
        if words in text:
            return WriteError(os_error_message(OSError(code, os.strerror(code)), out))
    first = text.splitlines()[0] if text else type(exc).__name__
    return CnnbuildError(
        f"exporting {model.name} to {fmt} failed: {first[:300]}; run with --verbose for "
        "the converter's log"
    )


def write_artifact(
    keras: Any,
    model: Any,
    fmt: str,
    workdir: Path,
    name: str,
    int8: Any,
    verbose: bool,
    meta: dict | None = None,
) -> Path:
    """Write the artefact into ``workdir`` (a temp folder beside the output).

    Args:
        name: the output's file name (for messages and the artefact's own name).
        int8: calibration images for a full-integer LiteRT, else None.
        verbose: copy the converters' log to stderr.
        meta: class names and output kind to write into the artefact (ONNX
            ``metadata_props``, the LiteRT metadata table, the SavedModel's
            ``assets/labels.txt`` and export marker).

    Returns:
        The artefact's path inside ``workdir``.
    """
    from cnnbuild.builder import captured_fds

    saved = workdir / ("saved_model" if fmt == "saved_model" else "inference_saved_model")
    tmp = saved if fmt == "saved_model" else workdir / name
    failure = None
    with captured_fds() as log:
        try:
            if fmt == "onnx":
                _onnx(model, tmp)
                _onnx_meta(tmp, meta or {})
            else:
                inference_saved_model(keras, model, saved)
            if fmt == "litert":
                tmp.write_bytes(_litert_meta(_tflite(saved, int8), meta or {}))
        except Exception as exc:  # converters raise many types
            failure = _failure(exc, model, fmt, workdir.parent / name)
    if verbose and log:
        sys.stderr.write(log[0])
    if failure is not None:
        raise failure
    if fmt == "saved_model":
        labels = tmp / SAVED_MODEL_LABELS
        labels.parent.mkdir(exist_ok=True)
        labels.write_text("".join(f"{n}\n" for n in (meta or {}).get("class_names", [])))
        marker = {
            "written_by": "cnnbuild export",
            "format": fmt,
            "meta": meta or {},
            "entries": sorted(_entries(tmp)),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return tmp


# -- running ----------------------------------------------------------------------------


def run_artifact(path: Path, fmt: str, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Run float32 images through an exported file with its own runtime, opened as
    ``predict`` opens it (:func:`cnnbuild.runs.open_artefact`).

    Returns:
        The float32 outputs (int8 outputs dequantized) and the seconds of one timed call
        on the whole batch, after a warm-up call.
    """
    import numpy as np

    from cnnbuild.runs import open_artefact

    x = np.ascontiguousarray(images, dtype=np.float32)
    artefact = open_artefact(path)
    if artefact.format != fmt:
        raise CnnbuildError(f"{path}: a {artefact.format} artefact, not {fmt}")
    artefact.call(x)
    start = time.perf_counter()
    y = artefact.call(x)
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
    written: bool = False
    labels: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _images(opened: Target, data: str | None, shape: tuple, n: int, quiet: bool, int8: bool):
    """``n`` test images and some training images (int8 calibration) as float32.

    A bare ``.keras`` file without ``data`` is verified on :data:`RANDOM_DATA`: seeded
    random raw pixels of the model's input shape, as ``trace --run`` draws them.
    """
    import numpy as np

    from cnnbuild.runs import load_data, resolve_train

    if opened.config is None and data is None:
        if int8:
            raise UsageError(
                f"{opened.model_path}: a bare .keras file has no dataset; --int8 calibrates "
                f"on training images: give --data ({DATASET_FORMS})"
            )
        from cnnbuild.probe import random_pixels

        return RANDOM_DATA, random_pixels(shape, 0, n), None
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


def _reference(model: Any, test: np.ndarray) -> tuple[np.ndarray, float]:
    """Keras' inference output on the test images and the seconds of one timed call."""
    import numpy as np

    model.predict(test, batch_size=len(test), verbose=0)  # built and traced
    start = time.perf_counter()
    reference = np.asarray(model.predict(test, batch_size=len(test), verbose=0), dtype=np.float32)
    return reference, time.perf_counter() - start


def verify(
    path: Path, fmt: str, test: np.ndarray, reference: np.ndarray, int8: bool, verbose: bool
) -> dict:
    """Run the artefact at ``path`` with its own runtime and compare with Keras.

    Returns:
        The comparison fields of :class:`Verification`.

    Raises:
        CnnbuildError: the runtime refuses the file.
    """
    import numpy as np

    from cnnbuild.builder import captured_fds

    failure = None
    with captured_fds((2,)) as log:  # runtimes' C++ notes (XNNPACK delegate...)
        try:
            got, seconds = run_artifact(path, fmt, test)
        except Exception as exc:  # a runtime that refuses the file is a failed export
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            failure = CnnbuildError(f"the {fmt} runtime cannot run the exported model: {first}")
    if verbose and log:
        sys.stderr.write(log[0])
    if failure is not None:
        raise failure
    n = len(test)
    got = got.reshape(reference.shape)
    diff = float(np.max(np.abs(got - reference)))
    flat_ref, flat_got = reference.reshape(n, -1), got.reshape(n, -1)
    if flat_ref.shape[1] == 1:
        threshold = 0.5 if float(flat_ref.min()) >= 0 and float(flat_ref.max()) <= 1 else 0.0
        agree = np.mean((flat_ref[:, 0] > threshold) == (flat_got[:, 0] > threshold))
    else:
        agree = np.mean(flat_ref.argmax(axis=1) == flat_got.argmax(axis=1))
    limit = None if int8 else FLOAT_TOLERANCE * max(1.0, float(np.max(np.abs(reference))))
    return {
        "bytes": artefact_bytes(path),
        "max_abs_diff": diff,
        "limit": limit,
        "top1_agreement": float(agree),
        "min_agreement": INT8_MIN_AGREEMENT if int8 else None,
        "ms_per_image": seconds * 1000 / n,
        "passed": bool(agree >= INT8_MIN_AGREEMENT) if int8 else diff <= limit,
    }


def _output(opened: Target, output: Path | None, fmt: str, int8: bool, force: bool) -> Path:
    out = output or default_output(opened, fmt, int8)
    suffix = {"litert": ".tflite", "onnx": ".onnx"}.get(fmt)
    if suffix and out.suffix != suffix:
        raise UsageError(f"--output for --format {fmt} must end in {suffix}; received {str(out)!r}")
    check_output(out, fmt, force, opened)
    return out


def export(
    target: Path,
    fmt: str,
    *,
    output: Path | None = None,
    int8: bool = False,
    data: str | None = None,
    images: int = 128,
    force: bool = False,
    verbose: bool = False,
    quiet: bool = True,
) -> Verification:
    """Write ``target``'s inference function as ``fmt``, verify it, then move it into place.

    The artefact is written under a temp name beside the output (``.NAME.tmp-XXXX``), run
    by its own runtime against ``model(x, training=False)``, and moved to the output only
    when it passes; a failed one is removed (``written`` is False).

    Args:
        target: a run directory or a ``.keras`` file.
        fmt: ``saved_model``, ``litert`` or ``onnx``.
        output: where to write (default :func:`default_output`).
        int8: full-integer quantization (LiteRT only).
        data: the dataset of the test images (default: the run's).
        images: how many test images to verify with.
        force: replace an earlier export at the output (see :func:`check_output`).
        verbose: show TensorFlow's start-up messages and the converters' log.
        quiet: no download progress.

    Returns:
        The verification; ``passed`` is False beyond the tolerance.

    Raises:
        UsageError: bad flags, missing packages, no dataset, an output that is not ours.
        WriteError: the output cannot be written (disk full, read-only, not a folder).
    """
    require(fmt)
    if int8 and fmt != "litert":
        raise UsageError(f"--int8 is for --format litert; received --format {fmt}")
    if images < 1:
        raise UsageError(f"--images must be at least 1; received {images}")
    opened = open_target(target)
    out = _output(opened, output, fmt, int8, force)
    from cnnbuild.builder import keras_module

    keras = keras_module(verbose)
    model = float32_model(keras, load_model(opened.model_path, verbose))
    shape = tuple(model.input.shape[1:])
    name, test, calibration = _images(opened, data, shape, images, quiet, int8)
    reference, keras_seconds = _reference(model, test)
    with os_errors(out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}{TEMP_MARK}"))
    try:
        cal = calibration if int8 else None
        meta = artefact_meta(opened, model)
        tmp = write_artifact(keras, model, fmt, workdir, out.name, cal, verbose, meta)
        checked = verify(tmp, fmt, test, reference, int8, verbose)
        if checked["passed"]:
            check_output(out, fmt, force, opened)  # nothing of the user's appeared meanwhile
            place(tmp, out)
            write_text(labels_beside(out), "".join(f"{n}\n" for n in meta["class_names"]))
    except OSError as exc:
        raise _failure(exc, model, fmt, out) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return Verification(
        format=fmt,
        int8=int8,
        path=str(out),
        keras_bytes=opened.model_path.stat().st_size,
        images=len(test),
        data=name,
        keras_ms_per_image=keras_seconds * 1000 / len(test),
        written=checked["passed"],
        labels=str(labels_beside(out)) if checked["passed"] else None,
        **checked,
    )


def report_lines(v: Verification) -> list[str]:
    """The verification as a few lines of text."""
    kind = f"{v.format}{' int8' if v.int8 else ''}"
    check = (
        f"top-1 agreement {v.top1_agreement:.1%} (needs >= {v.min_agreement:.0%})"
        if v.int8
        else f"max abs diff {v.max_abs_diff:.3g} (limit {v.limit:.3g})"
    )
    head = "exported" if v.written else "checked (not written)"
    on = (
        f"{v.images} images of random raw pixels (uniform integers 0..255; no --data given)"
        if v.data == RANDOM_DATA
        else f"{v.images} {v.data} test images"
    )
    labels = f"class names inside the artefact and in {v.labels}" if v.labels else None
    return [
        f"{head} {kind} to {v.path} ({v.bytes:,} bytes; model.keras {v.keras_bytes:,})",
        *([labels] if labels else []),
        f"verified on {on} with its own runtime: {check}",
        f"  max abs diff {v.max_abs_diff:.3g}, top-1 agreement {v.top1_agreement:.1%}, "
        f"{v.ms_per_image:.3f} ms/image (Keras {v.keras_ms_per_image:.3f} ms/image, "
        f"batch of {v.images})",
        "passed"
        if v.passed
        else f"FAILED: the exported model does not match Keras; nothing was written at {v.path}",
    ]
