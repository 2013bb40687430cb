"""User-provided image sets: an ``.npz`` file or a folder with one sub-folder per class."""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np

from cnnbuild.data.base import Data, tidy
from cnnbuild.errors import DataError
from cnnbuild.io import MAX_PIXELS, FileRefused, check_regular, class_folders

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
MAX_IMAGE_BYTES = 64 << 20
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# an npz may hold at most this share of the machine's memory (its arrays are loaded whole)
MEMORY_SHARE = 0.5


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30


def _header(zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and declared size of an ``.npy`` member, read from its header only."""
    info = zf.getinfo(member)
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    return tuple(shape), dtype, info.file_size


def check_npz_headers(path: Path, zf: zipfile.ZipFile) -> None:
    """Refuse an npz whose arrays cannot be an image set, before loading any of them.

    Checks each array's dtype (numbers only), rank, and declared size against the bytes
    its member holds and against the machine's memory.

    Raises:
        DataError: naming the array, what it declares and what is expected.
    """
    total = 0
    for key in NPZ_KEYS:
        shape, dtype, stored = _header(zf, f"{key}.npy")
        want_ranks = (3, 4) if key.startswith("x") else (1, 2)
        kinds = "uif" if key.startswith("x") else "ui"
        if dtype.kind not in kinds or dtype.hasobject:
            what = "numbers (uint8 or float)" if key.startswith("x") else "integer class ids"
            raise DataError(f"{path}: {key} holds {dtype} values; expected {what}")
        if len(shape) not in want_ranks:
            expected = "(N, H, W) or (N, H, W, C)" if key.startswith("x") else "(N,)"
            raise DataError(
                f"{path}: {key} has shape {shape}; expected an array of shape {expected}"
            )
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > stored:
            raise DataError(
                f"{path}: {key} declares shape {shape} ({nbytes:,} bytes) but its file "
                f"holds {stored:,} bytes; the file is damaged or forged"
            )
        total += nbytes
    limit = int(_memory_bytes() * MEMORY_SHARE)
    if total > limit:
        raise DataError(
            f"{path}: the arrays take {total:,} bytes, more than half of this machine's "
            f"memory ({limit:,} bytes); use a smaller dataset"
        )


def load_npz(path: Path) -> Data:
    """An npz with ``x_train, y_train, x_test, y_test`` (Keras' mnist.npz layout).

    The ``.npy`` headers are checked first (dtype, rank, declared size, memory), then the
    arrays are read with ``allow_pickle=False``: an npz cannot run code. Grayscale
    (N, H, W) images get a channel axis.
    """
    if not path.is_file():
        raise DataError(f"npz:{path}: no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            files = [n.removesuffix(".npy") for n in zf.namelist()]
            missing = [k for k in NPZ_KEYS if k not in files]
            if missing:
                raise DataError(
                    f"{path}: missing arrays {', '.join(missing)}; an npz dataset "
                    f"holds {', '.join(NPZ_KEYS)} (found: "
                    f"{', '.join(files) or 'nothing'})"
                )
            check_npz_headers(path, zf)
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in NPZ_KEYS}
            names = [str(n) for n in npz["class_names"]] if "class_names" in npz.files else None
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    return tidy(
        path.stem,
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"],
        arrays["y_test"],
        names,
        str(path),
    )


def _image_files(path: Path) -> tuple[list[str], dict[str, list[Path]], list[str], list[Path]]:
    """Class names, their image files, refused entries (with reasons), ignored files."""
    classes = class_folders(path)
    files: dict[str, list[Path]] = {}
    refused: list[str] = []
    ignored: list[Path] = []
    for name in classes:
        files[name] = []
        for entry in sorted(os.scandir(path / name), key=lambda e: e.name):
            item = Path(entry.path)
            if entry.name.startswith("."):
                continue
            if item.suffix.lower() not in IMAGE_SUFFIXES:
                ignored.append(item)
                continue
            try:
                check_regular(os.stat(item), MAX_IMAGE_BYTES)  # a symlink's target counts
            except OSError as exc:
                refused.append(f"{item} ({exc.strerror})")
            except FileRefused as exc:
                refused.append(f"{item} ({exc})")
            else:
                files[name].append(item)
    return classes, files, refused, ignored


class TooManyPixels(Exception):
    """An image whose header declares more than :data:`MAX_PIXELS` pixels."""


def _decode(item: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 (H, W, C), converted to ``mode``, resized to ``size`` (h, w)."""
    from PIL import Image

    with Image.open(item) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise TooManyPixels(f"{width} x {height} pixels; the limit is {MAX_PIXELS:,} pixels")
        image.load()
        image = image.convert(mode)
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _stratified(
    path: Path,
    classes: list[str],
    images: dict[str, list[tuple[np.ndarray, Path]]],
    test_split: float,
    seed: int,
) -> dict[str, list[tuple[np.ndarray, int, Path]]]:
    """``test_split`` of each class for the test set, the rest for training (by ``seed``);
    a ``test_split`` of 1 makes every image a test image (a folder that is a test set).

    Raises:
        DataError: a split with no image.
    """
    rng = np.random.default_rng(seed)
    split: dict[str, list[tuple[np.ndarray, int, Path]]] = {"train": [], "test": []}
    for label, name in enumerate(classes):
        order = rng.permutation(len(images[name]))
        order = np.arange(len(order)) if test_split >= 1 else order
        n_test = int(round(len(order) * test_split))
        for rank, i in enumerate(order):
            x, item = images[name][i]
            split["test" if rank < n_test else "train"].append((x, label, item))
    for part, items in split.items():
        if test_split >= 1 and not split["test"]:
            raise DataError(f"folder:{path}: no images in its class folders")
        if not items and not (part == "train" and test_split >= 1):
            raise DataError(
                f"folder:{path}: the {part} split holds no images; add more images or "
                "change train.test_split"
            )
    return split


def load_folder(
    path: Path, image_size: tuple[int, int] | None, channels: int, test_split: float, seed: int
) -> Data:
    """Images in ``path/<class>/*.png|jpg|jpeg|bmp|gif``, one sub-folder per class.

    Only regular image files are read (a symlink must point to one); a device, a FIFO, an
    oversized or undecodable file is refused, with every such file named, before training.
    Files with other extensions (a README, labels.csv) are ignored, with a note. The test
    set is ``test_split`` of each class (a stratified split chosen by ``seed``). Images
    are resized (bilinear) to the model's input size; a model with a free input size
    needs images of one size, which are then used as they are.
    """
    if not path.is_dir():
        raise DataError(f"folder:{path}: no such folder")
    classes, files, refused, ignored = _image_files(path)
    if not classes:
        raise DataError(f"folder:{path}: no class sub-folders; expected {path}/<class>/<image>")
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels, "RGB")
    size = tuple(image_size) if image_size and None not in image_size else None
    images: dict[str, list[tuple[np.ndarray, Path]]] = {}
    from PIL import Image, UnidentifiedImageError

    for name in classes:
        images[name] = []
        for item in files[name]:
            try:
                images[name].append((_decode(item, mode, size), item))
            except TooManyPixels as exc:
                refused.append(f"{item} ({exc})")
            except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
                refused.append(f"{item} (not a readable image)")
    if refused:
        shown = "\n  ".join(refused[:20]) + ("\n  ..." if len(refused) > 20 else "")
        raise DataError(
            f"folder:{path}: {len(refused)} file(s) are not regular, readable images; "
            f"remove or fix them:\n  {shown}"
        )
    shapes = {x.shape for xs in images.values() for x, _ in xs}
    if len(shapes) > 1:
        raise DataError(
            f"folder:{path}: images have {len(shapes)} different sizes (e.g. "
            f"{', '.join(str(s) for s in sorted(shapes)[:3])}) and the model's input size is "
            "free; give the config a fixed input size (images are resized to it)"
        )
    split = _stratified(path, classes, images, test_split, seed)
    shape = split["test"][0][0].shape
    data = tidy(
        path.name,
        np.stack([x for x, _, _ in split["train"]])
        if split["train"]
        else np.zeros((0, *shape), dtype=np.uint8),
        np.asarray([y for _, y, _ in split["train"]], dtype=np.int32),
        np.stack([x for x, _, _ in split["test"]]),
        np.asarray([y for _, y, _ in split["test"]], dtype=np.int32),
        classes,
        str(path),
    )
    data.test_files = [str(item) for _, _, item in split["test"]]
    data.resize = (
        f"resized to {size[0]}x{size[1]} (bilinear), the model's input size"
        if size
        else "not resized (the model's input size is free)"
    )
    if ignored:
        data.notes.append(
            f"folder:{path}: ignored {len(ignored)} file(s) that are not images: "
            + ", ".join(str(p.relative_to(path)) for p in ignored[:10])
            + (", ..." if len(ignored) > 10 else "")
        )
    return data
