"""Run a trained model on image files: decode, resize, batch, top-k classes with names.

Images are decoded with Pillow (PNG, JPEG, BMP, GIF: the first frame), converted to the
model's channel count (grayscale ``L``, ``RGB``; an alpha channel is dropped) and resized
to the model's input height x width with TensorFlow's bilinear ``tf.image.resize``, the
resize Keras' ``image_dataset_from_directory`` applies to a folder dataset. Pixels are
fed as float32 0..255, unscaled: the model owns its scaling (``input_scaling``).

Every file is bounded before it is decoded: its size on disk (:data:`MAX_FILE_BYTES`)
and its declared pixel count (:data:`MAX_PIXELS`, Pillow's decompression-bomb limit).
A file that cannot be read is reported with the reason; the others still predict.
"""

from __future__ import annotations

import glob
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnbuild.errors import CnnbuildError, UsageError

if TYPE_CHECKING:
    import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 50_000_000
_PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid")


@dataclass
class Target:
    """A trained model and what its run directory says about it.

    Attributes:
        model_path: the ``.keras`` file.
        run_dir: the run directory, or None for a bare ``.keras`` file.
        config: the run's resolved config (``config.yaml``), or None.
    """

    model_path: Path
    run_dir: Path | None = None
    config: Any = None


def open_target(target: Path) -> Target:
    """A run directory (its best ``model.keras``) or a ``.keras`` file.

    Raises:
        UsageError: when ``target`` is neither.
    """
    if target.is_dir():
        model_path = target / "model.keras"
        if not model_path.is_file():
            raise UsageError(f"{target}: no model.keras in this folder; is it a run directory?")
        from cnnbuild.validate import load_config

        config = load_config(target / "config.yaml") if (target / "config.yaml").is_file() else None
        return Target(model_path, target, config)
    if target.suffix == ".keras" and target.is_file():
        return Target(target)
    raise UsageError(f"{target}: expected a run directory or a .keras file")


def load_keras_model(path: Path, verbose: bool = False) -> Any:
    """Load a ``.keras`` file with Keras' safe_mode on, uncompiled."""
    from cnnbuild.builder import keras_module

    keras = keras_module(verbose)
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for a bad file
        raise CnnbuildError(f"{path}: cannot load the model: {exc}") from None


def class_names(target: Target, n: int) -> list[str]:
    """The ``n`` class names of a run, in label order.

    Read from the run's ``metrics.json`` (its per-class accuracy is keyed by class name,
    in label order); ``class0``, ``class1``... when the run does not say.
    """
    if target.run_dir is not None:
        try:
            metrics = json.loads((target.run_dir / "metrics.json").read_text(encoding="utf-8"))
            names = [str(k) for k in metrics.get("per_class_accuracy", {})]
        except (OSError, ValueError, AttributeError):
            names = []
        if len(names) == n:
            return names
    return [f"class{i}" for i in range(n)]


def outputs_are_probabilities(model: Any, config: Any = None) -> bool:
    """Whether the model's output holds probabilities (softmax/sigmoid) or raw scores."""
    if config is not None and getattr(config.compile, "from_logits", None) is not None:
        return not config.compile.from_logits
    activation = getattr(getattr(model.layers[-1], "activation", None), "__name__", "")
    return activation in _PROBABILITY_ACTIVATIONS


def probabilities(outputs: np.ndarray, already: bool) -> np.ndarray:
    """Class probabilities (N, classes) from the model's outputs.

    One output unit is a binary classifier: its sigmoid is the probability of class 1.
    """
    import numpy as np

    out = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    if out.shape[1] == 1:
        p1 = out[:, 0] if already else 1.0 / (1.0 + np.exp(-out[:, 0]))
        return np.stack([1.0 - p1, p1], axis=1)
    if already:
        return out
    shifted = np.exp(out - out.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


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


class ImageError(Exception):
    """An image file that cannot be used; the message is the reason."""


def read_image(path: Path, channels: int) -> np.ndarray:
    """Decode one image file into an (H, W, channels) float32 array of 0..255 values.

    Raises:
        ImageError: too large, not an image Pillow can decode, or an unusable mode.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(exc.strerror or str(exc)) from None
    if size > MAX_FILE_BYTES:
        raise ImageError(f"{size:,} bytes; the limit is {MAX_FILE_BYTES:,}")
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels)
    if mode is None:
        raise ImageError(f"the model takes {channels} channels; images give 1, 3 or 4")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.format not in ("PNG", "JPEG", "MPO", "BMP", "GIF"):  # MPO: camera JPEG
                    raise ImageError(f"a {img.format} image; expected PNG, JPEG, BMP or GIF")
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ImageError(
                        f"{width} x {height} pixels; the limit is {MAX_PIXELS:,} pixels"
                    )
                img.seek(0)
                if img.mode in ("I;16", "I;16B", "I", "F"):
                    raise ImageError(f"a {img.mode} image (16-bit or float); expected 8 bits")
                return np.asarray(img.convert(mode), dtype=np.float32).reshape(
                    height, width, channels
                )
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image file Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"too many pixels ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"cannot decode: {exc}") from None


def resize(images: list[np.ndarray], height: int | None, width: int | None) -> np.ndarray:
    """Stack images, resizing those of another size bilinearly to ``height x width``.

    ``None`` in the model's input keeps each image's own size.
    """
    import numpy as np
    import tensorflow as tf

    out = []
    for img in images:
        h, w = img.shape[:2]
        th, tw = height or h, width or w
        if (h, w) != (th, tw):
            img = tf.image.resize(img, (th, tw), method="bilinear").numpy()
        out.append(img.astype(np.float32))
    return np.stack(out)


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
        target: a run directory or a ``.keras`` file.
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
    opened = open_target(target)
    model = load_keras_model(opened.model_path, verbose)
    import numpy as np

    try:
        import PIL  # noqa: F401
    except ImportError:
        raise UsageError(
            "predict needs Pillow to decode images; install it with: pip install pillow"
        ) from None
    files, failed = collect_images(paths)
    shape = tuple(model.input.shape[1:])
    if len(shape) != 3:
        raise UsageError(f"{opened.model_path}: takes inputs of shape {shape}, not images")
    height, width, channels = shape
    already = outputs_are_probabilities(model, opened.config)
    names: list[str] | None = None
    result = PredictResult(str(opened.model_path), shape, failed=list(failed))
    for start in range(0, len(files), batch_size):
        images, kept = [], []
        for path in files[start : start + batch_size]:
            try:
                images.append(read_image(path, channels))
                kept.append(path)
            except ImageError as exc:
                result.failed.append((str(path), str(exc)))
        if not images:
            continue
        result.resized += sum(
            1 for img in images if img.shape[:2] != (height or img.shape[0], width or img.shape[1])
        )
        if height is None or width is None:  # free input size: one image at a time
            outputs = np.concatenate(
                [model.predict(resize([img], height, width), verbose=0) for img in images]
            )
        else:
            outputs = model.predict(resize(images, height, width), batch_size=batch_size, verbose=0)
        probs = probabilities(outputs, already)
        if names is None:
            names = class_names(opened, probs.shape[1])
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
