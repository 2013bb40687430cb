"""A trained ``shapes_demo`` run seen from the inside: gradients.json, report.html in a
real headless Chromium, ``show`` (feature maps, filters, Grad-CAM, top-k) and ``report``."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from cnnbuild.cli import app
from tests.conftest import CONFIGS

pytestmark = pytest.mark.slow

LIMIT, EPOCHS = 6000, 6
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IMAGES_LOADED = (
    "<script>addEventListener('load',function(){var i=[].slice.call(document.images);"
    "document.body.setAttribute('data-images',i.filter(function(m){return m.complete&&"
    "m.naturalWidth>0}).length+'/'+i.length)})</script>"
)


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """The demo config trained briefly (seeded by the config): a real run directory."""
    out = tmp_path_factory.mktemp("demo") / "run"
    result = _run(
        "train", CONFIGS / "shapes_demo.yaml", "--limit", LIMIT, "--epochs", EPOCHS, "--out", out
    )
    assert result.exit_code == 0, result.output
    return out


def test_demo_run_has_gradient_flow_and_a_self_contained_report(demo_run):
    grads = json.loads((demo_run / "gradients.json").read_text())
    assert [e["epoch"] for e in grads["epochs"]] == list(range(1, EPOCHS + 1))
    batch = yaml.safe_load((demo_run / "config.yaml").read_text())["train"]["batch_size"]
    assert grads["batch"] == batch  # one training batch: what one optimizer step sees
    for epoch in grads["epochs"]:
        conv = epoch["layers"]["conv2d"]
        assert set(conv["weight_grad_norms"]) == {"kernel", "bias"}
        assert conv["weight_grad_norms"]["kernel"] > 0
        assert 0 <= conv["dead_fraction"] <= 1
        assert epoch["layers"]["max_pooling2d"]["dead_fraction"] is None
        assert epoch["seconds"] >= 0
    text = (demo_run / "report.html").read_text()
    for section in (
        "Config",
        "Summary",
        "Curves",
        "Confusion matrix",
        "Gradient flow",
        "Feature maps and Grad-CAM",
        "Most confidently misclassified",
    ):
        assert f"<h2>{section}</h2>" in text
    assert "<script" not in text
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert len(sources) >= 10
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert not re.search(r"(src|href)=\"(https?:)?//", text)


def _chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    profile = cwd / f"profile-{len(list(cwd.iterdir()))}"
    return subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_renders_in_headless_chromium(demo_run, tmp_path):
    text = (demo_run / "report.html").read_text()
    n_images = text.count("<img ")
    checked = tmp_path / "checked.html"
    checked.write_text(text.replace("</body>", IMAGES_LOADED + "</body>"))
    dom = _chromium("--dump-dom", checked.as_uri(), cwd=tmp_path)
    assert f'data-images="{n_images}/{n_images}"' in dom.stdout, dom.stderr[-2000:]
    # the same check sees a broken image
    broken = tmp_path / "broken.html"
    broken.write_text(
        checked.read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
    )
    dom = _chromium("--dump-dom", broken.as_uri(), cwd=tmp_path)
    assert f'data-images="{n_images - 1}/{n_images}"' in dom.stdout
    shot = tmp_path / "shot.png"
    _chromium("--window-size=1200,2400", f"--screenshot={shot}", checked.as_uri(), cwd=tmp_path)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2400, 1200)
    assert pixels.std() > 10
    assert (pixels < 128).mean() > 0.01  # text and figures, not a blank page


def test_report_command_rebuilds_the_report(demo_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(demo_run, copy)
    (copy / "report.html").unlink()
    result = _run("report", copy)
    assert result.exit_code == 0, result.output
    assert "report.html" in result.stdout
    rebuilt = (copy / "report.html").read_text()
    assert "<h2>Gradient flow</h2>" in rebuilt
    # training's report reuses its test evaluation's outputs; the command predicts them
    # again from model.keras: the same predictions, image by image
    captions = re.compile(r"true \w+, predicted \w+ \(\d\.\d\d\)")
    trained = captions.findall((demo_run / "report.html").read_text())
    assert trained and trained == captions.findall(rebuilt)
    result = _run("report", tmp_path)
    assert result.exit_code == 2
    assert "not a finished run directory" in result.stderr


def _write_pngs(folder: Path, n: int):
    from cnnbuild.data.synthetic import SEED, TEST, TRAIN, generate_with_boxes

    x, y, boxes = generate_with_boxes(TRAIN + TEST, SEED)
    x, y, boxes = x[TRAIN : TRAIN + n], y[TRAIN : TRAIN + n], boxes[TRAIN : TRAIN + n]
    folder.mkdir(exist_ok=True)
    paths = []
    for i, image in enumerate(x):
        paths.append(folder / f"test{i}.png")
        Image.fromarray(image).save(paths[-1])
    return paths, x, y, boxes


def test_show_writes_feature_maps_filters_and_gradcam(demo_run, tmp_path):
    from cnnbuild.data.synthetic import CLASSES
    from cnnbuild.insight.show import GAP, OVERLAY, TILE, scale_factor

    paths, _, y, _ = _write_pngs(tmp_path / "images", 2)
    out = tmp_path / "out"
    result = _run("show", demo_run, *paths, "--out", out)
    assert result.exit_code == 0, result.output
    for path, label in zip(paths, y, strict=True):
        line = next(line for line in result.stdout.splitlines() if line.startswith(str(path)))
        assert line.count("%") == 3
        assert CLASSES[label] in line  # the trained model ranks the true class in its top 3
    summary = json.loads((out / "show.json").read_text())
    # conv layers of shapes_demo: (32, 32, 32), (16, 16, 64), (8, 8, 64)
    for item in summary["images"]:
        assert len(item["features"]) == 3
        for file, (size, channels) in zip(
            item["features"], [(32, 32), (16, 64), (8, 64)], strict=True
        ):
            side = int(np.ceil(np.sqrt(channels)))
            rows = int(np.ceil(channels / side))
            tile = size * scale_factor(size, TILE)
            with Image.open(file) as image:
                assert image.size == (side * (tile + GAP) + GAP, rows * (tile + GAP) + GAP)
        with Image.open(item["gradcam"]) as image:
            assert image.size == (32 * scale_factor(32, OVERLAY),) * 2
            assert image.mode == "RGB"
    with Image.open(out / "filters.png") as image:
        tile = 3 * scale_factor(3, 24)
        side = int(np.ceil(np.sqrt(32)))  # 32 filters of 3x3x3
        rows = int(np.ceil(32 / side))
        assert image.size == (side * (tile + GAP) + GAP, rows * (tile + GAP) + GAP)
    result = _run(
        "show", demo_run, paths[0], "--out", out, "--layer", "conv2d_1", "--class", "circle"
    )
    assert result.exit_code == 0, result.output
    item = json.loads((out / "show.json").read_text())["images"][0]
    assert item["gradcam_layer"] == "conv2d_1"
    assert item["gradcam_class"] == "circle"
    assert len(item["features"]) == 1
    result = _run("show", demo_run, paths[0], "--layer", "conv")
    assert result.exit_code == 2
    assert "conv2d, conv2d_1, conv2d_2" in result.stderr
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    result = _run("show", demo_run, bad, "--out", out)
    assert result.exit_code == 1
    assert "bad.png: not an image file" in result.stderr


def test_gradcam_peaks_inside_the_drawn_shape(demo_run, tmp_path):
    """The map's maximum falls in the shape's bounding box far more often than chance."""
    from cnnbuild.insight.show import conv_layers, gradcam, load_target, read_image

    paths, x, _, boxes = _write_pngs(tmp_path / "images", 50)
    target = load_target(demo_run)
    batch = np.stack([read_image(p, (32, 32, 3)) for p in paths])
    np.testing.assert_array_equal(batch, x.astype("float32"))  # PNG round trip is exact
    cams, _, _ = gradcam(target.model, batch, conv_layers(target.model)[-1])
    inside = []
    for cam, (r0, c0, r1, c1) in zip(cams, boxes, strict=True):
        r, c = np.unravel_index(cam.argmax(), cam.shape)
        inside.append(r0 <= r <= r1 and c0 <= c <= c1)
    chance = np.mean([(b[2] - b[0] + 1) * (b[3] - b[1] + 1) / 32**2 for b in boxes])
    assert np.mean(inside) >= 0.70, (np.mean(inside), chance)
    assert np.mean(inside) > 2 * chance


def test_trace_grads_with_trained_weights_and_dataset_batch(demo_run):
    config = CONFIGS / "shapes_demo.yaml"
    fresh = json.loads(_run("trace", config, "--grads", "--data", "--json").stdout)
    trained = _run("trace", config, "--grads", "--data", "--weights", demo_run, "--json")
    assert trained.exit_code == 0, trained.output
    trained = json.loads(trained.stdout)
    assert trained["grads"]["weights"] == str(demo_run / "model.keras")
    assert trained["grads"]["data"].startswith("training images of shapes")
    assert "the run's own dataset" in trained["grads"]["data"]
    assert fresh["grads"]["data"] == "training images of shapes"
    assert trained["grads"]["value"] < fresh["grads"]["value"] / 10  # it learned the batch
    wrong = _run("trace", CONFIGS / "seed_shape_watch.yaml", "--grads", "--weights", demo_run)
    assert wrong.exit_code == 1  # a model that does not fit is a bad input, as elsewhere
    assert "its weights do not fit" in wrong.stderr


# -- a run directory someone else wrote (issue 17) ---------------------------------------

TINY_RUN = """
name: tiny_report
input: [16, 16, 3]
layers:
  - Conv2D: {filters: 4, kernel_size: 3, padding: same, activation: relu}
  - MaxPooling2D: {pool_size: 2}
  - Conv2D: {filters: 4, kernel_size: 3, padding: same, activation: relu}
  - GlobalAveragePooling2D
  - Dense: {units: 3, activation: softmax}
compile: {optimizer: adam, loss: sparse_categorical_crossentropy}
train: {dataset: {npz: DATA}, epochs: 1, batch_size: 16, validation_split: 0, seed: 2}
"""
LIVE = "document.body.setAttribute('data-pwned','yes')"
HOSTILE = f'<svg onload="{LIVE}"><script>{LIVE}</script>'


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    np.savez(
        root / "data.npz",
        x_train=rng.integers(0, 256, (48, 16, 16, 3), dtype=np.uint8),
        y_train=np.arange(48) % 3,
        x_test=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8),
        y_test=np.arange(12) % 3,
    )
    config = root / "tiny.yaml"
    config.write_text(TINY_RUN.replace("DATA", str(root / "data.npz")), encoding="utf-8")
    result = _run("train", config, "--out", root / "run")
    assert result.exit_code == 0, result.output
    return root / "run"


def _tamper(run: Path, outside: Path) -> None:
    grads = json.loads((run / "gradients.json").read_text())
    layers = grads["layers"]
    grads["layers"] = [HOSTILE + name for name in layers]
    grads["batch"] = HOSTILE
    grads["objective"] = HOSTILE
    for epoch in grads["epochs"]:
        epoch["layers"] = {HOSTILE + k: v for k, v in epoch["layers"].items()}
        for entry in epoch["layers"].values():
            entry["weight_grad_norms"] = {HOSTILE: 1.0, "kernel": HOSTILE}
            entry["output_grad_norm"] = HOSTILE
            entry["dead_fraction"] = HOSTILE
    bad_epoch = dict(grads["epochs"][0], epoch=HOSTILE)
    grads["epochs"].append(bad_epoch)
    grads["warnings"] = [{"epoch": HOSTILE, "kind": "x", "text": HOSTILE}]
    (run / "gradients.json").write_text(json.dumps(grads))
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.update(dataset=HOSTILE, device_name=HOSTILE, status=HOSTILE, epochs=HOSTILE)
    metrics["test_accuracy"] = HOSTILE
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "curves.png").unlink()
    (run / "curves.png").symlink_to(outside)


def test_tampered_run_gives_a_report_with_no_live_markup(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((8, 8, 3), 7, dtype=np.uint8)).save(secret)
    _tamper(run, secret)
    result = _run("report", run)
    assert result.exit_code == 0, result.output
    text = (run / "report.html").read_text()
    assert "<svg" not in text and "<script" not in text
    assert "&lt;svg onload=" in text and "&lt;script&gt;" in text
    assert "not a number: " in text  # the epoch, batch and norms are shown as text
    assert "curves.png skipped" in text
    assert base64.b64encode(secret.read_bytes()).decode() not in text
    assert "<h2>Confusion matrix</h2>" in text and "<h2>Gradient flow</h2>" in text
    dom = _chromium("--virtual-time-budget=3000", "--dump-dom", (run / "report.html").as_uri(),
                    cwd=tmp_path)  # fmt: skip
    assert "<h1>tiny_report</h1>" in dom.stdout, dom.stderr[-2000:]
    assert "data-pwned" not in dom.stdout.replace("setAttribute('data-pwned'", "")
    assert "<svg" not in dom.stdout and "<script" not in dom.stdout


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_report_on_a_full_or_read_only_disk_is_a_message(tiny_run, tmp_path, fault):
    from tests.test_oserrors import _tmpfs

    with _tmpfs(tmp_path / "disk", "4m") as disk:
        run = disk / "run" / "copy"
        shutil.copytree(tiny_run, run)
        (run / "report.html").unlink()
        if fault == "full":
            with open(disk / "filler", "wb", buffering=0) as filler:
                try:
                    while True:
                        filler.write(b"\0" * 4096)
                except OSError:
                    pass
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        result = _run("report", run)
        assert result.exit_code == 1, result.output
        reason = "No space left on device" if fault == "full" else "Read-only file system"
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and reason in lines[0] and str(run) in lines[0], lines
        assert not (run / "report.html").exists()
        assert not [p.name for p in run.iterdir() if p.name.startswith(".report.html")]


def test_show_class_is_a_name_or_an_index_and_anything_else_a_usage_error():
    from types import SimpleNamespace

    from cnnbuild.errors import UsageError
    from cnnbuild.insight.show import _class_index

    loaded = SimpleNamespace(class_names=["circle", "square", "triangle"])
    assert _class_index(loaded, "square") == 1 and _class_index(loaded, "2") == 2
    for bad in ("\u00b2", "3", "hexagon"):  # "²" passed str.isdigit, then int() raised
        with pytest.raises(UsageError, match=f"--class {bad}: not a class of the model"):
            _class_index(loaded, bad)


SECTIONS = (
    "<script>addEventListener('load',function(){var h=[].slice.call("
    "document.querySelectorAll('h2'));var out={};h.forEach(function(e,i){var end=i+1<h.length?"
    "h[i+1].offsetTop:document.body.scrollHeight;out[e.textContent]=end-e.offsetTop});"
    "var f=document.querySelector('img[alt^=\"gradient norms\"]');out.flow_image=f?"
    "f.getBoundingClientRect().height:-1;document.body.setAttribute('data-sections',"
    "JSON.stringify(out))})</script>"
)


def test_report_of_an_imported_mobilenet_v2_scales(tmp_path):
    """155 layers: the gradient-flow chart is at most 1,000 px tall at 1280x800, no section
    needs more than two screens, examples come from different classes, mistakes and
    examples are named by file."""
    from tests.test_own_images import image_folder

    folder = image_folder(tmp_path / "photos", 5, seed=0)
    config = tmp_path / "mnv2.yaml"
    result = _run(
        "import", "keras.applications.MobileNetV2", "--input-shape", "32,32,3",
        "--classes", "3", "-o", config,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with config.open("a") as fh:
        fh.write(
            "compile: {optimizer: adam, loss: sparse_categorical_crossentropy}\n"
            f"train: {{dataset: {{folder: {folder}}}, epochs: 1, batch_size: 8, "
            "validation_split: 0, seed: 1}\n"
        )
    result = _run("train", config, "--out", tmp_path / "run")  # the default precision
    assert result.exit_code == 0, result.output
    text = (tmp_path / "run" / "report.html").read_text()
    captions = re.findall(r"<p>([^<]*): true (\w+), predicted", text)
    assert {name for name, _ in captions} <= {
        f"{c}/{c}_{i}.png" for c in ["red", "green", "blue"] for i in range(5)
    }
    assert len({label for _, label in captions}) == 3  # one example of each class
    page = tmp_path / "measured.html"
    page.write_text(text.replace("</body>", SECTIONS + "</body>"))
    dom = _chromium("--window-size=1280,800", "--dump-dom", page.as_uri(), cwd=tmp_path)
    found = re.search(r'data-sections="([^"]*)"', dom.stdout)
    assert found, dom.stderr[-2000:]
    heights = json.loads(found.group(1).replace("&quot;", '"'))
    assert 0 < heights.pop("flow_image") <= 1000
    assert "Gradient flow" in heights and len(heights) == 7
    for section, height in heights.items():
        assert height <= 2 * 800, (section, height)
