"""Training on several devices or machines with tf.distribute.

``train.strategy`` (``--strategy``) picks one of:

- ``one``: one device, no strategy object (what ``train`` always did);
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over every visible GPU (on a CPU run,
  over the logical CPU devices);
- ``multi-worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the cluster that
  the ``TF_CONFIG`` environment variable describes, one process per machine;
- ``auto`` (default): ``multi-worker`` when ``TF_CONFIG`` is set, ``mirrored`` when the
  run is on a GPU and more than one is visible, else ``one``.

``batch_size`` is per replica; each step takes ``batch_size x replicas`` images (the
global batch), split between the replicas, and the gradients are averaged over the
global batch. Datasets are sharded by element (``AutoShardPolicy.DATA``): every worker
reads the same seeded order and keeps its own share, so the order does not depend on
the number of workers.

Only the chief (task ``chief``, or worker 0 when there is none) writes the run
directory. Every other worker runs the same code into a folder of its own beside it,
``.<run>.worker-<i>``, which holds its ``BackupAndRestore`` state and is removed when
training completes. :func:`launch_local` starts N workers on 127.0.0.1.

Parsing ``TF_CONFIG`` is plain Python; TensorFlow is imported only to make a strategy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnbuild.errors import RunError, UsageError

BACKUP = "backup"


@dataclass(frozen=True)
class Cluster:
    """The cluster a ``TF_CONFIG`` describes, seen from this process's task."""

    spec: dict[str, list[str]]
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        return len(self.spec.get("chief", [])) + len(self.spec.get("worker", []))

    @property
    def is_chief(self) -> bool:
        """The chief task, or worker 0 of a cluster without one (TensorFlow's rule)."""
        if self.task_type == "chief":
            return True
        return self.task_type == "worker" and self.task_index == 0 and "chief" not in self.spec

    @property
    def worker_id(self) -> str:
        return f"{self.task_type}-{self.task_index}"


def read_tf_config(environ: Mapping[str, str] | None = None) -> Cluster | None:
    """The cluster in ``TF_CONFIG``, or None when it is unset or empty.

    Raises:
        UsageError: TF_CONFIG is not JSON of the documented form.
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        return None
    form = (
        'expected {"cluster": {"worker": ["host:port", ...]}, '
        '"task": {"type": "worker", "index": N}}'
    )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"TF_CONFIG is not valid JSON ({exc}); {form}") from None
    cluster = data.get("cluster") if isinstance(data, dict) else None
    task = data.get("task") if isinstance(data, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise UsageError(f"TF_CONFIG needs both 'cluster' and 'task'; {form}")
    spec = {k: list(v) for k, v in cluster.items() if isinstance(v, list)}
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in ("chief", "worker") or not isinstance(index, int):
        raise UsageError(
            f"TF_CONFIG task {task!r}: type must be 'chief' or 'worker' with an integer "
            f"index; {form}"
        )
    if not 0 <= index < len(spec.get(kind, [])):
        raise UsageError(
            f"TF_CONFIG task {kind} {index}: the cluster lists "
            f"{len(spec.get(kind, []))} {kind} address(es); {form}"
        )
    return Cluster(spec, kind, index)


def worker_dir(run_dir: Path, cluster: Cluster | None) -> Path:
    """Where this process writes: the run directory itself on the chief (or without a
    cluster); ``.<run>.worker-<i>`` beside it on every other worker."""
    if cluster is None or cluster.is_chief:
        return run_dir
    return run_dir.parent / f".{run_dir.name}.{cluster.worker_id}"


@dataclass
class Plan:
    """The strategy a run uses, with what the rest of training needs to know of it."""

    name: str  # "one", "mirrored" or "multi-worker"
    strategy: Any = None  # a tf.distribute.Strategy; None for "one"
    replicas: int = 1
    devices: list[str] = field(default_factory=list)
    cluster: Cluster | None = None

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    @property
    def multi_worker(self) -> bool:
        return self.name == "multi-worker"

    def global_batch(self, per_replica: int) -> int:
        return per_replica * self.replicas

    def scope(self) -> Any:
        """Build and compile inside this: variables are mirrored on every replica."""
        return nullcontext() if self.strategy is None else self.strategy.scope()

    def describe(self) -> str:
        if self.name == "one":
            return "one device"
        if self.multi_worker:
            assert self.cluster is not None
            return (
                f"multi-worker: {self.cluster.num_workers} workers, {self.replicas} replicas; "
                f"this is {self.cluster.worker_id}{' (chief)' if self.is_chief else ''}"
            )
        return f"mirrored over {self.replicas} devices ({', '.join(self.devices)})"


def choose(strategy: str, device: str, gpus: int, cluster: Cluster | None) -> str:
    """Resolve ``auto`` (see the module docstring) and refuse impossible choices.

    Raises:
        UsageError: ``multi-worker`` without TF_CONFIG.
    """
    if strategy == "auto":
        if cluster is not None:
            return "multi-worker"
        return "mirrored" if device == "gpu" and gpus > 1 else "one"
    if strategy == "multi-worker" and cluster is None:
        raise UsageError(
            "--strategy multi-worker: TF_CONFIG is not set; give every worker "
            'TF_CONFIG={"cluster": {"worker": [...]}, "task": {"type": "worker", "index": N}}, '
            "or start local workers with --workers N"
        )
    return strategy


def multi_worker_cluster(strategy: str) -> Cluster | None:
    """The cluster of a run that ``strategy`` makes multi-worker, else None; plain Python,
    so it can be asked before TensorFlow starts.

    Raises:
        UsageError: ``multi-worker`` without TF_CONFIG, or a bad TF_CONFIG.
    """
    cluster = read_tf_config()
    # the device and GPU count only matter to ``auto`` without a cluster
    return cluster if choose(strategy, "cpu", 0, cluster) == "multi-worker" else None


def make_plan(strategy: str, device: str) -> Plan:
    """Create the tf.distribute strategy for ``strategy`` on ``device`` ("cpu"/"gpu").

    Call it before TensorFlow runs any op: ``MultiWorkerMirroredStrategy`` configures the
    runtime's collectives and cannot once the runtime has started.

    Raises:
        UsageError: ``multi-worker`` without TF_CONFIG, or a bad TF_CONFIG.
        RunError: TensorFlow refuses to create the strategy.
    """
    import tensorflow as tf

    cluster = read_tf_config()
    gpus = len(tf.config.list_physical_devices("GPU")) if device == "gpu" else 0
    name = choose(strategy, device, gpus, cluster)
    if name == "one":
        return Plan("one")
    from cnnbuild.keras_patches import apply

    apply()
    if name == "mirrored":
        # listing logical devices starts the runtime: fine here, never for multi-worker
        kind = "GPU" if device == "gpu" else "CPU"
        devices = [d.name for d in tf.config.list_logical_devices(kind)]
        made = tf.distribute.MirroredStrategy(devices=devices)
        return Plan("mirrored", made, made.num_replicas_in_sync, devices)
    implementation = (
        tf.distribute.experimental.CommunicationImplementation.NCCL
        if device == "gpu"
        else tf.distribute.experimental.CommunicationImplementation.RING
    )
    try:
        made = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=implementation
            )
        )
    except (RuntimeError, ValueError) as exc:
        raise RunError(f"cannot start the multi-worker strategy from TF_CONFIG: {exc}") from None
    devices = list(made.extended.worker_devices)
    return Plan("multi-worker", made, made.num_replicas_in_sync, devices, cluster)


def shard(dataset: Any) -> Any:
    """``dataset`` with element-wise auto-sharding (every worker reads the same seeded
    order and keeps its own share of each global batch)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


# -- fault tolerance ----------------------------------------------------------------------


def backup_dir(run_dir: Path) -> Path:
    """The ``BackupAndRestore`` folder inside this worker's own directory."""
    return run_dir / BACKUP


def backup_callbacks(keras: Any, run_dir: Path, strategy: Any, on_restore: Any) -> list[Any]:
    """``BackupAndRestore`` into this worker's backup folder, then a callback that makes
    the workers agree on the epoch to continue from and hands it to ``on_restore``.

    The backup is kept twice (``double_checkpoint``): a worker killed between two
    workers' saves leaves the others one epoch ahead; they step back to their previous
    backup, so every worker continues from the same epoch with the same weights.
    """
    backup = keras.callbacks.BackupAndRestore(str(backup_dir(run_dir)), double_checkpoint=True)

    class Agree(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            epoch = int(self.model._initial_epoch or 0)
            common = _min_over_workers(strategy, epoch)
            if common != epoch:
                previous = Path(backup._prev_training_metadata_path)
                had = json.loads(previous.read_text())["epoch"] if previous.is_file() else None
                if had != common:
                    raise RunError(
                        f"the workers' backups disagree (this worker: epoch {epoch}, "
                        f"another: epoch {common}) and no backup of epoch {common} is "
                        f"left in {backup_dir(run_dir)}; start the run again in a new folder"
                    )
                step_back(backup, self.model)
                self.model._initial_epoch = epoch = common
            on_restore(epoch)

    return [backup, Agree()]


def step_back(backup: Any, model: Any) -> None:
    """Make a ``BackupAndRestore``'s previous backup (``double_checkpoint``'s ``.bkp``
    copies) its latest again, and load those weights into ``model``.

    ``load_weights`` refuses the ``.bkp`` name (it takes ``.weights.h5``), so the copies
    go back to the latest backup's names first, as Keras itself does when the latest
    backup cannot be read.
    """
    shutil.copyfile(backup._prev_weights_path, backup._weights_path)
    shutil.copyfile(backup._prev_training_metadata_path, backup._training_metadata_path)
    model.load_weights(backup._weights_path)


def _min_over_workers(strategy: Any, value: int) -> int:
    """The smallest ``value`` over every replica of ``strategy`` (a collective)."""
    import tensorflow as tf

    @tf.function
    def gather():
        local = strategy.run(lambda: tf.constant([value], tf.int64))
        return strategy.gather(local, axis=0)

    return int(tf.reduce_min(gather()))


def on_plain_copy(keras: Any, callback: Any, plain: Any) -> Any:
    """``callback``, which reads the model at the end of each epoch, run on ``plain``: an
    undistributed copy of the model (built outside the strategy's scope) that gets the
    trained weights first. A strategy's variables cannot be read in a gradient tape
    outside a replica context, and the copy needs no collective, so only the chief runs it.
    """
    callback.set_model(plain)

    class PlainCopy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            plain.set_weights(self.model.get_weights())
            callback.on_epoch_end(epoch, logs)

    return PlainCopy()


def weights_digest(model: Any) -> str:
    """SHA-256 of a model's weights (values, in order): equal on every worker of a run."""
    import numpy as np

    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def finish(run_dir: Path, cluster: Cluster | None) -> None:
    """After a completed run: a non-chief worker removes its own folder."""
    if cluster is not None and not cluster.is_chief:
        shutil.rmtree(run_dir, ignore_errors=True)


# -- local workers -------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports on 127.0.0.1 that are free now (bound, read, released)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: Sequence[int], index: int) -> str:
    """The TF_CONFIG of worker ``index`` in a cluster of local workers."""
    return json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
    )


def _relay(stream: Any, prefix: str) -> None:
    for line in iter(stream.readline, b""):
        sys.stderr.write(prefix + line.decode("utf-8", "replace"))
        sys.stderr.flush()
    stream.close()


def launch_local(args: Sequence[str], workers: int) -> int:
    """Run ``cnnbuild train ARGS --strategy multi-worker`` as ``workers`` processes on
    127.0.0.1, each with its own TF_CONFIG; wait for all of them.

    Worker 0 is the chief: its output is this process's. The others' output comes on
    stderr, each line prefixed ``worker-<i>:``. When one worker fails, the others are
    stopped (they would wait for it forever).

    Args:
        args: the ``train`` arguments, without ``--workers`` and ``--strategy``.
        workers: how many processes.

    Returns:
        0 when every worker finished, else the first failing worker's exit code.
    """
    if workers < 1:
        raise UsageError(f"--workers must be at least 1; received {workers}")
    ports = free_ports(workers)
    command = [sys.executable, "-m", "cnnbuild", "train", *args, "--strategy", "multi-worker"]
    procs: list[subprocess.Popen] = []
    relays = []
    for index in range(workers):
        env = {**os.environ, "TF_CONFIG": tf_config(ports, index)}
        if index == 0:
            procs.append(subprocess.Popen(command, env=env))
            continue
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        relay = threading.Thread(target=_relay, args=(proc.stdout, f"worker-{index}: "))
        relay.start()
        relays.append(relay)
    failed = 0
    try:
        while any(p.poll() is None for p in procs):
            for index, proc in enumerate(procs):
                code = proc.poll()
                if code not in (None, 0) and not failed:
                    failed = code
                    sys.stderr.write(
                        f"worker-{index} exited with code {code}; stopping the others. "
                        "Run the same command again to continue from the last "
                        "completed epoch\n"
                    )
                    _stop(procs)
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(procs, signal.SIGINT)
        raise
    finally:
        for proc in procs:
            proc.wait()
        for relay in relays:
            relay.join()
    return failed or next((p.returncode for p in procs if p.returncode), 0)


def _stop(procs: Sequence[subprocess.Popen], sig: int = signal.SIGTERM) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(sig)
