"""What a trained model sees in an image: feature maps, first-layer filters, a Grad-CAM
heat map for a class, and the top-k prediction with class names.

Images are drawn with numpy and Pillow at sizes that follow from the layer shapes (a tile
per channel, upscaled by a whole factor), so the files are the same on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnbuild.backend import keras_module
from cnnbuild.catalog import kinds
from cnnbuild.errors import DataError, UsageError
from cnnbuild.io import atomic_write, os_errors, write_json
from cnnbuild.runs import (
    ImageError,
    class_names,
    decode_image,
    load_model,
    open_target,
    output_dir,
    output_kind,
)
from cnnbuild.runs import probabilities as to_probabilities

CONV_KINDS = kinds(group="conv")
GAP = 2  # pixels between tiles
TILE = 64  # a feature-map tile is upscaled to at least this many pixels
OVERLAY = 256  # the Grad-CAM overlay's shorter side, at least


@dataclass
class Loaded:
    """A loaded model and what is known about it."""

    model: Any
    cfg: Any  # the run's ModelConfig, or None for a bare .keras file
    class_names: list[str]
    out_dir: Path
    probabilities: bool  # the model's output is already softmax/sigmoid


def load_target(target: Path, verbose: bool = False) -> Loaded:
    """A run directory (its best ``model.keras``) or a ``.keras`` file, opened by
    :mod:`cnnbuild.runs` as every command opens it.

    Raises:
        UsageError: ``target`` is neither.
    """
    found = open_target(target)
    model = load_model(found.model_path, verbose=verbose)
    units = int(model.output.shape[-1])
    names = class_names(found, max(units, 2))
    already = output_kind(model, found.config).probabilities
    return Loaded(model, found.config, names, output_dir(found, "show"), already)


def read_image(path: Path, shape: tuple) -> np.ndarray:
    """An image file as raw float32 pixels (0..255) of the model's input shape, decoded
    and resized exactly as ``cnnbuild predict`` does it.

    Raises:
        DataError: the file is missing, too large or not a readable image.
    """
    try:
        return decode_image(path, shape)
    except ImageError as exc:
        raise DataError(f"{path}: {exc}") from None


def conv_layers(model: Any) -> list[Any]:
    """The model's convolution layers, in order."""
    return [layer for layer in model.layers if type(layer).__name__ in CONV_KINDS]


def probabilities(target: Loaded, outputs: np.ndarray) -> np.ndarray:
    """Class probabilities (N, classes) from the model's outputs."""
    return to_probabilities(outputs, target.probabilities)


CAM_METHODS = ("hires", "grad")


def gradcam(
    model: Any,
    x: np.ndarray,
    layer: Any,
    classes: np.ndarray | None = None,
    method: str = "hires",
):
    """Class activation maps from gradients: where ``layer`` saw the class.

    ``grad`` is Grad-CAM (Selvaraju et al., 2017): each feature map of ``layer`` is
    weighted by the mean over positions of the gradient of the class score, and the ReLU
    of the weighted sum is the map. ``hires`` (the default) is its element-wise form,
    HiResCAM (Draelos and Carin, 2020): gradient times activation at every position,
    summed over channels. The two agree for a GlobalAveragePooling head; with a
    GlobalMaxPooling head (as in ``shapes_demo``) the gradient reaches only each
    channel's winning position, and averaging it spreads credit over positions that did
    not decide the output, so ``hires`` follows what the model computed.

    Args:
        model: a functional Keras model.
        x: raw pixels (N, H, W, C).
        layer: a layer of ``model`` with a 4-D output (the last convolution, usually).
        classes: the class of each image (default: the predicted one).
        method: ``hires`` or ``grad``.

    Returns:
        Maps (N, H, W) in 0..1, upsampled bilinearly to the input size; the classes used;
        and the model's outputs.
    """
    import tensorflow as tf

    keras = keras_module()
    both = keras.Model(model.input, [layer.output, model.output])
    xs = tf.convert_to_tensor(x, dtype=tf.float32)
    with tf.GradientTape() as tape:
        maps, out = both(xs, training=False)
        tape.watch(maps)
        out = tf.cast(out, tf.float32)
        if classes is None:
            classes = (
                np.asarray(out).argmax(axis=1)
                if out.shape[-1] > 1
                else (np.asarray(out)[:, 0] > 0).astype(int)
            )
        if out.shape[-1] > 1:
            score = tf.gather(out, classes, axis=1, batch_dims=1)
        else:
            score = out[:, 0] * (2.0 * np.asarray(classes, dtype="float32") - 1.0)
    grads = tf.cast(tape.gradient(score, maps), tf.float32)
    if method == "grad":
        grads = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(grads * tf.cast(maps, tf.float32), axis=-1))
    cam = tf.image.resize(cam[..., None], x.shape[1:3], method="bilinear")[..., 0]
    cam = np.asarray(cam)
    top = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(top > 0, cam / np.where(top > 0, top, 1), 0.0), np.asarray(classes), out


# -- drawing ----------------------------------------------------------------------------


def _to_uint8(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (
        np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) / (hi - lo) * 255).astype(np.uint8)
    )


def scale_factor(size: int, target: int) -> int:
    return max(1, math.ceil(target / max(size, 1)))


def grid(tiles: np.ndarray, scale: int) -> np.ndarray:
    """Tiles (N, h, w[, 3]) upscaled by ``scale`` on a square-ish grid with white gaps."""
    n, h, w = tiles.shape[:3]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    th, tw = h * scale, w * scale
    shape = (rows * (th + GAP) + GAP, cols * (tw + GAP) + GAP, *tiles.shape[3:])
    canvas = np.full(shape, 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        big = tile.repeat(scale, axis=0).repeat(scale, axis=1)
        top, left = GAP + r * (th + GAP), GAP + c * (tw + GAP)
        canvas[top : top + th, left : left + tw] = big
    return canvas


def feature_grid(maps: np.ndarray) -> np.ndarray:
    """One image's feature maps (h, w, C) as a grid of grey tiles, each scaled to 0..255."""
    tiles = np.stack([_to_uint8(maps[..., k]) for k in range(maps.shape[-1])])
    return grid(tiles, scale_factor(maps.shape[0], TILE))


def filter_tiles(kernel: np.ndarray) -> np.ndarray:
    """A first-layer kernel (kh, kw, C, filters) as RGB tiles (grey unless C is 3)."""
    k = np.moveaxis(np.asarray(kernel, dtype="float64"), -1, 0)
    if k.shape[-1] != 3:
        k = np.repeat(k.mean(axis=-1, keepdims=True), 3, axis=-1)
    tiles = np.stack([_to_uint8(f) for f in k])
    return grid(tiles, scale_factor(k.shape[1], 24))


def overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The image with the heat map (jet colours) blended over it, upscaled."""
    from matplotlib import colormaps

    rgb = image if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, axis=-1)
    heat = colormaps["jet"](cam)[..., :3] * 255
    blend = (0.55 * rgb.astype("float64") + 0.45 * heat).clip(0, 255).astype(np.uint8)
    scale = scale_factor(min(image.shape[:2]), OVERLAY)
    return blend.repeat(scale, axis=0).repeat(scale, axis=1)


def save_png(array: np.ndarray, path: Path) -> None:
    """Write an image array atomically as PNG."""
    from PIL import Image

    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


# -- the command ------------------------------------------------------------------------


def unique_stems(paths: list[Path]) -> list[str]:
    """Each image's file stem for its PNGs; a stem already taken (``a/x.png`` and
    ``b/x.png``) gets ``-2``, ``-3``... so no image's PNGs overwrite another's."""
    taken: set[str] = set()
    out = []
    for path in paths:
        stem, n = path.stem, 1
        while stem in taken:
            n += 1
            stem = f"{path.stem}-{n}"
        taken.add(stem)
        out.append(stem)
    return out


def _layers(t: Loaded, target: Path, layer: str | None) -> tuple[list[Any], Any, Any]:
    """The convolutions to draw, the one for Grad-CAM, and the first (for its filters).

    Raises:
        UsageError: the model has no convolution, or ``layer`` is not one of them.
    """
    convs = conv_layers(t.model)
    if not convs:
        raise UsageError(f"{target}: the model has no convolution layer to show")
    names = [c.name for c in convs]
    if layer is not None and layer not in names:
        raise UsageError(
            f"--layer {layer}: not a convolution layer of the model; "
            f"choose one of: {', '.join(names)}"
        )
    chosen = [c for c in convs if c.name == layer] if layer else convs
    return chosen, chosen[-1] if layer else convs[-1], convs[0]


def _class_index(t: Loaded, class_name: str | None) -> int | None:
    """The class ``--class`` names (by name or index), or None for the predicted one.

    Raises:
        UsageError: not a class of the model.
    """
    if class_name is None:
        return None
    if class_name in t.class_names:
        return t.class_names.index(class_name)
    if class_name.isascii() and class_name.isdigit() and int(class_name) < len(t.class_names):
        return int(class_name)
    raise UsageError(
        f"--class {class_name}: not a class of the model; classes: " + ", ".join(t.class_names)
    )


@dataclass
class _Views:
    """What ``show`` draws for every image: the layers, the class, the method."""

    target: Loaded
    features: Any  # a keras.Model from the input to the chosen layers' outputs
    chosen: list[Any]
    cam_layer: Any
    wanted: int | None
    cam: str
    top: int


def _show_image(v: _Views, path: Path, stem: str, x: np.ndarray, out: Path) -> dict:
    """Feature maps, Grad-CAM and the top classes of one image, written under ``out`` as
    ``STEM-*.png``."""
    batch = x[None]
    maps = v.features(batch, training=False)
    maps = maps if isinstance(maps, (list, tuple)) else [maps]
    written = []
    for conv, m in zip(v.chosen, maps, strict=True):
        file = out / f"{stem}-features-{conv.name}.png"
        save_png(feature_grid(np.asarray(m, dtype="float32")[0]), file)
        written.append(str(file))
    wanted = None if v.wanted is None else np.array([v.wanted])
    cams, used, outputs = gradcam(v.target.model, batch, v.cam_layer, wanted, v.cam)
    cam_file = out / f"{stem}-gradcam.png"
    save_png(overlay(x.astype(np.uint8), cams[0]), cam_file)
    probs = probabilities(v.target, outputs)[0]
    order = np.argsort(-probs)[: v.top]
    names = v.target.class_names
    return {
        "image": str(path),
        "features": written,
        "gradcam": str(cam_file),
        "gradcam_layer": v.cam_layer.name,
        "gradcam_class": names[int(used[0])],
        "gradcam_method": v.cam,
        "top": [[names[i], round(float(probs[i]), 4)] for i in order],
    }


def show(
    target: Path,
    images: list[Path],
    *,
    layer: str | None = None,
    class_name: str | None = None,
    top: int = 3,
    out_dir: Path | None = None,
    cam: str = "hires",
    verbose: bool = False,
) -> dict:
    """Write feature maps, filters, Grad-CAM and top-k predictions for image files.

    Returns:
        ``{"out_dir", "filters", "images": [{"image", "features", "gradcam", "top"}]}``.

    Raises:
        UsageError: an unknown layer or class, or a model without convolutions.
        DataError: an image cannot be read.
        WriteError: the output folder cannot be written (naming it and what to do).
    """
    if cam not in CAM_METHODS:
        raise UsageError(f"--cam {cam}: choose one of {', '.join(CAM_METHODS)}")
    t = load_target(target, verbose)
    chosen, cam_layer, first = _layers(t, target, layer)
    wanted = _class_index(t, class_name)
    shape = tuple(t.model.input.shape[1:])
    xs = [read_image(p, shape) for p in images]
    out = out_dir or t.out_dir
    features = keras_module().Model(t.model.input, [c.output for c in chosen])
    views = _Views(t, features, chosen, cam_layer, wanted, cam, top)
    filters = out / "filters.png"
    with os_errors(out):
        save_png(filter_tiles(first.kernel.numpy()), filters)
        report: dict[str, Any] = {"out_dir": str(out), "filters": str(filters), "images": []}
        for path, stem, x in zip(images, unique_stems(images), xs, strict=True):
            report["images"].append(_show_image(views, path, stem, x, out))
        write_json(out / "show.json", report)
    return report
