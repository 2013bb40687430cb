"""Every OS error on a path we write is a message naming the path: a real full tmpfs
(ENOSPC), a real read-only mount (EROFS), files where folders should be and the reverse."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest

from cnnbuild.io import is_temp, os_error_message, temp_beside
from tests.test_train_fit import TINY


@contextlib.contextmanager
def _tmpfs(path, size: str, readonly: bool = False):
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        (path / "run").mkdir()
        if readonly:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_full_disk_is_a_message_and_leaves_no_temp_files(cli, write, tmp_path):
    config = write(TINY)
    with _tmpfs(tmp_path / "disk", "24k") as disk:
        run_dir = disk / "run"
        result = cli("train", config, "--out", run_dir, "--epochs", 1, "--seed", 1)
        assert result.exit_code == 1, result.output
        assert "No space left on device; the disk is full" in result.output
        assert str(run_dir) in result.output
        assert "Traceback" not in result.output
        assert not [p.name for p in run_dir.iterdir() if is_temp(p.name)]
        assert not (run_dir / "last.keras").exists()


def test_read_only_out_is_a_message(cli, write, tmp_path):
    config = write(TINY)
    with _tmpfs(tmp_path / "ro", "1m", readonly=True) as ro:
        result = cli("train", config, "--out", ro / "run" / "new", "--epochs", 1)
        assert result.exit_code == 1, result.output
        assert f"{ro / 'run' / 'new'}: Read-only file system; the file system is read-only" in (
            result.output
        )
        assert "Traceback" not in result.output


def test_out_is_a_file(cli, write, tmp_path):
    (tmp_path / "taken").write_text("mine")
    result = cli("train", write(TINY), "--out", tmp_path / "taken")
    assert result.exit_code == 2
    assert f"--out {tmp_path / 'taken'}: is a file" in result.output
    assert (tmp_path / "taken").read_text() == "mine"


def test_an_error_on_a_temp_file_names_the_file_it_was_to_become(tmp_path):
    target = tmp_path / "model.svg"
    tmp = temp_beside(target)
    tmp.unlink()
    with pytest.raises(OSError) as caught:
        tmp.read_bytes()
    assert os_error_message(caught.value) == f"{target}: No such file or directory"
    with pytest.raises(OSError) as caught:
        Path(tmp_path / "nowhere" / "x").read_bytes()
    assert os_error_message(caught.value).endswith(": No such file or directory")
    assert os_error_message(OSError("odd"), target) == f"{target}: OSError; odd"


@pytest.mark.parametrize("command", ["build", "schema"])
def test_output_onto_a_folder_or_under_a_file(cli, write, tmp_path, command):
    args = [command, write(TINY)] if command == "build" else [command]
    (tmp_path / "dir.keras").mkdir()
    result = cli(*args, "-o", tmp_path / "dir.keras")
    assert result.exit_code == 2 and "dir.keras" in result.output
    (tmp_path / "file").write_text("x")
    result = cli(*args, "-o", tmp_path / "file" / "out.keras")
    assert result.exit_code == 1
    assert f"{tmp_path / 'file'}: Not a directory; it is a file, not a folder" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("seed", "bound"), [("4294967296", "4294967295"), ("-1", "0")])
def test_seed_outside_32_bits_is_refused_at_parse_time(cli, write, tmp_path, seed, bound):
    result = cli("train", write(TINY), "--seed", seed, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "--seed" in result.output and bound in result.output
    assert not (tmp_path / "run").exists()


def test_seed_outside_32_bits_in_the_config_is_refused(cli, write, tmp_path):
    config = write(TINY.replace("limit: 256", "limit: 256\n  seed: 4294967296"))
    result = cli("train", config, "--out", tmp_path / "run")
    assert result.exit_code in (1, 2)
    assert "expected an integer <= 4294967295" in result.output
    assert not (tmp_path / "run").exists()


CONV = """
name: conv
input: [16, 16, 3]
layers:
  - Conv2D: {filters: 4, kernel_size: 3}
  - GlobalAveragePooling2D
  - Dense: {units: 2}
"""


@pytest.fixture
def model_and_image(cli, write, tmp_path):
    """A saved conv model (``cnnbuild build``) and one PNG to show it."""
    from PIL import Image

    model = tmp_path / "conv.keras"
    result = cli("build", write(CONV), "-o", model)
    assert result.exit_code == 0, result.output
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "x.png")
    return model, tmp_path / "x.png"


def test_show_out_is_a_file(cli, model_and_image, tmp_path):
    model, image = model_and_image
    (tmp_path / "taken").write_text("mine")
    result = cli("show", model, image, "-o", tmp_path / "taken")
    assert result.exit_code == 1, result.output
    assert f"{tmp_path / 'taken'}: Not a directory; it is a file, not a folder" in result.output
    assert "Traceback" not in result.output
    assert (tmp_path / "taken").read_text() == "mine"


@pytest.mark.parametrize(
    ("size", "readonly", "message"),
    [
        ("8k", False, "No space left on device; the disk is full"),
        ("1m", True, "Read-only file system; the file system is read-only"),
    ],
)
def test_show_on_a_full_or_read_only_disk_is_a_message(
    cli, model_and_image, tmp_path, size, readonly, message
):
    model, image = model_and_image
    with _tmpfs(tmp_path / "disk", size, readonly=readonly) as disk:
        result = cli("show", model, image, "-o", disk / "run" / "show")
        assert result.exit_code == 1, result.output
        assert message in result.output and str(disk / "run") in result.output
        assert "Traceback" not in result.output


def test_trace_run_with_a_negative_seed_is_a_usage_error(cli, write):
    result = cli("trace", write(TINY), "--run", "--seed", "-1")
    assert result.exit_code == 2
    assert "--seed" in result.output and "Traceback" not in result.output
