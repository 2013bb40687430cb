"""cnnbuild.runs: targets, the one model loader and its bounds, image decoding, what the
outputs are, output folders. Real files, real Keras, real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnbuild.errors import RunError, UsageError
from cnnbuild.runs import (
    MAX_CONFIG_BYTES,
    MAX_MODEL_BYTES,
    ImageError,
    Target,
    bilinear,
    decode_sized,
    estimate_parameters,
    held_weights,
    load_model,
    open_target,
    output_dir,
    output_kind,
    probabilities,
)
from tests.conftest import ROOT, run_cli

TINY = """
name: tiny
input: [32, 32, 3]
layers:
  - Conv2D: {filters: 4, kernel_size: 3}
  - GlobalAveragePooling2D
  - Dense: {units: 3}
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A small conv model saved by ``cnnbuild build`` (no training needed)."""
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "tiny.yaml").write_text(TINY, encoding="utf-8")
    result = run_cli("build", folder / "tiny.yaml", "-o", folder / "tiny.keras")
    assert result.exit_code == 0, result.output
    return folder / "tiny.keras"


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) if the block blocks longer than ``seconds``."""

    def expired(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- targets and folders ----------------------------------------------------------------


def test_open_target_and_output_dir(tiny_model, tmp_path):
    bare = open_target(tiny_model)
    assert bare == Target(tiny_model)
    assert output_dir(bare, "show") == tiny_model.with_name("tiny-show")
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(UsageError, match="no model.keras in this folder"):
        open_target(run)
    (run / "model.keras").write_bytes(tiny_model.read_bytes())
    opened = open_target(run)
    assert opened.run_dir == run and opened.config is None
    assert output_dir(opened, "evaluate") == run / "evaluate"
    with pytest.raises(UsageError, match=r"--weights .*x\.txt: expected a run directory"):
        open_target(tmp_path / "x.txt", "--weights")


# -- what the outputs are ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "activation", "already"),
    [
        ("Dense(3)", "linear", False),
        ("Dense(3, activation='softmax')", "softmax", True),
        ("Dense(1, activation='sigmoid')", "sigmoid", True),
        ("Softmax()", "softmax", True),  # a Softmax layer, not an activation argument
    ],
)
def test_output_kind_knows_activations_and_the_softmax_layer(head, activation, already):
    import keras

    inputs = keras.Input((4,))
    x = keras.layers.Dense(3)(inputs)
    out = eval(f"keras.layers.{head}")(x)  # noqa: S307 (a literal of this test)
    kind = output_kind(keras.Model(inputs, out))
    assert (kind.activation, kind.probabilities) == (activation, already)
    assert kind.binary == (kind.units == 1)


def test_probabilities_of_logits_and_of_one_unit():
    logits = np.array([[1.0, 2.0, 3.0]])
    p = probabilities(logits, already=False)
    np.testing.assert_allclose(p, np.exp(logits) / np.exp(logits).sum())
    np.testing.assert_allclose(probabilities(np.array([[0.0]]), already=False), [[0.5, 0.5]])
    np.testing.assert_allclose(probabilities(np.array([[0.8]]), already=True), [[0.2, 0.8]])


# -- images -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "out"), [((100, 80, 3), (32, 32)), ((7, 9, 1), (32, 32)), ((33, 17, 4), (16, 40))]
)
def test_resize_as_decoded_equals_tf_image_resize(tmp_path, size, out):
    import tensorflow as tf

    image = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(image[..., 0] if size[-1] == 1 else image).save(path)
    expected = tf.image.resize(image.astype(np.float32), out, method="bilinear").numpy()
    decoded, original = decode_sized(path, (*out, size[-1]))
    assert original == size[:2]
    np.testing.assert_array_equal(decoded, expected)
    np.testing.assert_array_equal(bilinear(image, *out), expected)


def test_a_fifo_or_a_folder_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with deadline(30), pytest.raises(ImageError, match="not a regular file"):
        decode_sized(fifo, (8, 8, 3))
    with pytest.raises(ImageError, match="not a regular file|Is a directory"):
        decode_sized(tmp_path, (8, 8, 3))


def test_predict_and_show_refuse_a_fifo_within_seconds(tiny_model, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with deadline(120):
        result = run_cli("predict", tiny_model, fifo)
        shown = run_cli("show", tiny_model, fifo, "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "pipe.png: not a regular file" in result.stderr
    assert shown.exit_code == 1, shown.output
    assert "pipe.png: not a regular file" in shown.stderr


# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child
# of a large pytest process would report the parent's size; VmHWM is this process's own.
_PEAK = """
import sys
from cnnbuild.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
with open("/proc/self/status") as status:
    peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
print("exit", code, "peak_kb", peak, file=sys.stderr)
"""


def _peak(*args: object) -> tuple[int, int, str]:
    """Run ``cnnbuild ARGS`` in a fresh process: (exit code, peak RSS bytes, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    words = proc.stderr.split()
    at = len(words) - 1 - words[::-1].index("peak_kb")
    return int(words[at - 1]), int(words[at + 1]) * 1024, proc.stderr


@pytest.mark.slow
def test_predict_on_four_7000_pixel_pngs_stays_under_1_5_gb(tiny_model, tmp_path):
    h = w = 7000
    ramp = np.linspace(0, 255, h, dtype=np.float32)
    planes = [np.broadcast_to(ramp[:, None], (h, w)), np.broadcast_to(ramp[None, :], (h, w))]
    image = np.stack([*planes, np.full((h, w), 128, np.float32)], axis=-1).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "big0.png", compress_level=1)
    expected = bilinear(image, 32, 32)
    del image, planes
    for i in range(1, 4):
        os.link(tmp_path / "big0.png", tmp_path / f"big{i}.png")
    assert (tmp_path / "big0.png").stat().st_size < 4_000_000  # small file, 49 M pixels
    code, peak, err = _peak("predict", tiny_model, tmp_path, "-f", "json")
    assert code == 0, err
    assert peak < 1.5 * 1024**3, f"peak RSS {peak:,} bytes"
    model = load_model(tiny_model)
    want = probabilities(model.predict(expected[None], verbose=0), already=False)
    result = run_cli("predict", tiny_model, tmp_path / "big0.png", "-f", "json", "-k", 3)
    top = json.loads(result.stdout)["predictions"][0]["top"]
    assert [t["index"] for t in top] == list(np.argsort(-want[0], kind="stable"))
    for t in top:
        assert t["probability"] == pytest.approx(float(want[0][t["index"]]), abs=2e-6)


# -- the model: bounds before Keras allocates -------------------------------------------


def _rewrite(src: Path, dst: Path, edit) -> None:
    """Copy a .keras archive, passing its parsed config.json through ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "config.json":
                data = json.dumps(edit(json.loads(data))).encode()
            zout.writestr(info.filename, data)


def _dense_layers(tree):
    return [layer for layer in tree["config"]["layers"] if layer["class_name"] == "Dense"]


def test_the_estimate_counts_the_tiny_model_exactly(tiny_model):
    with zipfile.ZipFile(tiny_model) as archive:
        tree = json.loads(archive.read("config.json"))
    assert estimate_parameters(tree) == load_model(tiny_model).count_params() == 127


@pytest.mark.slow
def test_a_small_keras_file_asking_for_20m_dense_units_is_refused_under_2_gb(tiny_model, tmp_path):
    def huge(tree):  # Dense(20,000,000) on 200 channels: 4 G parameters, 16 GB
        conv = next(la for la in tree["config"]["layers"] if la["class_name"] == "Conv2D")
        conv["config"]["filters"] = 200
        dense = _dense_layers(tree)[0]
        dense["config"]["units"] = 20_000_000
        dense["build_config"]["input_shape"] = [None, 200]
        return tree

    def huge_without_build_config(tree):
        layer = _dense_layers(huge(tree))[0]
        layer.pop("build_config", None)
        return tree

    for edit in (huge, huge_without_build_config):
        bad = tmp_path / f"{edit.__name__}.keras"
        _rewrite(tiny_model, bad, edit)
        assert bad.stat().st_size < 1_000_000
        with pytest.raises(RunError, match="the model asks for about"):
            load_model(bad)
    code, peak, err = _peak("predict", tmp_path / "huge.keras", tmp_path)
    assert code == 1 and "asks for about 4,020,005,600 parameters" in err, err
    assert f"the limit is {MAX_MODEL_BYTES:,} bytes" in err
    assert peak < 2 * 1024**3, f"peak RSS {peak:,} bytes"


def test_a_huge_config_json_is_refused_by_its_declared_size(tiny_model, tmp_path):
    bad = tmp_path / "bloated.keras"
    with zipfile.ZipFile(tiny_model) as zin, zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as z:
        for info in zin.infolist():
            if info.filename != "config.json":
                z.writestr(info.filename, zin.read(info))
        with z.open("config.json", "w", force_zip64=True) as member:
            chunk = b" " * (1 << 20)
            for _ in range(MAX_CONFIG_BYTES // len(chunk) + 1):
                member.write(chunk)
    assert bad.stat().st_size < 1_000_000
    with pytest.raises(RunError, match="its config.json declares .* bytes; the limit is"):
        load_model(bad)


def test_a_bad_file_is_a_message(tmp_path):
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(RunError, match="cannot load the model: not a .keras archive"):
        load_model(junk)
    fifo = tmp_path / "pipe.keras"
    os.mkfifo(fifo)
    with deadline(30), pytest.raises(RunError, match="not a regular file"):
        load_model(fifo)


def test_a_16_bit_rgb_png_is_refused_as_the_readme_says(tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + np.full((4, 3), 1000, ">u2").tobytes() for _ in range(4))
    header = struct.pack(">IIBBBBB", 4, 4, 16, 2, 0, 0, 0)  # 16 bits, RGB
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
    (tmp_path / "deep.png").write_bytes(png + chunk(b"IEND", b""))
    with pytest.raises(ImageError, match="16-bit or float"):
        decode_sized(tmp_path / "deep.png", (4, 4, 3))


# -- the model: its weights file must hold what its config asks for ----------------------


@pytest.fixture(scope="module")
def dense25(tmp_path_factory) -> Path:
    """A real Keras model, 25 inputs into a Dense(3), saved as Keras saves it."""
    import keras

    path = tmp_path_factory.mktemp("dense25") / "dense25.keras"
    keras.Sequential([keras.Input((25,)), keras.layers.Dense(3)]).save(path)
    return path


def _ask_for_20m_units(tree):
    _dense_layers(tree)[0]["config"]["units"] = 20_000_000
    return tree


def _declare_unwritten(src: Path, dst: Path, units: int) -> None:
    """Copy a .keras archive, its config asking for Dense(units) and its weights file
    declaring the kernel and bias at that size without storing them (h5 datasets created
    with a shape and never written take no space)."""
    import io

    import h5py

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        old = h5py.File(io.BytesIO(zin.read("model.weights.h5")), "r")
        buffer = io.BytesIO()
        with h5py.File(buffer, "w") as new:
            old.visititems(lambda name, node: _copy_declared(new, name, node, units))
        old.close()
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "config.json":
                data = json.dumps(_ask_for_20m_units(json.loads(data))).encode()
            elif info.filename == "model.weights.h5":
                data = buffer.getvalue()
            zout.writestr(info.filename, data)


def _copy_declared(new, name: str, node, units: int) -> None:
    import h5py

    if not isinstance(node, h5py.Dataset):
        return
    shape = node.shape
    if len(shape) == 2:
        new.create_dataset(name, shape=(shape[0], units), dtype=node.dtype)
    elif len(shape) == 1 and shape[0] == 3:
        new.create_dataset(name, shape=(units,), dtype=node.dtype)
    else:
        new.create_dataset(name, data=node[()])


def test_the_weights_a_keras_file_holds_are_read_from_h5_metadata(dense25):
    assert held_weights(dense25)[:2] == (25 * 3 + 3, (25 * 3 + 3) * 4)
    assert load_model(dense25).count_params() == 78


def test_the_estimate_is_exact_for_every_conv_kind(tmp_path):
    """Separable (a 1 x 1 pointwise after the depthwise), depthwise, grouped, transposed,
    without bias: the estimate must not exceed what Keras holds, or a real model would be
    refused by the weight check."""
    import keras

    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((16, 16, 4)),
            layers.SeparableConv2D(8, 3, use_bias=False),
            layers.SeparableConv2D(8, 3, depth_multiplier=2),
            layers.DepthwiseConv2D(3, depth_multiplier=2),
            layers.Conv2D(8, 3, groups=2),
            layers.Conv2DTranspose(4, 3),
            layers.BatchNormalization(),
            layers.Flatten(),
            layers.Dense(3, use_bias=False),
        ]
    )
    model.save(tmp_path / "kinds.keras")
    with zipfile.ZipFile(tmp_path / "kinds.keras") as archive:
        tree = json.loads(archive.read("config.json"))
    assert estimate_parameters(tree) == model.count_params()
    assert held_weights(tmp_path / "kinds.keras")[0] == model.count_params()


def test_a_small_model_with_layers_saved_unbuilt_loads(tmp_path):
    """UnitNormalization and the pools have no weights, so Keras saves them without a
    build_config; the estimate counts such a layer at the widest input. It must not refuse
    a real model (the strangers' new_layers_mix was refused for it)."""
    import keras

    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((40, 40, 3)),
            layers.Conv2D(16, 3, padding="same"),
            layers.GroupNormalization(4),
            layers.UnitNormalization(),
            layers.GlobalMaxPooling2D(),
            layers.Dense(10),
        ]
    )
    model.save(tmp_path / "unbuilt.keras")
    with zipfile.ZipFile(tmp_path / "unbuilt.keras") as archive:
        tree = json.loads(archive.read("config.json"))
    assert estimate_parameters(tree) >= model.count_params()
    assert load_model(tmp_path / "unbuilt.keras").count_params() == model.count_params()


@pytest.mark.slow
def test_predict_refuses_a_config_asking_for_more_weights_than_the_file_holds(dense25, tmp_path):
    """Dense(20,000,000) after 25 inputs: 520 M parameters (2.08 GB as float32), under the
    2 GiB size bound, in a file of a few KB. Refused before Keras builds the model."""
    bad = tmp_path / "asks.keras"
    _rewrite(dense25, bad, _ask_for_20m_units)
    assert bad.stat().st_size < 1_000_000
    assert MAX_MODEL_BYTES > 520_000_000 * 4
    with pytest.raises(RunError, match="holds 78 weights"):
        load_model(bad)
    code, peak, err = _peak("predict", bad, tmp_path)
    assert code == 1, err
    assert "the config asks for about 520,000,000 parameters" in err
    assert "model.weights.h5 holds 78 weights" in err
    assert "Traceback" not in err
    assert peak < 1.5 * 1024**3, f"peak RSS {peak:,} bytes"


@pytest.mark.slow
def test_weights_declared_but_not_stored_are_refused(dense25, tmp_path):
    """The h5 datasets declare the 520 M weights the config asks for, but store none."""
    bad = tmp_path / "unwritten.keras"
    _declare_unwritten(dense25, bad, 20_000_000)
    assert bad.stat().st_size < 1_000_000
    code, peak, err = _peak("predict", bad, tmp_path)
    assert code == 1, err
    assert "declares 520,000,000 weights (2,080,000,000 bytes) in" in err
    assert "the weights are not all stored" in err
    assert peak < 1.5 * 1024**3, f"peak RSS {peak:,} bytes"
