"""Training throughput: the seed-style baseline vs cnnbuild's training path, side by side,
per dtype policy and per number of devices; then whole-process wall time.

(a) baseline: ``model.fit(x_train, y_train, batch_size=64)`` on float32 numpy arrays, as
    the seed document writes it (float32, one device), of raw 0..255 pixels: the model
    built from the config scales them itself (its ``input_scaling`` Rescaling(1/255)
    layer), as in (b);
(b) cnnbuild: the same model from the same config, uint8 images in memory, a tf.data
    pipeline (index shuffle, gather, cast, prefetch) and ``steps_per_execution``
    chosen for the device, exactly as ``cnnbuild train`` runs it, under each dtype policy
    (float32, and mixed_bfloat16 on a CPU with native bf16 / mixed_float16 on a GPU) and
    on 1 or 2 devices (two logical CPU devices on a CPU: ``MirroredStrategy``, global
    batch unchanged, so 32 per replica at batch 64).

Each device count runs in its own process (logical devices must be set before TensorFlow
starts); in it, (a) and (b) train the same data for the same epochs, alternately, and
images/s are steady-state: the first epoch (tracing, warm-up) is left out. Also printed:
the share of this machine's matmul rate that (b) reaches, measured in the same process in
the policy's compute dtype (bf16 matmuls for mixed_bfloat16), counting training FLOPs per
image as 3 x 2 x forward MACs.

Last, whole-process wall time (start to exit, TensorFlow import included): 8 epochs of 20k
CIFAR-shaped images, the tutorial CNN, batch 64, as ``cnnbuild train`` (float32 and the
default policy) against a plain Keras script doing the same (its first layer a
``Rescaling(1/255)``, as cnnbuild's ``input_scaling``) in float32 and in
``mixed_bfloat16`` (the Keras mixed-precision guide's way: a global policy, the output
layer in float32), with test accuracies. The ratio is against the faster plain script.

    python benchmarks/train_throughput.py                   # CIFAR-10 if cached, else shapes
    python benchmarks/train_throughput.py --images 10000 --epochs 4 --rounds 2
    python benchmarks/train_throughput.py --quick           # smoke run on tiny sizes
    python benchmarks/train_throughput.py --wall-only       # whole processes only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnbuild.builder import build_model, keras_module  # noqa: E402
from cnnbuild.data.pipeline import make_pipeline  # noqa: E402
from cnnbuild.precision import FLOAT32, MIXED_BF16, MIXED_FP16, cpu_has_bf16  # noqa: E402
from cnnbuild.train.settings import default_steps  # noqa: E402
from cnnbuild.validate import load_traced  # noqa: E402

CONFIGS = ["configs/cifar10_tutorial.yaml", "configs/cifar10_bn_gap.yaml"]
TUTORIAL = "configs/cifar10_tutorial.yaml"
ROW = "ROW "

PLAIN_KERAS = """
import json, sys
import numpy as np
import keras
from keras import layers

data = np.load(sys.argv[1])
keras.mixed_precision.set_global_policy(sys.argv[3])
x, y = data["x_train"].astype("float32"), data["y_train"]
xt, yt = data["x_test"].astype("float32"), data["y_test"]
keras.utils.set_random_seed(0)
model = keras.Sequential([
    keras.Input((32, 32, 3)),
    layers.Rescaling(1 / 255),
    layers.Conv2D(32, 3, activation="relu"),
    layers.MaxPooling2D(2),
    layers.Conv2D(64, 3, activation="relu"),
    layers.MaxPooling2D(2),
    layers.Conv2D(64, 3, activation="relu"),
    layers.Flatten(),
    layers.Dense(64, activation="relu"),
    layers.Dense(10, dtype="float32"),
])
model.compile(
    optimizer=keras.optimizers.Adam(0.001),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
model.fit(x, y, batch_size=64, epochs=int(sys.argv[2]), validation_split=0.1, verbose=0)
print(json.dumps({"acc": model.evaluate(xt, yt, batch_size=256, verbose=0)[1]}))
"""


def load_images(n: int, n_test: int):
    """Real CIFAR-10 from Keras' cache or --data-dir if present, else the shapes set."""
    from cnnbuild.data.cifar import ARCHIVES, locate, read_cifar
    from cnnbuild.data.synthetic import load_shapes

    path = locate(ARCHIVES["cifar10"], None)
    data = read_cifar(path, ARCHIVES["cifar10"]) if path else load_shapes(n, n_test)
    return data.name, data.x_train[:n], data.y_train[:n], data.x_test[:n_test], data.y_test[:n_test]


class EpochTimer:
    def __init__(self, keras):
        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(cb, epoch, logs=None):  # noqa: N805
                cb.start = time.perf_counter()

            def on_epoch_end(cb, epoch, logs=None):  # noqa: N805
                self.seconds.append(time.perf_counter() - cb.start)

        self.seconds: list[float] = []
        self.callback = Timer()


def matmul_flops(tf, dtype: str = "float32", seconds: float = 3.0, n: int = 2048) -> float:
    """Matmul FLOP/s of this machine in ``dtype`` (n x n by n x n, repeated)."""
    device = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    with tf.device(device):
        a = tf.cast(tf.random.normal((n, n)), dtype)
        b = tf.cast(tf.random.normal((n, n)), dtype)

        @tf.function
        def step(a, b):
            return tf.reduce_sum(tf.cast(tf.matmul(a, b), "float32"))

        step(a, b).numpy()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step(a, b).numpy()
            count += 1
        return 2 * n**3 * count / (time.perf_counter() - start)


def run_once(kind: str, cfg, data, args, setup: dict, keras, tf) -> dict:
    """One training run: ``baseline`` (fit on numpy, float32, one device) or a cnnbuild
    run under ``setup["policy"]`` and ``setup["plan"]``."""
    from cnnbuild import distribute

    name, x, y, xt, yt = data
    keras.backend.clear_session()  # also resets the dtype policy; build_model sets it
    keras.utils.set_random_seed(0)
    timer = EpochTimer(keras)
    if kind == "baseline":
        model = build_model(cfg, steps_per_execution=1, jit_compile=False)
        # raw pixels: the model's input_scaling layer divides by 255, as in (b)
        xf, xtf = x.astype("float32"), xt.astype("float32")
        model.fit(
            xf, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
            callbacks=[timer.callback],
        )  # fmt: skip
        _, acc = model.evaluate(xtf, yt, batch_size=256, verbose=0)
    else:
        plan = setup["plan"]
        with plan.scope():
            model = build_model(
                cfg,
                mixed_precision=setup["policy"],
                steps_per_execution=setup["spe"],
                jit_compile=setup["xla"],
            )
        train = make_pipeline(x, y, batch_size=args.batch_size, training=True, seed=0)
        test = make_pipeline(xt, yt, batch_size=256, training=False)
        if plan.strategy is not None:
            train, test = distribute.shard(train), distribute.shard(test)
        model.fit(train, epochs=args.epochs, verbose=0, callbacks=[timer.callback], shuffle=False)
        _, acc = model.evaluate(test, verbose=0)
    steady = timer.seconds[1:] or timer.seconds
    return {"ips": len(x) * len(steady) / sum(steady), "acc": acc}


def default_policies(gpu: bool) -> list[str]:
    mixed = MIXED_FP16 if gpu else (MIXED_BF16 if cpu_has_bf16() else None)
    return [FLOAT32] + ([mixed] if mixed else [])


def child(args) -> None:
    """Measure every config and policy on ``args.child`` devices; print one JSON row each."""
    import tensorflow as tf

    devices = args.child
    gpus = tf.config.list_physical_devices("GPU")
    if devices > 1 and not gpus:
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * devices
        )
    keras = keras_module()
    from cnnbuild import distribute
    from cnnbuild.keras_patches import apply

    gpu = bool(gpus)
    if devices > 1 and gpu and len(gpus) < devices:
        print(f"# {devices} devices: only {len(gpus)} GPU(s) visible; skipped", flush=True)
        return
    if devices > 1:
        apply()
        names = [d.name for d in tf.config.list_logical_devices("GPU" if gpu else "CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=names[:devices])
        plan = distribute.Plan("mirrored", strategy, devices, names[:devices])
    else:
        plan = distribute.Plan("one")
    policies = args.policies or default_policies(gpu)
    rates = {
        p: matmul_flops(tf, {FLOAT32: "float32", MIXED_BF16: "bfloat16"}.get(p, "float16"))
        for p in policies
    }
    data = load_images(args.images, args.test_images)
    for path in args.configs:
        cfg, tr = load_traced(ROOT / path)
        for policy in policies:
            setup = {
                "plan": plan,
                "policy": policy,
                "xla": gpu if args.xla == "auto" else args.xla == "on",
                "spe": 1 if plan.strategy is not None else default_steps(gpu, len(cfg.nodes)),
            }
            results = {"baseline": [], "cnnbuild": []}
            for _ in range(args.rounds):
                for kind in ("baseline", "cnnbuild"):
                    results[kind].append(run_once(kind, cfg, data, args, setup, keras, tf))
            b = statistics.median(r["ips"] for r in results["cnnbuild"])
            row = {
                "config": cfg.name,
                "devices": devices,
                "policy": policy,
                "spe": setup["spe"],
                "xla": setup["xla"],
                "a": statistics.median(r["ips"] for r in results["baseline"]),
                "b": b,
                "acc_a": statistics.mean(r["acc"] for r in results["baseline"]),
                "acc_b": statistics.mean(r["acc"] for r in results["cnnbuild"]),
                "rate": rates[policy],
                "share": b * 6 * tr.macs / rates[policy],
                "data": f"{data[0]} {len(data[1])} train / {len(data[3])} test images",
            }
            print(ROW + json.dumps(row), flush=True)


def throughput_table(args) -> None:
    print(
        "| config | devices | policy | (a) fit(numpy) img/s | (b) cnnbuild img/s | b/a | "
        "(a) test acc | (b) test acc | matmul rate GFLOP/s | (b) share of matmul rate |"
    )
    print("|" + "---|" * 10, flush=True)
    everything = []
    for devices in args.devices:
        command = [sys.executable, __file__, "--child", str(devices), *child_args(args)]
        proc = subprocess.run(command, capture_output=True, text=True)
        rows = [
            json.loads(line[len(ROW) :])
            for line in proc.stdout.splitlines()
            if line.startswith(ROW)
        ]
        for line in proc.stdout.splitlines():
            if line.startswith("#"):
                print(line)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"the {devices}-device measurement failed (exit {proc.returncode})")
        everything += rows
        for r in rows:
            print(
                f"| {r['config']} | {r['devices']} | {r['policy']} | {r['a']:,.0f} | {r['b']:,.0f} "
                f"| {r['b'] / r['a']:.2f} | {r['acc_a']:.3f} | {r['acc_b']:.3f} | "
                f"{r['rate'] / 1e9:,.1f} | {r['share']:.1%} |",
                flush=True,
            )
    if everything:
        first = everything[0]
        print(
            f"data: {first['data']}; (b) steps_per_execution {first['spe']} on one device, "
            "1 under MirroredStrategy"
        )


def child_args(args) -> list[str]:
    out = ["--images", str(args.images), "--test-images", str(args.test_images)]
    out += ["--epochs", str(args.epochs), "--rounds", str(args.rounds)]
    out += ["--batch-size", str(args.batch_size), "--xla", args.xla, "--configs", *args.configs]
    if args.policies:
        out += ["--policies", *args.policies]
    return out


def wall_table(args) -> None:
    """Whole-process wall time: ``cnnbuild train`` vs a plain Keras script, same work."""
    import numpy as np

    name, x, y, xt, yt = load_images(args.wall_images, args.wall_test_images)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    print()
    print(
        f"whole process, {args.wall_epochs} epochs of {len(x):,} {name} images "
        f"({len(xt):,} test), tutorial CNN, batch 64, validation 10 %, median of {args.rounds}"
    )
    print("| run | policy | wall s | faster plain Keras wall / this | test acc |")
    print("|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "data.npz"
        np.savez(npz, x_train=x, y_train=y, x_test=xt, y_test=yt)
        script = Path(tmp) / "plain_keras.py"
        script.write_text(PLAIN_KERAS)
        plain_command = [sys.executable, str(script), str(npz), str(args.wall_epochs)]
        runs = {
            "plain Keras script": ("float32", [*plain_command, "float32"]),
            "plain Keras script, bf16": ("mixed_bfloat16", [*plain_command, "mixed_bfloat16"]),
            "cnnbuild train, float32": ("float32", ["--no-mixed-precision"]),
            "cnnbuild train, default": ("default", []),
        }
        walls: dict[str, list[float]] = {k: [] for k in runs}
        accs: dict[str, list[float]] = {k: [] for k in runs}
        policy_ran: dict[str, str] = {}
        for round_ in range(args.rounds):
            for index, (label, (_, extra)) in enumerate(runs.items()):
                out = Path(tmp) / f"run-{round_}-{index}"
                if label.startswith("plain"):
                    command = extra
                else:
                    command = [sys.executable, "-m", "cnnbuild", "train", str(ROOT / TUTORIAL)]
                    command += ["--dataset", f"npz:{npz}", "--epochs", str(args.wall_epochs)]
                    command += ["--batch-size", "64", "--seed", "0", "--out", str(out), *extra]
                start = time.perf_counter()
                proc = subprocess.run(command, capture_output=True, text=True, env=env)
                walls[label].append(time.perf_counter() - start)
                if proc.returncode != 0:
                    sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
                    raise SystemExit(f"{label} failed (exit {proc.returncode})")
                if label.startswith("plain"):
                    accs[label].append(json.loads(proc.stdout.strip().splitlines()[-1])["acc"])
                else:
                    metrics = json.loads((out / "metrics.json").read_text())
                    accs[label].append(metrics["test_accuracy"])
                    policy_ran[label] = metrics["precision_policy"]
    plain = min(statistics.median(v) for k, v in walls.items() if k.startswith("plain"))
    for label, (policy, _) in runs.items():
        wall = statistics.median(walls[label])
        print(
            f"| {label} | {policy_ran.get(label, policy)} | {wall:.1f} | {plain / wall:.2f} | "
            f"{statistics.mean(accs[label]):.4f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=4, help="per run; the first is warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="alternating a/b rounds")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch")
    parser.add_argument(
        "--policies",
        nargs="*",
        choices=[FLOAT32, MIXED_BF16, MIXED_FP16],
        help="default: float32 and the device's mixed policy where it has one",
    )
    parser.add_argument("--devices", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--xla", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--configs", nargs="*", default=CONFIGS)
    parser.add_argument("--wall-images", type=int, default=20_000)
    parser.add_argument("--wall-test-images", type=int, default=2000)
    parser.add_argument("--wall-epochs", type=int, default=8)
    parser.add_argument("--no-wall", action="store_true", help="skip the wall-time comparison")
    parser.add_argument("--wall-only", action="store_true", help="only the wall-time comparison")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.images, args.test_images, args.epochs, args.rounds = 256, 128, 2, 1
        args.configs = [TUTORIAL]
        args.wall_images, args.wall_test_images, args.wall_epochs = 256, 128, 1
    if args.child:
        child(args)
        return
    import platform

    print(
        f"{os.cpu_count()} CPUs visible ({platform.processor() or platform.machine()}), "
        f"native bf16: {cpu_has_bf16()}; {args.epochs} epochs per run (first is warm-up), "
        f"{args.rounds} alternating round(s), global batch {args.batch_size}"
    )
    if not args.wall_only:
        throughput_table(args)
    if not args.no_wall:
        wall_table(args)


if __name__ == "__main__":
    main()
