"""Datasets as uint8 numpy arrays in memory: CIFAR-10/100, npz files, image folders and
the built-in procedural ``shapes`` set.

Nothing here imports TensorFlow except :mod:`cnnbuild.data.pipeline`; image folders are
decoded with Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnbuild.errors import DataError

MAX_CLASSES = 100_000


@dataclass
class Data:
    """A labelled image set split into train and test.

    Images are (N, H, W, C) pixel values, uint8 or float32 on the same 0..255 scale: the
    pipeline feeds them to the model unscaled, because the model owns its scaling (a
    ``Rescaling`` layer of the config, or the ``input_scaling`` layer added by default).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    source: str = ""
    notes: list[str] = field(default_factory=list)
    resize: str = "not resized"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    def limited(self, limit: int | None) -> Data:
        """At most ``limit`` training and ``limit`` test images (the first ones)."""
        if limit is None:
            return self
        return Data(
            self.name,
            self.x_train[:limit],
            self.y_train[:limit],
            self.x_test[:limit],
            self.y_test[:limit],
            self.class_names,
            self.source,
            list(self.notes),
            self.resize,
        )


def tidy(
    name: str,
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    class_names: list[str] | None,
    source: str,
) -> Data:
    """Check and normalise arrays: NHWC images, flat int labels, class names.

    Raises:
        DataError: when shapes, dtypes or labels do not make an image set.
    """
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "uif" or not value.ndim:
            received = (
                f"{value.dtype} array of shape {tuple(value.shape)}"
                if isinstance(value, np.ndarray)
                else type(value).__name__
            )
            raise DataError(f"{source}: {key} must be a numeric array; received {received}")
    xs = []
    for key in ("x_train", "x_test"):
        x = arrays[key]
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
            raise DataError(
                f"{source}: {key} must have shape (N, H, W), (N, H, W, 1), "
                f"(N, H, W, 3) or (N, H, W, 4); received {tuple(x.shape)}"
            )
        xs.append(x)
    if xs[0].shape[1:] != xs[1].shape[1:]:
        raise DataError(
            f"{source}: x_train images are {tuple(xs[0].shape[1:])} but x_test "
            f"images are {tuple(xs[1].shape[1:])}"
        )
    ys = []
    for key, x in (("y_train", xs[0]), ("y_test", xs[1])):
        y = (
            arrays[key].reshape(-1)
            if arrays[key].ndim == 2 and arrays[key].shape[1] == 1
            else arrays[key]
        )
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(
                f"{source}: {key} must hold one integer label per image "
                f"({len(x)}); received shape {tuple(arrays[key].shape)}"
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{source}: {key} must hold integer class ids; received {y.dtype}")
        # range-checked in the labels' own type, before any cast can wrap them
        cap = len(class_names) if class_names else MAX_CLASSES
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= cap):
            bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
            raise DataError(
                f"{source}: {key} holds class id {bad}; class ids must be 0 to {cap - 1}"
                + (f" ({len(class_names)} class names)" if class_names else "")
            )
        ys.append(y.astype(np.int32))
    top = max(int(ys[0].max(initial=0)), int(ys[1].max(initial=0))) + 1
    names = list(class_names) if class_names else [str(i) for i in range(top)]
    if top > len(names):
        raise DataError(
            f"{source}: labels go up to {top - 1} but there are only {len(names)} class names"
        )
    notes = []
    if xs[0].dtype != np.uint8:
        xs = [x.astype(np.float32) for x in xs]
        if xs[0].size and float(np.nanmax(xs[0])) <= 1.0:
            notes.append(
                f"{source}: the float images are all within [0, 1]; cnnbuild feeds pixel values "
                "to the model unscaled and the model scales them (by 1/255 unless its first "
                "layers scale); if these images are already scaled, start the layers with "
                "`Rescaling: {scale: 1}`"
            )
    return Data(name, xs[0], ys[0], xs[1], ys[1], names, source, notes)


def describe(spec: Any) -> str:
    """``cifar10`` / ``npz:PATH`` / ``folder:PATH`` for a dataset value of the config."""
    if isinstance(spec, dict):
        ((kind, path),) = spec.items()
        return f"{kind}:{path}"
    return str(spec)


def load_dataset(
    spec: Any,
    *,
    data_dir: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int = 3,
    test_split: float = 0.2,
    seed: int = 1337,
    quiet: bool = False,
) -> Data:
    """Load the dataset a config's ``train.dataset`` names.

    Args:
        spec: ``cifar10``, ``cifar100``, ``shapes``, ``{npz: PATH}`` or ``{folder: PATH}``.
        data_dir: a local CIFAR copy (the .tar.gz or the extracted folder).
        image_size: (height, width) to read a folder of images at.
        channels: channels to read a folder of images with (1, 3 or 4).
        test_split: fraction of a folder held out as the test set.
        seed: seed of the folder's train/test split.
        quiet: no download progress bar.

    Raises:
        DataError: the data cannot be fetched, read or trusted.
    """
    if isinstance(spec, dict):
        ((kind, path),) = spec.items()
        if kind == "npz":
            from cnnbuild.data.files import load_npz

            return load_npz(Path(path))
        from cnnbuild.data.files import load_folder

        return load_folder(Path(path), image_size, channels, test_split, seed)
    if spec == "shapes":
        from cnnbuild.data.synthetic import load_shapes

        return load_shapes()
    from cnnbuild.data.cifar import load_cifar

    return load_cifar(spec, data_dir=data_dir, quiet=quiet)
