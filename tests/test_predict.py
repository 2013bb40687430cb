"""``cnnbuild predict`` against plain Keras on the same decoded arrays, on a trained demo run."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def test_images(demo_run):
    from cnnbuild.train import load_data, resolve_train
    from cnnbuild.validate import load_config

    settings = resolve_train(load_config(demo_run / "config.yaml"), {})
    data = load_data((32, 32, 3), settings, quiet=True)
    return data.x_test[:20], data.class_names


def _keras_probabilities(demo_run, arrays: np.ndarray) -> np.ndarray:
    import keras

    model = keras.saving.load_model(demo_run / "model.keras", compile=False)
    logits = model.predict(arrays, verbose=0)  # the demo's output layer is linear: logits
    return np.asarray(keras.ops.softmax(logits, axis=-1))


def _by_file(output: str) -> dict:
    data = json.loads(output)
    return {p["file"]: p["top"] for p in data["predictions"]}, data


def test_predict_on_20_pngs_equals_plain_keras(demo_run, test_images, tmp_path):
    images, names = test_images
    folder = tmp_path / "pngs"
    folder.mkdir()
    files = []
    for i, img in enumerate(images):
        files.append(folder / f"test_{i:02d}.png")
        Image.fromarray(img).save(files[-1])
    decoded = np.stack([np.asarray(Image.open(f), dtype=np.float32) for f in files])
    assert np.array_equal(decoded, images.astype(np.float32))  # PNG is lossless
    expected = _keras_probabilities(demo_run, decoded)

    result = run_cli("predict", demo_run, folder, "-k", 10, "--format", "json")
    assert result.exit_code == 0, result.output
    got, data = _by_file(result.stdout)
    assert data["failed"] == [] and data["resized"] == 0
    assert list(got) == [str(f) for f in files]
    for row, file in zip(expected, files, strict=True):
        top = got[str(file)]
        assert [t["index"] for t in top] == list(np.argsort(-row, kind="stable"))
        assert [t["class"] for t in top] == [names[t["index"]] for t in top]
        for t in top:
            assert t["probability"] == pytest.approx(float(row[t["index"]]), abs=2e-6)

    table = run_cli("predict", demo_run, folder / "test_00.png", "-k", 2)
    assert table.exit_code == 0, table.output
    first = names[int(np.argmax(expected[0]))]
    assert "test_00.png" in table.stdout and first in table.stdout

    csv = run_cli("predict", demo_run, str(folder / "test_0*.png"), "--format", "csv", "-k", 1)
    assert csv.exit_code == 0, csv.output
    lines = csv.stdout.strip().splitlines()
    assert lines[0] == "file,rank,index,class,probability"
    assert len(lines) == 1 + 10
    assert lines[1].startswith(f"{files[0]},1,{int(np.argmax(expected[0]))},{first},")


def _bomb_png(path, width: int, height: int) -> None:
    """A PNG whose header declares ``width x height`` pixels (its data is tiny)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_modes_sizes_and_bad_files(demo_run, test_images, tmp_path):
    import keras

    images, _ = test_images
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(images[0]).convert("L").save(folder / "gray.bmp")
    Image.fromarray(images[1]).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(images[2]).save(folder / "frame.gif")
    big = np.asarray(Image.fromarray(images[3]).resize((80, 56), Image.NEAREST))
    Image.fromarray(big).save(folder / "big.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    _bomb_png(folder / "bomb.png", 100_000, 100_000)

    missing = str(tmp_path / "none*.jpg")
    result = run_cli("predict", demo_run, folder, missing, "-f", "json", "-k", 10)
    assert result.exit_code == 1, result.output
    got, data = _by_file(result.stdout)
    assert set(got) == {str(folder / n) for n in ("gray.bmp", "rgba.png", "frame.gif", "big.png")}
    assert data["resized"] == 1
    reasons = {f["file"]: f["reason"] for f in data["failed"]}
    assert reasons[str(tmp_path / "none*.jpg")] == "no file matches this pattern"
    assert "not an image file Pillow can read" in reasons[str(folder / "broken.png")] or (
        "cannot decode" in reasons[str(folder / "broken.png")]
    )
    assert "pixels" in reasons[str(folder / "bomb.png")]
    assert str(folder / "notes.txt") not in reasons  # folders yield image suffixes only
    assert "error: " in result.stderr and "bomb.png" in result.stderr

    # what Keras' own folder loader makes of the larger image: the same bilinear resize
    sub = tmp_path / "ds" / "a"
    sub.mkdir(parents=True)
    Image.fromarray(big).save(sub / "big.png")
    ds = keras.utils.image_dataset_from_directory(
        sub.parent, image_size=(32, 32), interpolation="bilinear", labels=None, batch_size=1
    )
    resized = next(iter(ds)).numpy()
    luma = np.asarray(Image.fromarray(images[0]).convert("L"), dtype=np.float32)
    gif = np.asarray(Image.open(folder / "frame.gif").convert("RGB"), dtype=np.float32)
    rgb = np.stack([np.repeat(luma[..., None], 3, axis=-1), images[1].astype(np.float32), gif])
    expected = _keras_probabilities(demo_run, np.concatenate([rgb, resized]))
    for name, row in zip(("gray.bmp", "rgba.png", "frame.gif", "big.png"), expected, strict=True):
        top = got[str(folder / name)]
        assert [t["index"] for t in top] == list(np.argsort(-row, kind="stable")), name
        for t in top:
            assert t["probability"] == pytest.approx(float(row[t["index"]]), abs=2e-6), name


def test_bad_targets_and_flags(demo_run, tmp_path):
    result = run_cli("predict", tmp_path, tmp_path)
    assert result.exit_code == 2
    assert "no model.keras in this folder" in result.stderr
    result = run_cli("predict", demo_run, tmp_path, "-k", 0)
    assert result.exit_code == 2
    assert "-k and --batch-size must be at least 1" in result.stderr


def test_free_input_size_keeps_each_image_size(write, tmp_path):
    from cnnbuild.builder import build_model
    from cnnbuild.validate import load_config

    config = write(
        """
        name: free
        input: [null, null, 1]
        layers:
          - Conv2D: {filters: 4, kernel_size: 3}
          - GlobalAveragePooling2D
          - Dense: {units: 2, activation: softmax}
        compile: {optimizer: adam, loss: sparse_categorical_crossentropy, from_logits: false}
        """
    )
    model = build_model(load_config(config), compile=False)
    model.save(tmp_path / "free.keras")
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((20, 30), (41, 17))]
    for i, array in enumerate(arrays):
        Image.fromarray(array).save(tmp_path / f"{i}.png")
    result = run_cli("predict", tmp_path / "free.keras", tmp_path / "0.png", tmp_path / "1.png",
                  "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    got, data = _by_file(result.stdout)
    assert data["resized"] == 0
    for i, array in enumerate(arrays):
        want = model.predict(array[None, ..., None].astype(np.float32), verbose=0)[0]
        top = got[str(tmp_path / f"{i}.png")]
        assert [t["class"] for t in top] == [f"class{j}" for j in np.argsort(-want)]
        for t in top:
            assert t["probability"] == pytest.approx(float(want[t["index"]]), abs=2e-6)
