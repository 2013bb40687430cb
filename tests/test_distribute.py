"""tf.distribute on the real engine: two logical CPU devices, two worker processes on
127.0.0.1, a killed worker; the Keras patches; the bf16 default."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cnnbuild.distribute import (
    Cluster,
    choose,
    free_ports,
    read_tf_config,
    step_back,
    tf_config,
    worker_dir,
)
from cnnbuild.errors import UsageError
from cnnbuild.keras_patches import PATCHES
from cnnbuild.precision import cpu_has_bf16, policy_name
from tests.conftest import ROOT

TINY = """
name: tiny
input: [32, 32, 3]
layers:
  - Conv2D: {filters: 8, kernel_size: 3, strides: 2, activation: relu}
  - MaxPooling2D: {pool_size: 2}
  - Flatten
  - Dense: {units: 10}
compile:
  optimizer: {adam: {learning_rate: 0.003}}
  loss: sparse_categorical_crossentropy
  from_logits: true
train:
  dataset: shapes
  batch_size: 16
  limit: 160
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _cnnbuild(*args, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnbuild", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


# -- plain Python: TF_CONFIG, choice of strategy, dtype policy ---------------------------


@pytest.mark.parametrize(
    ("config", "chief", "workers"),
    [
        ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}, True, 2),
        ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}, False, 2),
        (
            {"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "worker"}},
            False,
            2,
        ),
        ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "chief"}}, True, 2),
    ],
)
def test_tf_config_names_the_chief(config, chief, workers):
    cluster = read_tf_config({"TF_CONFIG": json.dumps(config)})
    assert cluster.is_chief is chief
    assert cluster.num_workers == workers
    assert read_tf_config({}) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"cluster": {"worker": ["a:1"]}}', "needs both 'cluster' and 'task'"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "lists 1"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "'chief'"),
    ],
)
def test_bad_tf_config_is_a_usage_error(text, message):
    with pytest.raises(UsageError, match=message):
        read_tf_config({"TF_CONFIG": text})


def test_strategy_choice(tmp_path):
    cluster = Cluster({"worker": ["a:1", "b:2"]}, "worker", 1)
    assert choose("auto", "cpu", 0, None) == "one"
    assert choose("auto", "gpu", 1, None) == "one"
    assert choose("auto", "gpu", 4, None) == "mirrored"
    assert choose("auto", "cpu", 0, cluster) == "multi-worker"
    assert choose("mirrored", "cpu", 0, None) == "mirrored"
    with pytest.raises(UsageError, match="TF_CONFIG is not set"):
        choose("multi-worker", "cpu", 0, None)
    run = tmp_path / "run"
    assert worker_dir(run, None) == run
    assert worker_dir(run, Cluster({"worker": ["a:1"]}, "worker", 0)) == run
    assert worker_dir(run, cluster) == tmp_path / ".run.worker-1"
    index = json.loads(tf_config([5, 6], 1))
    assert index["cluster"]["worker"] == ["127.0.0.1:5", "127.0.0.1:6"]
    assert index["task"] == {"type": "worker", "index": 1}


@pytest.mark.parametrize(
    ("flags", "bf16"),
    [
        ("fpu sse avx2 avx512f avx512_bf16 avx512_vnni", True),
        ("fpu sse avx2 amx_bf16 amx_tile amx_int8", True),
        ("fpu sse avx2 avx512f avx512_vnni", False),
    ],
)
def test_bf16_default_follows_cpu_flags(tmp_path, flags, bf16):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
    assert cpu_has_bf16(cpuinfo) is bf16
    assert policy_name("cpu", None, bf16=bf16) == ("mixed_bfloat16" if bf16 else "float32")
    assert policy_name("cpu", False, bf16=bf16) == "float32"
    assert policy_name("cpu", True, bf16=bf16) == "mixed_bfloat16"
    assert policy_name("gpu", None, bf16=bf16) == "mixed_float16"
    assert policy_name("gpu", False, bf16=bf16) == "float32"
    assert cpu_has_bf16(tmp_path / "missing") is False


def test_patches_name_the_versions_they_fix():
    import keras

    for patch in PATCHES:
        assert "keras-team/keras/issues/20585" in patch.install.__doc__
        assert "tensorflow/tensorflow/issues/72388" in patch.install.__doc__
        assert not patch.applies_to("2.15.0")
        assert not patch.applies_to("3.17.0")
        assert patch.applies_to("3.15.1")
    # the running Keras is one the patches were checked against
    assert all(p.applies_to(keras.__version__) for p in PATCHES), keras.__version__


# -- the real engine ----------------------------------------------------------------------

MIRRORED = """
import sys
import tensorflow as tf

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)
sys.argv = ["cnnbuild", "train", *sys.argv[1:]]
from cnnbuild.cli import main

main()
"""


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_matches_one_device(write, tmp_path):
    """Per-replica batch 16 on two replicas trains like batch 32 on one device."""
    config = write(TINY)
    script = write(MIRRORED, "mirrored.py")
    # float32 isolates the strategy: the two runs' weights are compared to a tolerance
    common = ["--seed", 7, "--epochs", 2, "--no-mixed-precision"]
    two = subprocess.Popen(
        [sys.executable, script, config, "--strategy", "mirrored", "--batch-size", "16"]
        + [str(a) for a in ("--out", tmp_path / "two", *common)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    out_two = two.communicate(timeout=300)[0]
    one = _cnnbuild(
        "train", config, "--strategy", "one", "--batch-size", 32, "--out", tmp_path / "one",
        *common, env=_env(),
    )  # fmt: skip
    out_one = one.communicate(timeout=300)[0]
    assert two.returncode == 0, out_two
    assert one.returncode == 0, out_one
    assert "mirrored over 2 devices" in out_two and "batch 16 per replica x 2 = 32" in out_two
    m2, m1 = _metrics(tmp_path / "two"), _metrics(tmp_path / "one")
    assert (m2["strategy"], m2["replicas"], m2["batch_size"], m2["global_batch_size"]) == (
        "mirrored",
        2,
        16,
        32,
    )
    assert (m1["strategy"], m1["replicas"], m1["global_batch_size"]) == ("one", 1, 32)
    h2 = json.loads((tmp_path / "two" / "history.json").read_text())
    h1 = json.loads((tmp_path / "one" / "history.json").read_text())
    for a, b in zip(h2, h1, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-4)
    assert m2["test_loss"] == pytest.approx(m1["test_loss"], rel=1e-3, abs=1e-4)
    assert m2["test_accuracy"] == pytest.approx(m1["test_accuracy"], abs=0.01)
    # the mirrored checkpoint loads in a plain process and scores the same
    check = _cnnbuild("evaluate", tmp_path / "two", env=_env())
    out = check.communicate(timeout=300)[0]
    assert check.returncode == 0, out
    scored = json.loads((tmp_path / "two" / "evaluate" / "evaluation.json").read_text())
    assert scored["accuracy"] == pytest.approx(m2["test_accuracy"], abs=1e-6)


UNPATCHED = """
import json, os, sys

os.environ["TF_CONFIG"] = sys.argv[1]
import numpy as np
import tensorflow as tf
import keras

from cnnbuild.keras_patches import apply

print("patches", apply(only=sys.argv[2:]), flush=True)
strategy = tf.distribute.MultiWorkerMirroredStrategy()
x = np.random.default_rng(0).random((64, 8, 8, 1)).astype("float32")
y = (x.mean(axis=(1, 2, 3)) > 0.5).astype("int32")
with strategy.scope():
    layers = [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)]
    model = keras.Sequential(layers)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=1, verbose=0)
print("fit finished", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("patches", "error"),
    [
        ((), "Attempt to convert a value (PerReplica"),
        (("symbolic-build-from-spec",), "Invalid reduction dimension 0"),
        (("symbolic-build-from-spec", "multi-worker-mean-axis-none"), None),
    ],
)
def test_keras_needs_each_patch_for_multi_worker_fit(write, patches, error):
    """Without the patches Keras' fit fails under MultiWorkerMirroredStrategy (each
    patch uncovers the next error); with both it trains. When a Keras upgrade fixes
    upstream, the failing cases pass and this test says to retire the patch."""
    script = write(UNPATCHED, "unpatched.py")
    ports = free_ports(2)
    procs = [
        subprocess.Popen(
            [sys.executable, script, tf_config(ports, i), *patches],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, out in zip(procs, outs, strict=True):
        assert f"patches {list(patches)}" in out, out[-3000:]
        if error is None:
            assert proc.returncode == 0 and "fit finished" in out, out[-3000:]
        else:
            assert proc.returncode != 0, f"Keras no longer needs more than {patches}: {out}"
            assert error in out, out[-3000:]


@pytest.mark.slow
def test_two_local_workers_agree_and_only_the_chief_writes(write, tmp_path):
    config = write(TINY)
    run_dir = tmp_path / "run"
    proc = _cnnbuild(
        "train", config, "--workers", 2, "--out", run_dir, "--epochs", 2, env=_env(),
        cwd=tmp_path,
    )  # fmt: skip
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    metrics = _metrics(run_dir)
    assert (metrics["strategy"], metrics["workers"], metrics["replicas"]) == ("multi-worker", 2, 2)
    assert (metrics["batch_size"], metrics["global_batch_size"], metrics["epochs"]) == (16, 32, 2)
    # both workers end with the same weights; worker 1 printed its digest
    digests = [line.split()[-1] for line in out.splitlines() if "final weights sha256" in line]
    assert len(digests) == 2 and digests[0] == digests[1] == metrics["weights_sha256"], out
    assert [line for line in out.splitlines() if line.startswith("worker-1: final weights")]
    # only the chief's run directory exists; worker 1's own folder is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.yaml", "run"]
    assert not (run_dir / "backup").exists()
    resolved = (run_dir / "config.yaml").read_text()
    assert "strategy: multi-worker" in resolved


@pytest.mark.slow
def test_killed_worker_relaunched_continues_to_the_planned_epochs(write, tmp_path):
    config = write(TINY)
    run_dir = tmp_path / "run"
    epochs = 5  # killed once 2 are done (before the 5th): the relaunch runs the rest
    args = ["train", config, "--strategy", "multi-worker", "--out", run_dir, "--seed", 11]
    args += ["--epochs", epochs]

    def launch():
        ports = free_ports(2)
        return [
            _cnnbuild(*args, env=_env(TF_CONFIG=tf_config(ports, i)), cwd=tmp_path)
            for i in range(2)
        ]

    first = launch()
    state = run_dir / "state.json"
    deadline = time.monotonic() + 300
    done = 0
    while time.monotonic() < deadline and first[0].poll() is None:
        try:
            done = json.loads(state.read_text())["epochs_done"]
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= 2:
            break
        time.sleep(0.02)
    first[1].send_signal(signal.SIGKILL)  # a worker dies mid-training...
    first[0].send_signal(signal.SIGKILL)  # ...and the job is relaunched whole
    for proc in first:
        proc.communicate(timeout=60)
    assert 2 <= done < epochs, f"could not kill mid-training (epochs done: {done})"
    assert json.loads(state.read_text())["status"] == "running"

    second = launch()
    outs = [p.communicate(timeout=600)[0] for p in second]
    assert [p.returncode for p in second] == [0, 0], outs
    assert "restored from the backup: continuing after epoch" in outs[0], outs[0]
    restored_at = int(re.search(r"continuing after epoch (\d+)", outs[0])[1])
    ran = [int(n) for n in re.findall(r"^epoch (\d+)/", outs[0], re.MULTILINE)]
    assert restored_at >= 1 and ran == list(range(restored_at + 1, epochs + 1)), outs[0]
    metrics = _metrics(run_dir)
    assert metrics["epochs"] == epochs and metrics["status"] == "completed"
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.yaml", "run"]


@pytest.mark.slow
def test_bf16_run_records_its_policy_and_loads_in_float32(write, tmp_path):
    config = write(TINY)
    run_dir = tmp_path / "run"
    proc = _cnnbuild(
        "train", config, "--out", run_dir, "--seed", 3, "--epochs", 1, "--mixed-precision",
        env=_env(),
    )  # fmt: skip
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    metrics = _metrics(run_dir)
    assert metrics["precision_policy"] == "mixed_bfloat16" and metrics["mixed_precision"]
    assert "precision mixed_bfloat16" in out
    # a fresh process under Keras' default float32 policy loads and predicts
    check = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PREDICT), run_dir / "model.keras"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert check.returncode == 0, check.stderr
    policy, dtype, finite = check.stdout.split()
    assert (policy, dtype, finite) == ("float32", "float32", "True")


PREDICT = """
import sys
import numpy as np
import keras

model = keras.saving.load_model(sys.argv[1])
out = model.predict(np.zeros((4, 32, 32, 3), "float32") + 128, verbose=0)
print(keras.mixed_precision.global_policy().name, out.dtype, bool(np.isfinite(out).all()))
"""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "multi-worker", "--out", "{tmp}/run"], "TF_CONFIG is not set"),
        (["--strategy", "mirrored", "--steps-per-execution", "4"], "use 1, the default there"),
        (["--workers", "2", "--strategy", "mirrored"], "drop --strategy"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_strategy_flags_are_checked(cli, write, tmp_path, monkeypatch, args, message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = write(TINY)
    result = cli("train", config, *[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "run").exists()


def test_multi_worker_refusals_come_before_training(cli, write, tmp_path, monkeypatch):
    """Under TF_CONFIG: no seed, a finished run in --out, and --resume are refused (exit 2)
    before TensorFlow starts; the folders are left as they were."""
    monkeypatch.setenv("TF_CONFIG", tf_config([1], 0))
    config = write(TINY)
    result = cli("train", config, "--strategy", "multi-worker", "--out", tmp_path / "new")
    assert result.exit_code == 2 and "every worker must shuffle alike" in result.output
    assert not (tmp_path / "new").exists()
    run = tmp_path / "run"
    run.mkdir()
    state = {"status": "completed", "epochs_done": 0, "monitor": "val_loss", "seed": 1}
    (run / "state.json").write_text(json.dumps(state))
    (run / "config.yaml").write_text(TINY + "  strategy: multi-worker\n")
    result = cli("train", config, "--out", run, "--seed", 1)
    assert result.exit_code == 2, result.output
    assert "already holds a finished run (completed)" in result.output
    result = cli("train", "--resume", run)
    assert result.exit_code == 2, result.output
    assert "run again on every worker (no --resume)" in result.output
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "state.json"]


def test_a_worker_steps_back_to_its_previous_backup(tmp_path):
    """When the workers' backups disagree, one steps back to its ``double_checkpoint``
    copy. Keras' ``load_weights`` refuses that copy's ``.bkp`` name, which made the
    relaunch fail whenever a kill fell between two workers' saves; ``step_back`` restores
    it under the latest backup's names, weights and epoch alike."""
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), double_checkpoint=True)
    backup.set_model(model)
    backup.on_epoch_end(0)
    first = [w.copy() for w in model.get_weights()]
    model.set_weights([w + 1 for w in first])
    backup.on_epoch_end(1)
    model.set_weights([w + 5 for w in first])
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        model.load_weights(backup._prev_weights_path)  # what the relaunch used to call
    step_back(backup, model)
    for have, want in zip(model.get_weights(), first, strict=True):
        np.testing.assert_array_equal(have, want)
    saved = json.loads(Path(backup._training_metadata_path).read_text())
    assert saved == json.loads(Path(backup._prev_training_metadata_path).read_text())
    assert saved["epoch"] == 1  # epochs done at the first backup
