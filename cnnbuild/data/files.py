"""User-provided image sets: an ``.npz`` file or a folder with one sub-folder per class."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cnnbuild.data import Data, tidy
from cnnbuild.errors import DataError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: Path) -> Data:
    """An npz with ``x_train, y_train, x_test, y_test`` (Keras' mnist.npz layout).

    Read with ``allow_pickle=False``: an npz cannot run code. Grayscale (N, H, W) images
    get a channel axis.
    """
    if not path.is_file():
        raise DataError(f"npz:{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path}: missing arrays {', '.join(missing)}; an npz dataset "
                    f"holds {', '.join(NPZ_KEYS)} (found: "
                    f"{', '.join(npz.files) or 'nothing'})"
                )
            arrays = {k: npz[k] for k in NPZ_KEYS}
            names = [str(n) for n in npz["class_names"]] if "class_names" in npz.files else None
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
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
