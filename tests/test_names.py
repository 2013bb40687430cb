"""Names and paths as users and files give them: one rule for config names (validate refuses
what Keras, TensorFlow or our file names cannot take; the rest goes through summary, plot
and train), and one escaping function per output (terminal, rich, matplotlib, DOT, CSV)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnbuild import escape
from tests.conftest import ROOT, run_cli

CONFIG = """
name: {name}
input: [16, 16, 3]
layers:
  - Conv2D: {{filters: 4, kernel_size: 3, padding: same, activation: relu}}
  - GlobalAveragePooling2D
  - Dense: {{units: 3, activation: softmax}}
compile: {{optimizer: adam, loss: sparse_categorical_crossentropy}}
train: {{dataset: {{npz: {data}}}, epochs: 1, batch_size: 16, validation_split: 0, seed: 4}}
"""
CLASSES = ["price_$1_to_$5", "[draft] mk[/]", "=1+2"]


def _data(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    path = folder / "data.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8),
        y_train=np.arange(32) % 3,
        x_test=rng.integers(0, 256, (9, 16, 16, 3), dtype=np.uint8),
        y_test=np.arange(9) % 3,
        class_names=np.array(CLASSES),
    )
    return path


def _config(folder: Path, name: str, data: Path) -> Path:
    path = folder / "model.yaml"
    path.write_text(CONFIG.format(name=json.dumps(name), data=data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def named_run(tmp_path_factory) -> Path:
    """A tiny run whose class names hold `$`, rich markup and a formula."""
    root = tmp_path_factory.mktemp("named")
    run = root / "mk[/]" / "[draft]"
    result = run_cli("train", _config(root, "tiny", _data(root)), "--out", run)
    assert result.exit_code == 0, result.output
    assert f"run directory: {run}\n" in result.stdout and f"saved to {run}/\n" in result.stdout
    return run


# -- the config-name rule --------------------------------------------------------------

REFUSED = ["my model", "_hidden", "héllo", "a/b", "trail\\", "price_$1", "[draft]", "-x", "3net"]


@pytest.mark.parametrize("name", REFUSED + ["x" * 101])
def test_validate_refuses_names_keras_tf_or_files_cannot_take(tmp_path, name):
    config = _config(tmp_path, name, tmp_path / "none.npz")
    result = run_cli("validate", config)
    assert result.exit_code == 1, result.output
    assert f"{config}:2:7: error: name: {name!r} is not a valid model name" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", ["v1.2-final", "net3", "A_b-c.d", "x" * 100])
def test_every_accepted_name_goes_through_summary_plot_and_train(tmp_path, name):
    config = _config(tmp_path, name, _data(tmp_path))
    assert run_cli("validate", config).exit_code == 0
    result = run_cli("summary", config)
    assert result.exit_code == 0, result.output
    assert name in result.stdout.replace("\n", "")
    for suffix in (".png", ".dot"):
        out = tmp_path / f"diagram{suffix}"
        result = run_cli("plot", config, "-o", out, "--engine", "auto")
        assert result.exit_code == 0, result.output
        assert out.stat().st_size > 0
    result = run_cli("train", config, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "state.json").read_text())["status"] == "completed"


def test_file_stem_gives_a_valid_default_name(tmp_path):
    config = tmp_path / "2nd model (copy).yaml"
    config.write_text("input: [8, 8, 3]\nlayers:\n  - Flatten\n", encoding="utf-8")
    result = run_cli("summary", config, "--static", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "model_2nd_model__copy_"


# -- escaping, unit by unit ------------------------------------------------------------


def test_terminal_makes_control_characters_and_undecodable_bytes_visible():
    assert escape.terminal("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert escape.terminal("x\u2028y\u2029z\u202e") == "x\\u2028y\\u2029z\\u202e"
    assert escape.terminal("tab\there\nnew") == "tab\\x09here\\x0anew"
    assert escape.terminal(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"
    assert escape.terminal("héllo wörld 猫") == "héllo wörld 猫"
    assert escape.terminal(Path("a b/c.png")) == "a b/c.png"


def test_findings_show_hostile_names_as_text(tmp_path):
    from rich.console import Console

    from cnnbuild.findings_format import text_lines
    from cnnbuild.validate import check_file

    config = _config(tmp_path, "[/]x\x1b[2J\\", tmp_path / "none.npz")
    _, _, findings = check_file(config)
    for color in (False, True):
        [line] = [t for t in text_lines(findings, color=color) if "model name" in t]
        console = Console(file=io.StringIO(), width=500, highlight=False)
        console.print(line, markup=color)
        shown = console.file.getvalue()
        assert "\x1b" not in shown and "'[/]x\\x1b[2J\\\\' is not a valid" in shown


def test_rich_prints_markup_in_names_as_written():
    from rich.console import Console

    for text in ["mk[/]/x.png", "[draft]", "[bold]x[/bold]", "a\\", "[/]"]:
        console = Console(file=io.StringIO(), width=200, highlight=False)
        console.print(f"wrote {escape.rich(text)}")
        assert console.file.getvalue() == f"wrote {text}\n"


def test_mathtext_escapes_dollars_so_matplotlib_draws_them(tmp_path):
    from cnnbuild.charts import confusion

    path = tmp_path / "confusion.png"
    confusion(np.eye(3, dtype=int), CLASSES, path, "price_$1_to_$5 $x^2$")
    assert Image.open(path).size[0] > 100
    assert escape.mathtext("a$b$") == "a\\$b\\$"


def test_dot_labels_survive_quotes_and_a_trailing_backslash():
    text = 'say "hi" \\'
    quoted = f'"{escape.dot(text)}"'
    assert quoted == '"say \\"hi\\" \\\\"'
    # a DOT string ends at the first quote not escaped by an odd run of backslashes
    body = quoted[1:-1]
    i = 0
    while i < len(body):
        assert body[i] != '"', body
        i += 2 if body[i] == "\\" else 1


def test_csv_cells_round_trip_as_one_row_each_with_formulas_neutralised():
    cells = ["=1+2", "+x", "-3", "@sum", "a\u2028b", "line\nbreak", 'q"uote,comma', "plain"]
    buf = io.StringIO()
    csv.writer(buf).writerow([escape.csv_cell(c) for c in cells])
    rows = list(csv.reader(io.StringIO(buf.getvalue())))
    assert len(rows) == 1
    assert rows[0] == [
        "'=1+2", "'+x", "'-3", "'@sum", "a\\u2028b", "line\\x0abreak", 'q"uote,comma', "plain"
    ]  # fmt: skip


# -- names through the commands ---------------------------------------------------------


def _images(folder: Path, names: list[str | bytes]) -> list[Path]:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for name in names:
        raw = os.path.join(os.fsencode(folder), name if isinstance(name, bytes) else name.encode())
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(raw, "PNG")
        paths.append(Path(os.fsdecode(raw)))
    return paths


@pytest.mark.slow
def test_predict_csv_is_one_row_per_prediction_with_cells_neutralised(named_run, tmp_path):
    paths = _images(tmp_path / "img", ["a\u2028b.png", "=1+2.png", "esc\x1b[31m.png"])
    result = run_cli("predict", named_run, *paths, "-f", "csv", "-k", 3)
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert len(rows) == 1 + 3 * 3
    files = {row[0] for row in rows[1:]}
    assert files == {escape.csv_cell(p) for p in paths}
    assert all("\x1b" not in f and "\u2028" not in f for f in files)
    assert {row[3] for row in rows[1:]} == {"price_$1_to_$5", "[draft] mk[/]", "'=1+2"}


@pytest.mark.slow
def test_predict_table_prints_a_latin1_file_name_under_strict_utf8(named_run, tmp_path):
    [path] = _images(tmp_path / "img", [b"caf\xe9.png"])
    proc = subprocess.run(
        [sys.executable, "-m", "cnnbuild", "predict", str(named_run), str(path)],
        capture_output=True, cwd=ROOT, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8:strict"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    out = proc.stdout.decode("utf-8")
    assert "caf\\xe9.png" in out and "[draft] mk[/]" in out


@pytest.mark.slow
def test_show_writes_one_set_of_pngs_per_image_even_with_the_same_file_name(named_run, tmp_path):
    first = _images(tmp_path / "a", ["x.png"])[0]
    second = _images(tmp_path / "b", ["x.png"])[0]
    out = tmp_path / "mk[/]"
    result = run_cli("show", named_run, first, second, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"in {out}/" in result.stdout  # the markup-like path printed as written
    items = json.loads((out / "show.json").read_text())["images"]
    assert len({item["gradcam"] for item in items}) == 2
    assert all(Path(item["gradcam"]).is_file() for item in items)


@pytest.mark.slow
def test_evaluate_prints_markup_like_class_names_and_paths_as_written(named_run):
    result = run_cli("evaluate", named_run)
    assert result.exit_code == 0, result.output
    assert f"{named_run / 'model.keras'} on " in result.stdout
    assert "[draft] mk[/]" in result.stdout and "price_$1_to_$5" in result.stdout


@pytest.mark.slow
def test_build_and_report_print_markup_like_paths_as_written(named_run, tmp_path, write):
    config = write("name: tiny\ninput: [8, 8, 3]\nlayers: [Flatten, {Dense: {units: 2}}]\n")
    out = tmp_path / "mk[/]" / "[draft].keras"
    result = run_cli("build", config, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith(f"to {out}\n") and out.is_file()
    result = run_cli("report", named_run)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote {named_run / 'report.html'}\n"


def test_plot_paths_with_markup_and_under_a_file(tmp_path, write):
    config = write(
        textwrap.dedent(
            """
            name: tiny
            input: [8, 8, 3]
            layers: [Flatten, {Dense: {units: 2}}]
            """
        )
    )
    out = tmp_path / "mk[/]" / "x.dot"
    result = run_cli("plot", config, "-o", out)
    assert result.exit_code == 0, result.output
    assert f"wrote {out} (Graphviz DOT text)" in result.stdout
    (tmp_path / "file").write_text("x")
    result = run_cli("plot", config, "-o", tmp_path / "file" / "x.svg", "--engine", "matplotlib")
    assert result.exit_code == 1, result.output
    assert f"{tmp_path / 'file'}: Not a directory; it is a file, not a folder" in result.stderr


def _png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit RGB PNG (Pillow cannot write one): IHDR bit depth 16, colour type 2."""
    import struct
    import zlib

    h, w, _ = pixels.shape
    big = pixels.astype(">u2")
    raw = b"".join(b"\x00" + big[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )  # fmt: skip


@pytest.mark.slow
def test_a_16_bit_rgb_png_is_refused_by_predict_with_its_name(named_run, tmp_path):
    """The README's rule: 16-bit images are refused (Pillow would read only the high byte)."""
    rng = np.random.default_rng(5)
    _png16(tmp_path / "deep.png", rng.integers(0, 65536, (16, 16, 3), dtype=np.uint16))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "shallow.png")
    result = run_cli("predict", named_run, tmp_path / "deep.png", tmp_path / "shallow.png",
                     "-f", "json", "-k", 3)  # fmt: skip
    assert "deep.png" in result.output and "16-bit or float" in result.output
    assert "shallow.png" in result.stdout


@pytest.mark.parametrize("fmt", ["text", "json", "github", "sarif", "markdown"])
def test_every_findings_format_is_utf8_without_control_characters(tmp_path, fmt):
    # found by the stranger tests: `--format github` crashed on a file name that is not
    # UTF-8 and passed ESC to the log viewer
    for raw in (b"caf\xe9.yaml", b"e\x1b[2Jx.yaml"):
        (tmp_path / os.fsdecode(raw)).write_text("input: [8, 8, 1]\nlayers:\n  - Conv9D\n")
    done = subprocess.run(
        [sys.executable, "-m", "cnnbuild", "validate", str(tmp_path), "--format", fmt],
        capture_output=True,
        timeout=300,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},
        check=False,
    )
    assert done.returncode == 1, done.stderr
    out = done.stdout.decode("utf-8")
    assert "\x1b" not in out and "Traceback" not in done.stderr.decode()
    assert out.count("Conv9D") == 2
