"""CIFAR-10/100 (cnnbuild/data/cifar.py): parsing and downloading (against a loopback
server). The download code is the real one; only the host differs."""

from __future__ import annotations

import contextlib
import hashlib
import io
import pickle

import numpy as np
import pytest

from cnnbuild.data import load_dataset
from cnnbuild.data.cifar import (
    ARCHIVES,
    MIRROR_ENV,
    SafeUnpickler,
    download,
    load_cifar,
    read_cifar,
    safe_loads,
)
from cnnbuild.errors import DataError
from tests.conftest import Evil, cifar_batches, write_cifar_tar

C10 = ARCHIVES["cifar10"]


def test_read_cifar_tar_gives_nhwc_uint8_in_keras_layout(cifar_tar):
    batches = cifar_batches()
    data = read_cifar(cifar_tar, C10)
    assert data.x_train.shape == (100, 32, 32, 3) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (20, 32, 32, 3)
    assert data.class_names == [f"class{i}" for i in range(10)]
    # channel-major rows (R plane, G plane, B plane) become HWC, as Keras does
    first = batches["data_batch_1"][b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(data.x_train[0], first)
    assert data.y_test.tolist() == batches["test_batch"][b"labels"]


def test_read_cifar_extracted_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, obj in cifar_batches().items():
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    for given in (tmp_path, folder):
        assert read_cifar(given, C10).x_train.shape == (100, 32, 32, 3)


def test_tampered_archive_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    batches = cifar_batches()
    raw = {"data_batch_3": pickle.dumps(Evil(f"touch {marker}"), protocol=2)}
    tar = write_cifar_tar(tmp_path / "evil.tar.gz", batches, raw=raw)
    with pytest.raises(DataError, match=r"refused to load posix\.system|refused to load os"):
        read_cifar(tar, C10)
    assert not marker.exists()


@pytest.mark.parametrize(
    "global_name",
    ["builtins\neval", "subprocess\nPopen", "numpy\nload", "collections\nOrderedDict"],
)
def test_safe_unpickler_refuses_every_other_global(global_name):
    blob = b"\x80\x02c" + global_name.encode() + b"\n)R."
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        safe_loads(blob)


def test_safe_unpickler_builds_arrays_and_containers():
    value = {b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"labels": [1, 2]}
    back = safe_loads(pickle.dumps(value, protocol=2))
    assert np.array_equal(back[b"data"], value[b"data"]) and back[b"labels"] == [1, 2]


def test_safe_unpickler_refuses_a_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({b"data": Evil(f"touch {marker}")}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refused to load"):
        SafeUnpickler(io.BytesIO(blob), encoding="bytes").load()
    assert not marker.exists()


def test_truncated_and_corrupted_archives_give_clear_errors(tmp_path, cifar_tar):
    blob = cifar_tar.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="corrupted or truncated|not a readable"):
        read_cifar(cut, C10)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(DataError, match="not a readable .tar.gz"):
        read_cifar(junk, C10)


def test_wrong_archive_names_the_missing_member(tmp_path):
    tar = write_cifar_tar(tmp_path / "other.tar.gz", cifar_batches(), folder="something-else")
    with pytest.raises(DataError, match="no cifar-10-batches-py/data_batch_1"):
        read_cifar(tar, C10)


def test_bad_batch_contents_are_rejected(tmp_path):
    batches = cifar_batches()
    batches["test_batch"][b"data"] = np.zeros((20, 100), dtype=np.uint8)
    tar = write_cifar_tar(tmp_path / "bad.tar.gz", batches)
    with pytest.raises(DataError, match="not a CIFAR batch"):
        read_cifar(tar, C10)


# -- download against a loopback server ------------------------------------------------


def test_download_verifies_and_writes_atomically(http_server, tmp_path, cifar_tar):
    blob = cifar_tar.read_bytes()
    url = http_server("/cifar-10-python.tar.gz", blob)
    target = tmp_path / "cache" / "x_archive"
    download(url, target, hashlib.sha256(blob).hexdigest(), quiet=True)
    assert target.read_bytes() == blob
    assert not list(target.parent.glob("*.part"))


def test_download_wrong_checksum_deletes_the_file(http_server, tmp_path, cifar_tar):
    url = http_server("/a.tar.gz", cifar_tar.read_bytes())
    target = tmp_path / "a_archive"
    with pytest.raises(DataError, match="checksum mismatch .* expected SHA-256 0{64}"):
        download(url, target, "0" * 64, quiet=True)
    assert not target.exists() and not list(tmp_path.glob("*.part"))


def test_download_truncated_is_an_error(http_server, tmp_path, cifar_tar):
    blob = cifar_tar.read_bytes()
    url = http_server("/t.tar.gz", blob, truncate=len(blob) // 3)
    target = tmp_path / "t_archive"
    with pytest.raises(DataError, match="cut short"):
        download(url, target, hashlib.sha256(blob).hexdigest(), quiet=True)
    assert not target.exists() and not list(tmp_path.glob("*.part"))


def test_load_cifar_downloads_into_keras_cache_once(http_server, tmp_path, monkeypatch, cifar_tar):
    """The official SHA-256 is checked, so the tiny archive is refused and nothing stays
    in the cache; an archive already in Keras' cache is used without any download."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    http_server("/cifar-10-python.tar.gz", cifar_tar.read_bytes())
    monkeypatch.setenv(MIRROR_ENV, http_server.base)
    with pytest.raises(DataError) as err:
        load_cifar("cifar10", quiet=True)
    message = err.value.message
    assert "checksum mismatch" in message and C10.origin in message
    cached = tmp_path / "keras" / "datasets" / "cifar-10-batches-py-target_archive"
    assert str(cached) in message and not cached.exists()
    cached.write_bytes(cifar_tar.read_bytes())  # as if Keras had downloaded it
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9")  # nothing listens there
    assert load_cifar("cifar10", quiet=True).x_train.shape == (100, 32, 32, 3)


def test_offline_message_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9")
    with pytest.raises(DataError) as err:
        load_dataset("cifar100", quiet=True)
    text = err.value.message
    assert "could not download http://127.0.0.1:9/cifar-100-python.tar.gz" in text
    assert ARCHIVES["cifar100"].origin in text and ARCHIVES["cifar100"].sha256 in text
    assert str(tmp_path / "datasets" / "cifar-100-python-target_archive") in text
    assert "--data-dir" in text


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    batches = {
        "train": {
            b"data": rng.integers(0, 256, (30, 3072), dtype=np.uint8),
            b"fine_labels": [int(v) for v in rng.integers(0, 100, 30)],
            b"coarse_labels": [0] * 30,
        },
        "test": {
            b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8),
            b"fine_labels": list(range(90, 100)),
            b"coarse_labels": [0] * 10,
        },
        "meta": {b"fine_label_names": [f"f{i}".encode() for i in range(100)]},
    }
    tar = write_cifar_tar(tmp_path / "c100.tar.gz", batches, folder="cifar-100-python")
    data = load_dataset("cifar100", data_dir=tar)
    assert data.num_classes == 100 and data.y_test.tolist() == list(range(90, 100))


# -- hostile servers and copies ---------------------------------------------------------


@pytest.fixture
def raw_server():
    """A TCP server on 127.0.0.1 that answers every connection with ``behave(conn)``."""
    import socket
    import threading

    servers = []

    def start(behave) -> str:
        sock = socket.create_server(("127.0.0.1", 0))
        stop = threading.Event()

        def loop():
            sock.settimeout(0.2)
            while not stop.is_set():
                try:
                    conn, _ = sock.accept()
                except OSError:
                    continue
                with conn:
                    conn.recv(65536)
                    with contextlib.suppress(OSError):
                        behave(conn, stop)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        servers.append((sock, stop, thread))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/c.tar.gz"

    yield start
    for sock, stop, thread in servers:
        stop.set()
        thread.join(5)
        sock.close()


def _trickle(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    while not stop.is_set():
        conn.sendall(b"x")
        stop.wait(0.2)


def _chunked_cut(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n" + b"x" * 100)


def _garbage_status(conn, stop):
    conn.sendall(b"SPDY/9 what\r\n\r\n")


def _huge_headers(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n")


@pytest.mark.parametrize(
    ("behave", "message"),
    [
        (_trickle, "stalled: less than 65,536 bytes in 1s"),
        (_chunked_cut, "cut short"),
        (_garbage_status, "could not download"),
        (_huge_headers, "could not download"),
    ],
)
def test_hostile_servers_are_messages_and_leave_no_part_file(raw_server, tmp_path, behave, message):
    url = raw_server(behave)
    target = tmp_path / "c_archive"
    with pytest.raises(DataError, match=message):
        download(url, target, "0" * 64, quiet=True, stall=1.0, deadline=30.0)
    assert not list(tmp_path.iterdir())


def test_trickling_server_hits_the_overall_deadline(raw_server, tmp_path):
    def fast_trickle(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
        while not stop.is_set():
            conn.sendall(b"x" * 70_000)
            stop.wait(0.3)

    url = raw_server(fast_trickle)
    with pytest.raises(DataError, match="took more than 2s"):
        download(url, tmp_path / "c_archive", "0" * 64, quiet=True, stall=5.0, deadline=2.0)
    assert not list(tmp_path.iterdir())


def test_protocol_errors_become_the_offline_message(raw_server, tmp_path, monkeypatch):
    url = raw_server(_garbage_status)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv(MIRROR_ENV, url.rsplit("/", 1)[0])
    with pytest.raises(DataError, match="This machine cannot fetch cifar10"):
        load_cifar("cifar10", quiet=True)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([0.5] * 20, "labels must be 20 integer class ids from 0 to 9"),
        ([10] * 20, "labels must be 20 integer class ids from 0 to 9"),
        (7, "labels must be 20 integer class ids"),
        (["a"] * 20, "labels must be 20 integer class ids"),
    ],
)
def test_cifar_labels_are_validated(tmp_path, labels, message):
    batches = cifar_batches()
    batches["test_batch"][b"labels"] = labels
    tar = write_cifar_tar(tmp_path / "bad.tar.gz", batches)
    with pytest.raises(DataError, match=message):
        read_cifar(tar, C10)


def test_oversized_member_is_refused_before_reading(tmp_path):
    import tarfile

    path = tmp_path / "big.tar.gz"
    batches = cifar_batches()
    write_cifar_tar(path, batches)
    big = tmp_path / "big2.tar"
    with tarfile.open(path) as src, tarfile.open(big, "w") as dst:
        for info in src.getmembers():
            if info.name.endswith("data_batch_1"):
                info.size = 3 << 30  # declared 3 GB; the data is never read
                dst.addfile(info)
                break
            dst.addfile(info, src.extractfile(info))
    import gzip

    gz = tmp_path / "big3.tar.gz"
    gz.write_bytes(gzip.compress(big.read_bytes()))
    with pytest.raises(DataError, match=r"data_batch_1 is 3,221,225,472 bytes"):
        read_cifar(gz, C10)
