"""What a command is pointed at: a run directory or a ``.keras`` file.

Every command that opens a saved model goes through this module: ``predict``, ``show``,
``evaluate``, ``report``, ``export`` and ``trace --grads --weights``. It holds, once:

- :func:`open_target`: a run directory (its best ``model.keras``, ``config.yaml`` and
  class names) or a bare ``.keras`` file;
- :func:`resolve_train` and :func:`load_data`: a run's ``train:`` settings and the
  dataset they name;
- :func:`load_model`: the one loader, with Keras' safe_mode on, room for deep models
  (a 2,000-layer model needs more recursion than Python's default, to load it and to
  build sub-models of it or trace it later, so the room is kept) and a bound on the
  model's size read from its saved config before Keras allocates anything;
- :func:`decode_image`: an image file, bounded before it is decoded and resized to the
  model's input as it is decoded;
- :func:`output_kind`: what the model's outputs are (probabilities or logits; one unit
  is a binary classifier);
- :func:`output_dir`: where a command writes beside a run or a model.

Bounds, all checked before the expensive step they guard:

- a ``.keras`` archive must be a regular file; its ``config.json`` may declare at most
  :data:`MAX_CONFIG_BYTES` and all its members together at most
  :data:`MAX_ARCHIVE_BYTES` (declared, uncompressed sizes, read from the zip directory);
- the parameters the saved config asks for, times 4 bytes (float32), at most
  :data:`MAX_MODEL_BYTES`, counted layer by layer from the Keras config (see
  :func:`estimate_parameters`);
- those parameters at most what ``model.weights.h5`` holds (:data:`WEIGHTS_SLACK`), its
  datasets' shapes read from the h5 metadata, and their bytes within the member's declared
  size (:func:`check_weights`): Keras allocates what the config asks for before it reads
  a single weight;
- an image must be a regular file of at most :data:`MAX_FILE_BYTES` declaring at most
  :data:`MAX_PIXELS` pixels.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnbuild.backend import keep_recursion_room, keras_module
from cnnbuild.catalog import PROBABILITY_ACTIVATIONS
from cnnbuild.errors import RunError, UsageError, pydantic_problems, shape_str
from cnnbuild.io import MAX_PIXELS, FileRefused, open_regular, zip_member
from cnnbuild.transfer import model_file, source_path

if TYPE_CHECKING:
    from cnnbuild.config import ModelConfig
    from cnnbuild.data.base import Data
    from cnnbuild.schema.sections import TrainConfig

if TYPE_CHECKING:
    import numpy as np
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_MODEL_BYTES = 2 * 1024**3
MAX_CONFIG_BYTES = 64 * 1024 * 1024
MAX_ARCHIVE_BYTES = 4 * MAX_MODEL_BYTES + MAX_CONFIG_BYTES
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF")  # MPO: a camera's JPEG


# -- targets ----------------------------------------------------------------------------


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


def open_target(target: Path, flag: str = "") -> Target:
    """A run directory (its best ``model.keras`` and its config) or a ``.keras`` file.

    Args:
        target: what the user gave.
        flag: the option it was given with (``--weights``), named in messages.

    Raises:
        UsageError: when ``target`` is neither.
    """
    target = Path(target)
    where = f"{flag} {target}" if flag else str(target)
    if target.is_dir():
        model_path = target / "model.keras"
        if not model_path.is_file():
            raise UsageError(f"{where}: no model.keras in this folder; is it a run directory?")
        from cnnbuild.validate import load_config

        config = load_config(target / "config.yaml") if (target / "config.yaml").is_file() else None
        return Target(model_path, target, config)
    if target.suffix == ".keras" and target.is_file():
        return Target(target)
    raise UsageError(f"{where}: expected a run directory or a .keras file")


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


def output_dir(target: Target, command: str) -> Path:
    """Where ``command`` writes: ``RUN/COMMAND/`` or ``MODEL-COMMAND/`` beside a .keras file.

    Example:
        ``output_dir(open_target(Path("net.keras")), "show")`` is ``net-show``.
    """
    if target.run_dir is not None:
        return target.run_dir / command
    return target.model_path.with_name(f"{target.model_path.stem}-{command}")


# -- the data a run reads ----------------------------------------------------------------


def resolve_train(cfg: ModelConfig | None, overrides: dict[str, Any]) -> TrainConfig:
    """The config's ``train:`` section (defaults without a config) with CLI overrides
    applied and checked.

    Raises:
        UsageError: an override is out of range or of the wrong type.
    """
    base = cfg.doc.data.get("train") if cfg and isinstance(cfg.doc.data, dict) else None
    merged = {**(base or {}), **{k: v for k, v in overrides.items() if v is not None}}
    from pydantic import ValidationError

    from cnnbuild.schema.sections import TrainConfig

    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as exc:
        flag = lambda loc: "--" + "-".join(map(str, loc)).replace("_", "-")  # noqa: E731
        raise UsageError(pydantic_problems(exc, flag)) from None


def load_data(
    shape: tuple, settings: TrainConfig, quiet: bool = False, whole: bool = False
) -> Data:
    """The dataset ``settings`` name, read for a model whose input is ``shape``.

    With ``whole``, a folder is a test set: every image of its class folders is a test
    image (an npz or CIFAR keeps its own test set).
    """
    from cnnbuild.data import load_dataset

    data = load_dataset(
        settings.dataset,
        data_dir=settings.data_dir,
        image_size=shape[:2] if len(shape) == 3 else None,
        channels=shape[-1] or 3,
        test_split=1.0 if whole else settings.test_split,
        seed=settings.seed if settings.seed is not None else 1337,
        quiet=quiet,
    )
    return data.limited(settings.limit)


# -- the model --------------------------------------------------------------------------


def saved_config(path: Path) -> dict:
    """The parsed ``config.json`` of a ``.keras`` archive, its sizes checked first: read as
    JSON data, never deserialized (what ``import`` and the size bound read).

    Raises:
        RunError: not a regular file, not a zip, no ``config.json``, a declared size over
            its bound, or not a JSON object.
    """
    try:
        file = open_regular(path, MAX_ARCHIVE_BYTES)
    except FileRefused as exc:
        raise RunError(f"{path}: cannot load the model: {exc}") from None
    try:
        with file, zipfile.ZipFile(file) as archive:
            members = archive.infolist()
            total = sum(m.file_size for m in members)
            if total > MAX_ARCHIVE_BYTES:
                raise RunError(
                    f"{path}: the archive declares {total:,} bytes uncompressed; the limit "
                    f"is {MAX_ARCHIVE_BYTES:,}"
                )
            info = archive.getinfo("config.json")
            if info.file_size > MAX_CONFIG_BYTES:
                raise RunError(
                    f"{path}: its config.json declares {info.file_size:,} bytes; the limit "
                    f"is {MAX_CONFIG_BYTES:,}"
                )
            with archive.open(info) as member:
                text = member.read(MAX_CONFIG_BYTES + 1)
        if len(text) > MAX_CONFIG_BYTES:
            raise RunError(f"{path}: its config.json is larger than {MAX_CONFIG_BYTES:,} bytes")
        tree = json.loads(text)
    except (zipfile.BadZipFile, KeyError, ValueError, RecursionError, OSError) as exc:
        raise RunError(f"{path}: cannot load the model: not a .keras archive ({exc})") from None
    if not isinstance(tree, dict):
        raise RunError(f"{path}: cannot load the model: its config.json is not a model")
    return tree


def _layer_dicts(tree: Any) -> list[dict]:
    """Every ``{"class_name", "config"}`` object in a Keras config, nested ones included."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("class_name"), str) and isinstance(node.get("config"), dict):
                found.append(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _dims(shape: Any) -> tuple[int, ...] | None:
    """A saved shape (``[null, 32, 32, 3]``) as its non-batch dims, or None if malformed."""
    if not isinstance(shape, list) or not shape:
        return None
    dims = shape[1:]
    if all(d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0) for d in dims):
        return tuple(1 if d is None else d for d in dims)
    return None


def _int(config: dict, key: str) -> int:
    value = config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _kernel(config: dict) -> int:
    size = config.get("kernel_size", 1)
    sizes = size if isinstance(size, list) else [size]
    return math.prod(s for s in sizes if isinstance(s, int) and s > 0) or 1


def _layer_parameters(layer: dict, width: int) -> int:
    """Parameters of one layer from its Keras config, given its input's last dim."""
    config = layer["config"]
    units, filters = _int(config, "units"), _int(config, "filters")
    bias = 0 if config.get("use_bias") is False else 1
    if units:
        return units * (width + bias)
    depth = _int(config, "depth_multiplier")
    if depth:  # depthwise; with filters, separable: then a 1 x 1 pointwise conv
        pointwise = width * depth * filters
        return _kernel(config) * width * depth + pointwise + (filters or width * depth) * bias
    if filters:
        groups = _int(config, "groups") or 1
        return _kernel(config) * (width // groups) * filters + filters * bias
    if _int(config, "input_dim") and _int(config, "output_dim"):
        return config["input_dim"] * config["output_dim"]
    if layer["class_name"] == "UnitNormalization":  # no weights (and saved unbuilt)
        return 0
    if "Normalization" in layer["class_name"]:  # at most 4 per channel (BatchNormalization)
        return 4 * width
    return 0


def estimate_parameters(tree: Any) -> int:
    """An upper estimate of the parameters a saved Keras config asks for.

    Each layer is counted from its own arguments (``units``, ``filters`` with
    ``kernel_size``, ``depth_multiplier``, ``input_dim`` x ``output_dim``, 4 per channel
    for a normalization) and its input's last dim, read from the ``build_config`` Keras
    saves with every built layer (and builds the layer from on loading). A layer saved
    without one is counted at the widest input the model could give it: the largest
    input's pixel count times the most channels any layer has.

    Args:
        tree: the parsed ``config.json``.

    Returns:
        The estimated number of parameters.
    """
    layers = _layer_dicts(tree)
    pixels, channels = 1, 1
    for layer in layers:
        config = layer["config"]
        shape = _dims(config.get("batch_shape") or config.get("batch_input_shape"))
        if shape:
            pixels = max(pixels, math.prod(shape[:-1]) if len(shape) > 1 else 1)
            channels = max(channels, shape[-1])
        for key in ("units", "filters", "output_dim"):
            channels = max(channels, _int(config, key))
    widest = pixels * channels
    total = 0
    for layer in layers:
        build = layer.get("build_config")
        shape = _dims(build.get("input_shape")) if isinstance(build, dict) else None
        width = shape[-1] if shape else widest
        total += _layer_parameters(layer, width)
    return total


def check_model_size(path: Path) -> int:
    """Refuse a ``.keras`` file whose config asks for more than :data:`MAX_MODEL_BYTES`,
    or for more weights than it holds (:func:`check_weights`).

    Returns:
        The number of layer objects in its config (the depth Keras recurses through).

    Raises:
        RunError: not a readable archive, or a model too large to allocate.
    """
    tree = saved_config(path)
    params = estimate_parameters(tree)
    if params * 4 > MAX_MODEL_BYTES:
        raise RunError(
            f"{path}: the model asks for about {params:,} parameters ({params * 4:,} bytes "
            f"as float32); the limit is {MAX_MODEL_BYTES:,} bytes, so it is not loaded"
        )
    check_weights(path, params)
    return len(_layer_dicts(tree))


WEIGHTS_FILE = "model.weights.h5"
WEIGHTS_SLACK = 1.25
# parameters the estimate may exceed what the file holds by, whatever the slack: the
# estimate is an upper one (a layer saved unbuilt is counted at the widest input), and a
# small model must never be refused for it; 1M float32 parameters are 4 MiB
WEIGHTS_MARGIN = 1 << 20
"""How far the config's estimate may exceed the weights the file holds (the estimate
counts a normalization at 4 per channel, where some hold 2)."""


def held_weights(path: Path) -> tuple[int, int, int] | None:
    """What a ``.keras`` archive's ``model.weights.h5`` holds, read from the h5 metadata
    (the datasets' shapes and dtypes), never from the data.

    Returns:
        (values, their bytes, the member's declared size), or None for an archive
        without ``model.weights.h5`` (an older ``.npz`` one, which Keras checks itself).

    Raises:
        RunError: the archive or its weights file cannot be read.
    """
    import h5py

    try:
        file = open_regular(path, MAX_ARCHIVE_BYTES)
    except FileRefused as exc:
        raise RunError(f"{path}: cannot load the model: {exc}") from None
    values = nbytes = 0

    def count(_name: str, node: Any) -> None:
        nonlocal values, nbytes
        if isinstance(node, h5py.Dataset):
            values += int(node.size or 0)
            nbytes += int(node.size or 0) * node.dtype.itemsize

    try:
        with file, zipfile.ZipFile(file) as archive:
            if WEIGHTS_FILE not in archive.namelist():
                return None
            info = archive.getinfo(WEIGHTS_FILE)
            with zip_member(file, archive, info) as member, h5py.File(member, "r") as h5:
                h5.visititems(count)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, RecursionError) as exc:
        raise RunError(f"{path}: cannot load the model: its {WEIGHTS_FILE}: {exc}") from None
    return values, nbytes, info.file_size


def check_weights(path: Path, params: int) -> None:
    """Refuse a ``.keras`` file whose config asks for more weights than its weights file
    holds, before Keras builds the model (and allocates what the config asks for).

    The weights file must hold, in data it really stores, at least the ``params`` the
    config asks for (up to :data:`WEIGHTS_SLACK` and :data:`WEIGHTS_MARGIN`): its datasets'
    declared sizes, read from the h5 metadata, and the bytes those take, within the
    member's declared size (an h5 dataset never written, or compressed, declares a shape
    the file does not store).

    Raises:
        RunError: the config asks for more than the file holds.
    """
    held = held_weights(path)
    if held is None:
        return
    values, nbytes, declared = held
    if nbytes > declared:
        raise RunError(
            f"{path}: its {WEIGHTS_FILE} declares {values:,} weights ({nbytes:,} bytes) in "
            f"{declared:,} bytes: the weights are not all stored, so the model is not loaded"
        )
    if params > values * WEIGHTS_SLACK + WEIGHTS_MARGIN:
        raise RunError(
            f"{path}: the config asks for about {params:,} parameters, but its "
            f"{WEIGHTS_FILE} holds {values:,} weights; a .keras file must hold the weights "
            "its config asks for, so the model is not loaded"
        )


def load_model(path: str | os.PathLike, verbose: bool = False, *, compile: bool = False) -> Any:
    """Load a ``.keras`` file: size-checked, safe_mode on, with room for deep models.

    Args:
        path: a ``.keras`` file.
        verbose: show TensorFlow's start-up messages.
        compile: restore the optimizer with its state (step count, moments, the
            learning-rate schedule), which is what a resume needs.

    Returns:
        The loaded ``keras.Model``.

    Raises:
        RunError: the file is too large, not a model, or Keras refuses it (the reason is
            Keras' own); exit code 1.
    """
    path = Path(path)
    keras = keras_module(verbose)
    keep_recursion_room(check_model_size(path))
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=compile)
    except Exception as exc:  # Keras raises many types for a bad file
        raise RunError(f"{path}: cannot load the model: {exc}") from None


# -- what the outputs are ---------------------------------------------------------------


@dataclass(frozen=True)
class Outputs:
    """What a classifier's outputs are.

    Attributes:
        units: output units (1: a binary classifier, the probability or logit of class 1).
        activation: the last layer's activation: ``softmax``, ``sigmoid``, ``linear``...
        probabilities: whether the outputs are probabilities (else logits).
    """

    units: int
    activation: str
    probabilities: bool

    @property
    def binary(self) -> bool:
        return self.units == 1


def output_activation(model: Any) -> str:
    """The activation the model's last layer applies (``softmax``, ``sigmoid``, ``linear``);
    a ``Softmax`` layer counts as ``softmax``."""
    last = model.layers[-1]
    if type(last).__name__ == "Softmax":
        return "softmax"
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", "linear") if activation is not None else "linear"


def output_kind(model: Any, config: Any = None) -> Outputs:
    """What the model's outputs are: the run's ``compile.from_logits`` when it says,
    else the last layer's activation (softmax or sigmoid: probabilities)."""
    activation = output_activation(model)
    units = int(model.output.shape[-1] or 0)
    if config is not None and getattr(config.compile, "from_logits", None) is not None:
        return Outputs(units, activation, not config.compile.from_logits)
    return Outputs(units, activation, activation in PROBABILITY_ACTIVATIONS)


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


# -- images -----------------------------------------------------------------------------


class ImageError(Exception):
    """An image file that cannot be used; the message is the reason."""


def _open_regular(path: Path) -> Any:
    """A binary file object for a regular file of at most :data:`MAX_FILE_BYTES`, opened
    without blocking (:func:`cnnbuild.io.open_regular`).

    Raises:
        ImageError: not a regular file, too large, or unreadable.
    """
    try:
        return open_regular(path, MAX_FILE_BYTES)
    except FileRefused as exc:
        raise ImageError(str(exc)) from None


def _checked(img: Any, channels: int) -> Any:
    """A Pillow image in the model's channel mode, its header checked before decoding.

    Raises:
        ImageError: another format, too many pixels, or 16-bit or float pixels.
    """
    if img.format not in IMAGE_FORMATS:
        raise ImageError(f"a {img.format} image; expected PNG, JPEG, BMP or GIF")
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ImageError(f"{width} x {height} pixels; the limit is {MAX_PIXELS:,} pixels")
    img.seek(0)
    sixteen = any(";16" in str(tile[3]) for tile in img.tile)  # Pillow reads RGB;16B as RGB
    if img.mode in ("I;16", "I;16B", "I", "F") or sixteen:
        raise ImageError(f"a {img.mode} image (16-bit or float); expected 8 bits")
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    if img.mode == mode:
        img.load()
        return img
    return img.convert(mode)


def _weights(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices below and above each output position, and the weight of the one
    above, as TensorFlow's bilinear resize computes them (half-pixel centres, float32)."""
    import numpy as np

    scale = np.float32(in_size / out_size)
    where = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(where)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(where), in_size - 1).astype(np.int64)
    return lower, upper, (where - floor).astype(np.float32)


def _bilinear_rows(rows: Any, size: tuple[int, int], height: int, width: int) -> np.ndarray:
    """Bilinear resize of an image of ``size`` (H, W), given ``rows(indices)`` -> the
    image's rows at those indices as an (n, W, C) array."""
    import numpy as np

    top, bottom, y_lerp = _weights(height, size[0])
    left, right, x_lerp = _weights(width, size[1])
    x_lerp = x_lerp[None, :, None]
    blended = []
    for index in (top, bottom):
        band = np.asarray(rows(index), dtype=np.float32)
        lo, hi = band[:, left], band[:, right]
        blended.append(lo + (hi - lo) * x_lerp)
    upper, lower = blended
    return upper + (lower - upper) * y_lerp[:, None, None]


def bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (H, W, C) to (height, width, C) float32 exactly as ``tf.image.resize``
    does (bilinear, half-pixel centres, no antialiasing), reading only the rows and
    columns it samples."""
    return _bilinear_rows(lambda index: image[index], image.shape[:2], height, width)


def _pillow_rows(img: Any, channels: int) -> Any:
    """``rows(indices)`` of a decoded Pillow image, copying out only those rows."""
    import numpy as np

    width = img.size[0]

    def rows(index: np.ndarray) -> np.ndarray:
        wanted = np.unique(index)
        band = np.stack(
            [np.asarray(img.crop((0, int(r), width, int(r) + 1))) for r in wanted]
        ).reshape(len(wanted), width, channels)
        return band[np.searchsorted(wanted, index)]

    return rows


def decode_image(path: Path, shape: tuple) -> np.ndarray:
    """An image file as raw float32 pixels (0..255) of the model's input shape (see
    :func:`decode_sized`)."""
    return decode_sized(path, shape)[0]


def decode_sized(path: Path, shape: tuple) -> tuple[np.ndarray, tuple[int, int]]:
    """An image file as raw float32 pixels (0..255) of the model's input shape, and the
    (height, width) it had in the file.

    The file is checked before it is decoded (a regular file, :data:`MAX_FILE_BYTES`,
    the :data:`MAX_PIXELS` its header declares), decoded with Pillow (PNG, JPEG, BMP,
    GIF: the first frame), converted to the model's channels (``L``, ``RGB``, ``RGBA``;
    an alpha channel is dropped for RGB) and resized at once to the model's height and
    width (:func:`bilinear`); a ``None`` dim keeps the image's own size.

    Args:
        path: the image file.
        shape: the model's input shape without the batch, (height, width, channels).

    Raises:
        ImageError: too large, not a regular file, not an image, or an unusable mode.
    """
    from PIL import Image, UnidentifiedImageError

    height, width, channels = shape
    if channels not in (1, 3, 4):
        raise ImageError(f"the model takes {channels} channels; images give 1, 3 or 4")
    with _open_regular(path) as file:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(file) as opened:
                    img = _checked(opened, channels)
                    return _resized(img, height, width, channels)
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError("not an image file Pillow can read") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(f"too many pixels ({exc})") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"cannot decode: {exc}") from None


def _resized(
    img: Any, height: int | None, width: int | None, channels: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """A decoded image at the model's size (a ``None`` dim keeps the image's own), and
    the size it had."""
    import numpy as np

    w, h = img.size
    if (height or h, width or w) == (h, w):
        return np.asarray(img, dtype=np.float32).reshape(h, w, channels), (h, w)
    rows = _pillow_rows(img, channels)
    return _bilinear_rows(rows, (h, w), height or h, width or w), (h, w)


def require_pillow(command: str) -> None:
    """Raises UsageError, with the install command, when Pillow is missing."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise UsageError(
            f"{command} needs Pillow to decode images; install it with: pip install pillow"
        ) from None


# -- exported artefacts -----------------------------------------------------------------

# what ``export`` writes into an artefact and what ``predict`` reads back: a JSON object
# {"class_names": [...], "outputs": "logits" | "probabilities"} under this name in an ONNX
# model's metadata_props and in a LiteRT model's metadata table; in a SavedModel, the
# class names one per line in assets/labels.txt and the object in its export marker
ARTEFACT_META = "cnnbuild"
SAVED_MODEL_LABELS = "assets/labels.txt"
SAVED_MODEL_MARKER = "cnnbuild_export.json"
RUNTIMES = {
    "onnx": ("onnxruntime", "onnxruntime"),
    "litert": ("ai_edge_litert", "ai-edge-litert"),
    "saved_model": ("tensorflow", "tensorflow"),
}


def labels_beside(path: Path) -> Path:
    """The labels file ``export`` writes beside an artefact: ``model.onnx`` ->
    ``model.labels.txt``, ``saved_model/`` -> ``saved_model.labels.txt``."""
    path = Path(path)
    return path.with_name(f"{path.stem if path.suffix else path.name}.labels.txt")


def artefact_format(path: Path) -> str | None:
    """``onnx``, ``litert`` or ``saved_model`` for an exported artefact, else None."""
    path = Path(path)
    if path.suffix == ".onnx" and path.is_file():
        return "onnx"
    if path.suffix == ".tflite" and path.is_file():
        return "litert"
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return "saved_model"
    return None


@dataclass
class Artefact:
    """An exported model opened with its own runtime.

    Attributes:
        path: the ``.onnx`` or ``.tflite`` file or the SavedModel folder.
        format: ``onnx``, ``litert`` or ``saved_model``.
        input_shape: the input without the batch, ``None`` for a free dim.
        meta: what export wrote into it (class names, outputs), or ``{}``.
        call: float32 raw pixels (N, H, W, C) -> float32 outputs (int8 ones dequantized).
    """

    path: Path
    format: str
    input_shape: tuple
    meta: dict
    call: Any

    def class_names(self, n: int) -> list[str]:
        """The artefact's class names, else its labels file's, else ``class0``..."""
        names = self.meta.get("class_names")
        if not isinstance(names, list):
            try:
                text = labels_beside(self.path).read_text(encoding="utf-8")
                names = text.splitlines()
            except (OSError, UnicodeDecodeError):
                names = []
        names = [str(name) for name in names]
        return names if len(names) == n else [f"class{i}" for i in range(n)]

    @property
    def probabilities(self) -> bool | None:
        """Whether the outputs are probabilities; None when the artefact does not say."""
        outputs = self.meta.get("outputs")
        return None if outputs not in ("logits", "probabilities") else outputs == "probabilities"


def _meta(text: Any) -> dict:
    try:
        meta = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _batchless(dims: Any) -> tuple:
    """An input shape without its batch dim; a named or negative dim is free (None)."""
    free = lambda d: d is None or isinstance(d, str) or int(d) < 1  # noqa: E731
    return tuple(None if free(d) else int(d) for d in list(dims)[1:])


def _onnx(path: Path) -> Artefact:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    meta = _meta(session.get_modelmeta().custom_metadata_map.get(ARTEFACT_META))
    call = lambda x: session.run(None, {inp.name: x})[0]  # noqa: E731
    return Artefact(path, "onnx", _batchless(inp.shape), meta, call)


def litert_meta(blob: bytes) -> dict:
    """The :data:`ARTEFACT_META` entry of a LiteRT model's metadata table, or ``{}``."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAs(blob, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == ARTEFACT_META.encode():
            return _meta(bytes(model.Buffers(entry.Buffer()).DataAsNumpy()))
    return {}


def _litert(path: Path) -> Artefact:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    blob = path.read_bytes()
    interpreter = Interpreter(model_content=blob)
    inp = interpreter.get_input_details()[0]

    def call(x: np.ndarray) -> np.ndarray:
        interpreter.resize_tensor_input(inp["index"], list(x.shape))
        interpreter.allocate_tensors()
        fed, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        if fed["dtype"] == np.int8:
            scale, zero = fed["quantization"]
            x = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(fed["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        if out["dtype"] == np.int8:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return np.asarray(y, dtype=np.float32)

    shape = inp.get("shape_signature", inp["shape"])
    return Artefact(path, "litert", _batchless(shape), litert_meta(blob), call)


def _saved_model(path: Path) -> Artefact:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    serve = loaded.signatures["serving_default"]
    name, spec = next(iter(serve.structured_input_signature[1].items()))
    try:
        meta = _meta((path / SAVED_MODEL_MARKER).read_text(encoding="utf-8")).get("meta", {})
    except (OSError, UnicodeDecodeError):
        meta = {}
    call = lambda x: next(iter(serve(**{name: tf.constant(x)}).values())).numpy()  # noqa: E731
    return Artefact(path, "saved_model", _batchless([None, *spec.shape[1:]]), meta, call)


def open_artefact(path: Path, verbose: bool = False) -> Artefact:
    """An exported ``.onnx``, ``.tflite`` or SavedModel folder, opened with its own
    runtime (imported here, only for the format at hand).

    Raises:
        UsageError: not an artefact, or its runtime is not installed.
        RunError: the runtime refuses the file.
    """
    import importlib.util

    fmt = artefact_format(path)
    if fmt is None:
        raise UsageError(f"{path}: not an exported .onnx, .tflite or SavedModel folder")
    module, pip = RUNTIMES[fmt]
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{path}: running a {fmt} model needs {pip}; pip install {pip}")
    if fmt == "saved_model":
        keras_module(verbose)  # TensorFlow's start-up messages, as for a .keras model
    opener = {"onnx": _onnx, "litert": _litert, "saved_model": _saved_model}[fmt]
    try:
        return opener(Path(path))
    except Exception as exc:  # runtimes raise their own types for a file they refuse
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise RunError(f"{path}: the {fmt} runtime cannot open it: {first}") from None


# -- starting weights (init:) ------------------------------------------------------------


@dataclass
class InitReport:
    """What :func:`apply_init` did: layers loaded, skipped (name, shapes here, shapes in
    the source) and those with weights on one side only."""

    source: str
    loaded: list[str]
    skipped: list[tuple[str, list, list]]
    only_here: list[str]
    only_source: list[str]

    def message(self) -> str:
        """``init: loaded the weights of N layers from SOURCE``, then what was not."""
        lines = [f"init: loaded the weights of {len(self.loaded)} layers from {self.source}"]
        if self.skipped:
            lines.append(
                "  skipped (skip_mismatch: true): "
                + ", ".join(
                    f"{n} {_shapes(a)} here, {_shapes(b)} there" for n, a, b in self.skipped
                )
            )
        if self.only_here:
            lines.append("  new here, not in the source: " + ", ".join(self.only_here))
        if self.only_source:
            lines.append("  in the source, not here: " + ", ".join(self.only_source))
        return "\n".join(lines)


def _shapes(shapes: list) -> str:
    return " + ".join(shape_str(s) for s in shapes)


def apply_init(model: Any, cfg: ModelConfig) -> InitReport | None:
    """Give ``model`` the starting weights ``cfg.init`` names, matched by layer name.

    Returns:
        What was loaded, or ``None`` without ``init:``.

    Raises:
        RunError: the source cannot be read, its weights are not cached (with where to
            save them), or a layer's weights differ in shape without ``skip_mismatch``.
    """
    init = cfg.init
    if init is None:
        return None
    if init.application is not None:
        source = application_weights(init.application, cfg.input_shape)
        label = f"keras.applications.{init.application} ({init.weights})"
    else:
        try:
            path = model_file(source_path(cfg))
        except ValueError as exc:
            raise RunError(f"{cfg.file}: init.from: {exc}") from None
        source = load_model(path)
        label = str(path)
    return transfer_weights(source, model, label, init.skip_mismatch)


def transfer_weights(source: Any, model: Any, label: str, skip_mismatch: bool) -> InitReport:
    """Copy each layer's weights from ``source`` to the layer of the same name.

    Raises:
        RunError: layers whose weights differ in shape, each named with both shapes
            (unless ``skip_mismatch``: then they keep their fresh weights).
    """
    theirs = {layer.name: layer for layer in source.layers if layer.weights}
    ours = {layer.name: layer for layer in model.layers if layer.weights}
    report = InitReport(label, [], [], [n for n in ours if n not in theirs], [])
    report.only_source = [n for n in theirs if n not in ours]
    for name, layer in ours.items():
        if name not in theirs:
            continue
        here = [tuple(w.shape) for w in layer.weights]
        there = [tuple(w.shape) for w in theirs[name].weights]
        if here != there:
            report.skipped.append((name, here, there))
            continue
        layer.set_weights(theirs[name].get_weights())
        report.loaded.append(name)
    if report.skipped and not skip_mismatch:
        raise RunError(
            f"init: the weights of {label} do not fit: "
            + "; ".join(
                f"layer {n!r} has {_shapes(a)} here but {_shapes(b)} in the source"
                for n, a, b in report.skipped
            )
            + ". Make the layers match, rename the changed ones, or set "
            "init.skip_mismatch: true to start them afresh"
        )
    return report


def application_weights(name: str, input_shape: tuple) -> Any:
    """``keras.applications.NAME(weights="imagenet", include_top=False)`` from Keras'
    cache only (``$KERAS_HOME/models``, Keras' own file names and hashes): nothing is
    downloaded here.

    Raises:
        RunError: no such application, or its weights file is not in the cache (the
            message names the file, its URL and where to save it).
    """
    keras = keras_module()
    factory = getattr(keras.applications, name, None)
    if not callable(factory):
        raise RunError(f"init.from: keras.applications has no model {name!r}")
    from keras.src.utils import file_utils

    real = file_utils.get_file

    def cached_only(fname: Any = None, origin: Any = None, *args: Any, **kwargs: Any) -> Any:
        kwargs["cache_dir"] = kwargs.get("cache_dir") or keras_home()  # as read now
        target = Path(kwargs["cache_dir"]) / kwargs.get("cache_subdir", "datasets") / str(fname)
        if not target.is_file():
            raise RunError(
                f"init.from: the {name} imagenet weights are not in Keras' cache.\n"
                f"This machine does not download {fname}. Download it elsewhere:\n"
                f"  {origin}\nand save it as\n  {target}\n(the folder is "
                "$KERAS_HOME/models, ~/.keras/models by default)"
            )
        return real(fname, origin, *args, **kwargs)

    file_utils.get_file = cached_only
    try:
        return factory(include_top=False, weights="imagenet", input_shape=tuple(input_shape))
    except RunError:
        raise
    except Exception as exc:  # Keras raises many types for a bad or foreign file
        raise RunError(f"init.from: keras.applications.{name}: {exc}") from None
    finally:
        file_utils.get_file = real


def keras_home() -> str:
    """Keras' cache folder: ``$KERAS_HOME``, else ``~/.keras`` (as ``get_file`` picks it)."""
    return os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))
