"""Shared fixtures: the CLI runner, config writers, tiny CIFAR archives, a loopback server."""

from __future__ import annotations

import gc
import http.server
import io
import os
import pickle
import subprocess
import sys
import tarfile
import textwrap
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cnnbuild.cli import app

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker more than the CPUs (``--maxprocesses`` caps it), so the
    cores stay busy while a worker waits on a subprocess starting, a stalling server or a
    lock."""
    return (os.cpu_count() or 1) + 1


def pytest_collection_modifyitems(config, items):
    """The longest test files first (see ``tests/file_durations.py``); each file's tests
    keep their order."""
    from tests.file_durations import load

    seconds = load()
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::", 1)[0], 0.0))


def pytest_collection_finish(session):
    """What collection leaves (the test modules, what they import, the items) lives all
    session: frozen, Python's collector skips it in every full collection after, such as
    the one each ``keras.backend.clear_session()`` runs."""
    gc.freeze()


@contextmanager
def recursion_limit(limit: int):
    """The block runs under recursion limit ``limit``, as a fresh command starts under
    Python's default (an earlier test's load may have raised this process's, and
    ``keep_recursion_room`` never lowers it); the process's limit after."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(limit)
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


def run_process(*args: object, columns: int | None = None, timeout: float = 300, **kw):
    """Run ``python -m cnnbuild ARGS`` in a fresh process, this checkout on its path (with
    ``columns``: rich lays out its help for a terminal that wide)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run(
        [sys.executable, "-m", "cnnbuild", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        **kw,
    )


def run_cli(*args: object):
    """Run ``cnnbuild ARGS`` in-process; returns the click Result (exit_code, stdout...)."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def cli():
    """:func:`run_cli` as a fixture."""
    return run_cli


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The README's demo config, trained small (2 epochs on 512 shapes images): one run
    directory for the tests that use a trained run (predict, export)."""
    run = tmp_path_factory.mktemp("demo") / "run"
    result = run_cli(
        "train", CONFIGS / "shapes_demo.yaml", "--limit", 512, "--epochs", 2, "--out", run
    )
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def write(tmp_path):
    """Write a dedented YAML text to tmp_path/NAME and return its path."""

    def _write(text: str, name: str = "model.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return _write


# -- tiny CIFAR-format archives ---------------------------------------------------------


def cifar_batches(n_per_batch: int = 20, seed: int = 0, classes: int = 10) -> dict[str, dict]:
    """Pickle-ready dicts in the CIFAR-10 python layout, with bright class-coded pixels."""
    rng = np.random.default_rng(seed)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in rng.integers(0, classes, n_per_batch)]
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        batches[name] = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"{i}.png".encode() for i in range(n_per_batch)],
        }
    batches["batches.meta"] = {
        b"label_names": [f"class{i}".encode() for i in range(classes)],
        b"num_vis": 3072,
    }
    return batches


def write_cifar_tar(
    path: Path,
    batches: dict[str, object],
    folder: str = "cifar-10-batches-py",
    raw: dict[str, bytes] | None = None,
) -> Path:
    """A .tar.gz holding ``folder/NAME`` pickles (protocol 2, as the real archive)."""
    with tarfile.open(path, "w:gz") as tar:
        members = {name: pickle.dumps(obj, protocol=2) for name, obj in batches.items()}
        members.update(raw or {})
        for name, blob in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


class Evil:
    """Pickles into a call of os.system: what a tampered archive would carry."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture
def cifar_tar(tmp_path) -> Path:
    return write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", cifar_batches())


# -- a loopback HTTP server -------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    truncate: dict[str, int] = {}

    def do_GET(self):  # noqa: N802 (http.server's name)
        blob = self.files.get(self.path)
        if blob is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(blob)))
        self.end_headers()
        self.wfile.write(blob[: self.truncate.get(self.path, len(blob))])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1. ``serve(path, blob, truncate=None)`` returns a URL."""
    handler = type("Handler", (_Handler,), {"files": {}, "truncate": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def serve(path: str, blob: bytes, truncate: int | None = None) -> str:
        handler.files[path] = blob
        if truncate is not None:
            handler.truncate[path] = truncate
        return base + path

    serve.base = base
    yield serve
    server.shutdown()
    server.server_close()
