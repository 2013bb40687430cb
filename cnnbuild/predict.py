"""Run a trained model on image files: decode, resize, batch, top-k classes with names.

Images are decoded by :func:`cnnbuild.runs.decode_image` (PNG, JPEG, BMP, GIF: the first
frame), converted to the model's channel count and resized, as each is decoded, to the
model's input height x width with the bilinear resize of TensorFlow's ``tf.image.resize``
(the resize Keras' ``image_dataset_from_directory`` applies to a folder dataset). Pixels
are fed as float32 0..255, unscaled: the model owns its scaling (``input_scaling``).

Every file is bounded before it is decoded: a regular file, its size on disk
(:data:`cnnbuild.runs.MAX_FILE_BYTES`) and its declared pixel count
(:data:`cnnbuild.runs.MAX_PIXELS`). A file that cannot be read is reported with the
reason; the others still predict.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnbuild.errors import UsageError
from cnnbuild.runs import (
    ImageError,
    artefact_format,
    class_names,
    decode_sized,
    load_model,
    open_artefact,
    open_target,
    output_kind,
    probabilities,
    require_pillow,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


# -- files ------------------------------------------------------------------------------


def collect_images(paths: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders (recursively, image suffixes only) and globs, in order.

    Returns:
        The image files (each once) and ``(path, reason)`` for arguments that name none.
    """
    files: list[Path] = []
    missing: list[tuple[str, str]] = []
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            reason = "a folder with no .png, .jpg, .jpeg, .bmp or .gif files"
        elif path.exists():
            found, reason = [path], ""
        elif glob.has_magic(arg):
            found = sorted(Path(p) for p in glob.glob(arg, recursive=True) if Path(p).is_file())
            reason = "no file matches this pattern"
        else:
            found, reason = [], "no such file or folder"
        if not found:
            missing.append((arg, reason))
        files.extend(found)
    return list(dict.fromkeys(files)), missing


# -- what predicts ----------------------------------------------------------------------


@dataclass
class Scorer:
    """A model to run on image batches: a run's or a ``.keras`` file's (Keras), or an
    exported artefact's (its own runtime).

    Attributes:
        name: the model file or artefact, as shown.
        shape: its input without the batch.
        run: float32 raw pixels (N, H, W, C) -> outputs.
        already: whether the outputs are probabilities; None: judged from the outputs.
        names: class names for ``n`` classes, in label order.
    """

    name: str
    shape: tuple
    run: Any
    already: bool | None
    names: Any


def open_scorer(target: Path, batch_size: int, verbose: bool) -> Scorer:
    """A run directory or ``.keras`` file (Keras), or an ``.onnx``, ``.tflite`` or
    SavedModel folder (onnxruntime, LiteRT, TensorFlow) with the class names and output
    kind export wrote into it."""
    if artefact_format(target) is not None:
        art = open_artefact(target, verbose)
        return Scorer(str(art.path), art.input_shape, art.call, art.probabilities, art.class_names)
    if Path(target).suffix in (".onnx", ".tflite"):
        raise UsageError(f"{target}: no such file (expected an exported {Path(target).suffix})")
    opened = open_target(target)
    model = load_model(opened.model_path, verbose=verbose)
    return Scorer(
        str(opened.model_path),
        tuple(model.input.shape[1:]),
        lambda x: model.predict(x, batch_size=batch_size, verbose=0),
        output_kind(model, opened.config).probabilities,
        lambda n: class_names(opened, n),
    )


def _are_probabilities(outputs: Any) -> bool:
    """Whether a model's outputs look like probabilities: one unit in [0, 1], or rows of
    non-negative scores that sum to 1."""
    import numpy as np

    out = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    if out.shape[1] == 1:
        return bool(np.all((out >= 0) & (out <= 1)))
    return bool(np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))


# -- predict ----------------------------------------------------------------------------


@dataclass
class Prediction:
    file: str
    top: list[tuple[int, str, float]]


@dataclass
class PredictResult:
    model: str
    input_shape: tuple
    resized: int = 0
    predictions: list[Prediction] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "resized": self.resized,
            "predictions": [
                {
                    "file": p.file,
                    "top": [
                        {"index": i, "class": name, "probability": round(prob, 6)}
                        for i, name, prob in p.top
                    ],
                }
                for p in self.predictions
            ],
            "failed": [{"file": f, "reason": r} for f, r in self.failed],
        }


def predict(
    target: Path,
    paths: list[str],
    *,
    top_k: int = 3,
    batch_size: int = 64,
    verbose: bool = False,
) -> PredictResult:
    """Top-k classes of every image file under ``paths``.

    Args:
        target: a run directory, a ``.keras`` file, or an exported ``.onnx``, ``.tflite``
            or SavedModel folder.
        paths: image files, folders or globs.
        top_k: how many classes per image.
        batch_size: images per forward pass.
        verbose: show TensorFlow's start-up messages.

    Returns:
        The predictions, in file order, and the files that failed with their reasons.

    Raises:
        UsageError: a bad target or ``top_k``.
    """
    if top_k < 1 or batch_size < 1:
        raise UsageError(f"-k and --batch-size must be at least 1; received {top_k}, {batch_size}")
    scorer = open_scorer(target, batch_size, verbose)
    import numpy as np

    require_pillow("predict")
    files, failed = collect_images(paths)
    shape = scorer.shape
    if len(shape) != 3:
        raise UsageError(f"{scorer.name}: takes inputs of shape {shape}, not images")
    names: list[str] | None = None
    result = PredictResult(scorer.name, shape, failed=list(failed))
    for start in range(0, len(files), batch_size):
        images, kept = [], []
        for path in files[start : start + batch_size]:
            try:
                image, size = decode_sized(path, shape)
            except ImageError as exc:
                result.failed.append((str(path), str(exc)))
                continue
            images.append(image)
            kept.append(path)
            result.resized += image.shape[:2] != size
        if not images:
            continue
        if shape[0] is None or shape[1] is None:  # free input size: one image at a time
            outputs = np.concatenate([scorer.run(img[None]) for img in images])
        else:
            outputs = scorer.run(np.stack(images))
        if scorer.already is None:
            scorer.already = _are_probabilities(outputs)
        probs = probabilities(outputs, scorer.already)
        if names is None:
            names = scorer.names(probs.shape[1])
        k = min(top_k, probs.shape[1])
        for path, row in zip(kept, probs, strict=True):
            order = np.argsort(-row, kind="stable")[:k]
            top = [(int(i), names[int(i)], float(row[i])) for i in order]
            result.predictions.append(Prediction(str(path), top))
    return result


def csv_lines(result: PredictResult) -> list[str]:
    """``file,rank,index,class,probability`` rows (RFC 4180 quoting), one string per row.

    File and class names go through :func:`cnnbuild.escape.csv_cell`: control characters
    and line separators shown as escapes, a leading ``= + - @`` neutralised with ``'``.
    """
    import csv
    import io

    from cnnbuild.escape import csv_cell

    rows = [["file", "rank", "index", "class", "probability"]]
    for p in result.predictions:
        for rank, (i, name, prob) in enumerate(p.top, 1):
            rows.append([csv_cell(p.file), str(rank), str(i), csv_cell(name), f"{prob:.6f}"])
    lines = []
    for row in rows:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow(row)
        lines.append(buf.getvalue())
    return lines


def table(result: PredictResult) -> Any:
    """A rich table: one row per file, its top classes with probabilities (every name shown
    through :func:`cnnbuild.escape.terminal`)."""
    from rich.table import Table
    from rich.text import Text

    from cnnbuild.escape import terminal

    k = max((len(p.top) for p in result.predictions), default=0)
    model = terminal(result.model)
    tab = Table(title=Text(f"{model}: top {k}" if k else model))
    tab.add_column("file")
    for rank in range(1, k + 1):
        tab.add_column(f"#{rank}")
    for p in result.predictions:
        cells = (Text(f"{terminal(name)} {prob:.1%}") for _, name, prob in p.top)
        tab.add_row(Text(terminal(p.file)), *cells)
    return tab
