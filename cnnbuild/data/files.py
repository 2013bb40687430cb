"""User-provided image sets: an ``.npz`` file or a folder with one sub-folder per class."""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np

from cnnbuild.data import Data, tidy
from cnnbuild.errors import DataError

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


def load_folder(
    path: Path, image_size: tuple[int, int] | None, channels: int, test_split: float, seed: int
) -> Data:
    """Images in ``path/<class>/*.png|jpg|...``, read with Keras' image_dataset_from_directory.

    A fraction ``test_split`` is held out as the test set, chosen by ``seed`` (the same
    split every time).
    """
    if not path.is_dir():
        raise DataError(f"folder:{path}: no such folder")
    from cnnbuild.builder import keras_module

    keras = keras_module()
    size = tuple(image_size) if image_size and None not in image_size else (256, 256)
    mode = {1: "grayscale", 3: "rgb", 4: "rgba"}.get(channels, "rgb")
    try:
        train, test = keras.utils.image_dataset_from_directory(
            str(path),
            labels="inferred",
            label_mode="int",
            color_mode=mode,
            batch_size=None,
            image_size=size,
            shuffle=True,
            seed=seed,
            validation_split=test_split,
            subset="both",
            verbose=False,
        )
    except ValueError as exc:
        raise DataError(f"folder:{path}: {exc}") from None
    names = list(train.class_names)

    def arrays(ds) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for x, y in ds.as_numpy_iterator():
            xs.append(np.clip(np.rint(x), 0, 255).astype(np.uint8))
            ys.append(int(y))
        if not xs:
            raise DataError(
                f"folder:{path}: the split holds no images; add more images or "
                "change train.test_split"
            )
        return np.stack(xs), np.asarray(ys)

    x_train, y_train = arrays(train)
    x_test, y_test = arrays(test)
    return tidy(path.name, x_train, y_train, x_test, y_test, names, str(path))
