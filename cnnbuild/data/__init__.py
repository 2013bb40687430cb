"""Datasets as uint8 numpy arrays in memory: CIFAR-10/100, npz files, image folders and
the built-in procedural ``shapes`` set.

Nothing here imports TensorFlow except :mod:`cnnbuild.data.pipeline`; image folders are
decoded with Pillow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnbuild.data.base import MAX_CLASSES, Data, tidy

__all__ = ["MAX_CLASSES", "Data", "describe", "load_dataset", "tidy"]


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
