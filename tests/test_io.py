"""cnnbuild.io's bounded reader: the one way a file a user names is read with a limit."""

from __future__ import annotations

import os
import threading

import pytest

from cnnbuild.io import FileRefused, open_regular, read_regular


def test_a_regular_file_within_the_limit_is_read(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_bytes(b"x" * 100)
    assert read_regular(path, 100) == b"x" * 100
    with open_regular(path, 100) as handle:
        assert handle.read() == b"x" * 100


def test_a_file_over_the_limit_is_refused_with_its_size(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 101)
    with pytest.raises(FileRefused) as caught:
        read_regular(path, 100)
    assert str(caught.value) == "101 bytes; the limit is 100"
    assert (caught.value.size, caught.value.limit, caught.value.os_error) == (101, 100, None)


def test_a_device_is_refused_unread():
    with pytest.raises(FileRefused) as caught:
        read_regular("/dev/zero", 1 << 30)
    assert str(caught.value) == "not a regular file"
    assert caught.value.size is None


def test_a_fifo_is_refused_without_blocking(tmp_path):
    """No writer ever opens the FIFO: a blocking open would hang; the test thread's join
    timeout is what would catch it."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    outcome: list = []
    reader = threading.Thread(
        target=lambda: outcome.append(_refusal(lambda: read_regular(fifo, 10))), daemon=True
    )
    reader.start()
    reader.join(timeout=10)
    assert outcome == ["not a regular file"]


def _refusal(read) -> str:
    try:
        read()
    except FileRefused as exc:
        return str(exc)
    return "read"


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(FileRefused) as caught:
        read_regular(tmp_path / "nowhere", 10)
    assert caught.value.missing
    assert str(caught.value) == "No such file or directory"


def test_a_symlink_is_refused_when_not_followed(tmp_path):
    (tmp_path / "target").write_bytes(b"secret")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert read_regular(tmp_path / "link", 10) == b"secret"
    with pytest.raises(FileRefused) as caught:
        read_regular(tmp_path / "link", 10, follow=False)
    assert caught.value.os_error is not None
    assert not caught.value.missing


@pytest.mark.parametrize(
    "reader",
    [
        "cnnbuild.source",
        "cnnbuild.runs",
        "cnnbuild.data.files",
        "cnnbuild.data.cifar",
        "cnnbuild.insight.run_report",
    ],
)
def test_the_bounded_readers_go_through_io(reader):
    """The modules that read a user's file with a size limit check it in one place: none
    of them tests a file's type itself."""
    import importlib
    import inspect

    text = inspect.getsource(importlib.import_module(reader))
    assert "S_ISREG" not in text
    assert "st_size" not in text
