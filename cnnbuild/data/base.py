"""The in-memory image set every loader returns (:class:`Data`) and the checks that
make one from arrays (:func:`tidy`)."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    test_files: list[str] = field(default_factory=list)

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
            self.test_files[:limit],
        )


def _images(source: str, x_train: np.ndarray, x_test: np.ndarray) -> list[np.ndarray]:
    """Train and test images as NHWC arrays of one image shape.

    Raises:
        DataError: another rank, channel count, or two image shapes.
    """
    xs = []
    for key, x in (("x_train", x_train), ("x_test", x_test)):
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
    return xs


def _labels(
    source: str, key: str, labels: np.ndarray, n: int, class_names: list[str] | None
) -> np.ndarray:
    """One int32 class id per image, each a class of the set.

    Raises:
        DataError: another shape or count, non-integer labels, or an id out of range.
    """
    y = labels.reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 else labels
    if y.ndim != 1 or len(y) != n:
        raise DataError(
            f"{source}: {key} must hold one integer label per image "
            f"({n}); received shape {tuple(labels.shape)}"
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
    return y.astype(np.int32)


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
    xs = _images(source, x_train, x_test)
    ys = [
        _labels(source, key, arrays[key], len(x), class_names)
        for key, x in (("y_train", xs[0]), ("y_test", xs[1]))
    ]
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
