"""User-provided image sets (cnnbuild/data/files.py): npz files and image folders."""

from __future__ import annotations

import io

import numpy as np
import pytest

from cnnbuild.data import load_dataset
from cnnbuild.errors import DataError
from tests.conftest import Evil

# -- npz, folder ----------------------------------------------------------------------


def test_npz_grayscale_gets_a_channel_axis(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mnistish.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, 40),
        x_test=rng.integers(0, 256, (8, 28, 28), dtype=np.uint8),
        y_test=np.arange(8),
    )
    data = load_dataset({"npz": str(path)})
    assert data.image_shape == (28, 28, 1) and data.num_classes == 10


def test_npz_missing_keys_and_pickles_are_refused(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="missing arrays y_train, x_test, y_test"):
        load_dataset({"npz": str(path)})
    evil = tmp_path / "evil.npz"
    np.savez(
        evil,
        x_train=np.array([Evil("true")], dtype=object),
        y_train=np.zeros(1),
        x_test=np.zeros(1),
        y_test=np.zeros(1),
    )
    with pytest.raises(DataError, match="x_train holds object values"):
        load_dataset({"npz": str(evil)})


def _npz(path, **arrays):
    base = {
        "x_train": np.zeros((4, 8, 8, 3), np.uint8),
        "y_train": np.arange(4),
        "x_test": np.zeros((2, 8, 8, 3), np.uint8),
        "y_test": np.arange(2),
    }
    np.savez(path, **{**base, **arrays})
    return {"npz": str(path)}


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x_train": np.array(["a", "b"])}, "x_train holds <U1 values; expected numbers"),
        ({"y_test": np.array(3)}, r"y_test has shape \(\); expected an array of shape \(N,\)"),
        ({"y_train": np.full(4, 2**64 - 1, np.uint64)}, "class id 18446744073709551615"),
        ({"y_train": np.array([0, 1, 2, 2**40])}, "class id 1099511627776"),
        ({"y_test": np.array([0, -1])}, "class id -1"),
        ({"y_train": np.zeros(4, np.float32)}, "y_train holds float32 values"),
    ],
)
def test_hostile_npz_arrays_are_refused(tmp_path, arrays, message):
    with pytest.raises(DataError, match=message):
        load_dataset(_npz(tmp_path / "d.npz", **arrays))


def test_npz_header_is_checked_before_loading(tmp_path):
    """A small file declaring 1e8 images is refused from its header, not by MemoryError."""
    import zipfile

    path = tmp_path / "forged.npz"
    _npz(path)
    forged = tmp_path / "forged2.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(forged, "w") as dst:
        for name in src.namelist():
            if name == "x_train.npy":
                buf = io.BytesIO()
                header = {"descr": "|u1", "fortran_order": False, "shape": (10**8, 32, 32, 3)}
                np.lib.format.write_array_header_2_0(buf, header)
                dst.writestr(name, buf.getvalue() + bytes(150_000))
            else:
                dst.writestr(name, src.read(name))
    with pytest.raises(DataError, match=r"declares shape \(100000000, 32, 32, 3\)"):
        load_dataset({"npz": str(forged)})


def test_folder_dataset_splits_reproducibly(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("cats", "dogs", "owls"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / name / f"{i}.png")
    first = load_dataset(
        {"folder": str(tmp_path / "imgs")}, image_size=(12, 10), test_split=0.2, seed=3
    )
    again = load_dataset(
        {"folder": str(tmp_path / "imgs")}, image_size=(12, 10), test_split=0.2, seed=3
    )
    assert first.class_names == ["cats", "dogs", "owls"]
    assert first.image_shape == (12, 10, 3) and len(first.x_test) == 6
    assert np.array_equal(first.x_test, again.x_test)
    assert first.x_train.dtype == np.uint8


def _image_folder(root, counts: dict[str, int], size=(12, 10)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_folder_split_is_stratified_and_the_resize_recorded(tmp_path):
    root = _image_folder(tmp_path / "imgs", {"a": 30, "b": 30, "c": 30})
    (root / "a" / "README.txt").write_text("notes")
    data = load_dataset({"folder": str(root)}, image_size=(8, 8), test_split=0.2, seed=1)
    assert np.bincount(data.y_test).tolist() == [6, 6, 6]
    assert np.bincount(data.y_train).tolist() == [24, 24, 24]
    assert data.image_shape == (8, 8, 3) and "resized to 8x8" in data.resize
    assert any("ignored 1 file(s)" in n and "README.txt" in n for n in data.notes)


def test_folder_refuses_non_regular_and_undecodable_files_naming_them(tmp_path):
    import os

    root = _image_folder(tmp_path / "imgs", {"a": 3, "b": 3})
    (root / "a" / "fake.png").write_bytes(b"not a png at all")
    os.symlink("/dev/zero", root / "b" / "zero.png")
    os.mkfifo(root / "b" / "pipe.png")  # opening it would block forever
    with pytest.raises(DataError) as err:
        load_dataset({"folder": str(root)}, image_size=(12, 10), test_split=0.3, seed=1)
    message = err.value.message
    assert "3 file(s) are not regular, readable images" in message
    assert f"{root / 'a' / 'fake.png'} (not a readable image)" in message
    assert f"{root / 'b' / 'zero.png'} (not a regular file)" in message
    assert f"{root / 'b' / 'pipe.png'} (not a regular file)" in message


def test_folder_refuses_an_image_declaring_too_many_pixels_before_decoding(tmp_path):
    from cnnbuild.io import MAX_PIXELS
    from tests.test_predict import _bomb_png

    root = _image_folder(tmp_path / "imgs", {"a": 3, "b": 3})
    _bomb_png(root / "a" / "huge.png", 13_000, 13_000)  # 169 M pixels, below Pillow's limit
    with pytest.raises(DataError) as err:
        load_dataset({"folder": str(root)}, image_size=(12, 10), test_split=0.3, seed=1)
    assert (
        f"{root / 'a' / 'huge.png'} (13000 x 13000 pixels; the limit is {MAX_PIXELS:,} pixels)"
        in err.value.message
    )


def test_folder_with_free_input_size_needs_one_image_size(tmp_path):
    root = _image_folder(tmp_path / "imgs", {"a": 3})
    _image_folder(tmp_path / "imgs2", {"b": 3}, size=(9, 9))
    (tmp_path / "imgs2" / "b").rename(root / "b")
    with pytest.raises(DataError, match="different sizes .* give the config a fixed input size"):
        load_dataset({"folder": str(root)}, image_size=None, test_split=0.3, seed=1)
