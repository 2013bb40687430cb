"""Training throughput: the seed-style baseline vs cnnbuild's training path, side by side.

(a) baseline: ``model.fit(x_train, y_train, batch_size=64)`` on float32 numpy arrays, as
    the seed document writes it;
(b) cnnbuild: the same model from the same config, uint8 images in memory, a tf.data
    pipeline (index shuffle, gather, cast/scale, prefetch) and ``steps_per_execution``
    chosen for the device, exactly as ``cnnbuild train`` runs it.

Both train the same data, batch 64, for the same epochs, alternately (a, b, a, b, ...), in
one process. Images/s are steady-state: the first epoch (tracing, warm-up) is left out.
Also printed: the fraction of this machine's float32 matmul rate (measured in the same run)
that (b) reaches, counting training FLOPs per image as 3 x 2 x forward MACs.

    python benchmarks/train_throughput.py                   # CIFAR-10 if cached, else shapes
    python benchmarks/train_throughput.py --images 10000 --epochs 4 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnbuild.builder import build_model, keras_module  # noqa: E402
from cnnbuild.data.pipeline import make_pipeline  # noqa: E402
from cnnbuild.train import CPU_STEPS_PER_EXECUTION, GPU_STEPS_PER_EXECUTION  # noqa: E402
from cnnbuild.validate import load_traced  # noqa: E402

CONFIGS = ["configs/cifar10_tutorial.yaml", "configs/cifar10_bn_gap.yaml"]


def load_images(n: int, n_test: int):
    """Real CIFAR-10 from Keras' cache or --data-dir if present, else the shapes set."""
    from cnnbuild.data.cifar import ARCHIVES, locate, read_cifar
    from cnnbuild.data.shapes import load_shapes

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


def matmul_flops(tf, seconds: float = 3.0, n: int = 2048) -> float:
    """float32 matmul FLOP/s of this machine (n x n by n x n, repeated)."""
    device = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    with tf.device(device):
        a = tf.random.normal((n, n))
        b = tf.random.normal((n, n))

        @tf.function
        def step(a, b):
            return tf.reduce_sum(tf.matmul(a, b))

        step(a, b).numpy()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step(a, b).numpy()
            count += 1
        return 2 * n**3 * count / (time.perf_counter() - start)


def run_once(kind: str, cfg, data, epochs: int, batch: int, device: dict, keras, tf) -> dict:
    name, x, y, xt, yt = data
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    timer = EpochTimer(keras)
    if kind == "baseline":
        model = build_model(cfg, steps_per_execution=1, jit_compile=False)
        xf, xtf = x.astype("float32") / 255, xt.astype("float32") / 255
        model.fit(xf, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=[timer.callback])
        _, acc = model.evaluate(xtf, yt, batch_size=256, verbose=0)
    else:
        model = build_model(
            cfg,
            mixed_precision=device["mixed"],
            steps_per_execution=device["spe"],
            jit_compile=device["xla"],
        )
        train = make_pipeline(x, y, batch_size=batch, scale=1 / 255, training=True, seed=0)
        test = make_pipeline(xt, yt, batch_size=256, scale=1 / 255, training=False)
        model.fit(train, epochs=epochs, verbose=0, callbacks=[timer.callback], shuffle=False)
        _, acc = model.evaluate(test, verbose=0)
    steady = timer.seconds[1:] or timer.seconds
    return {"ips": len(x) * len(steady) / sum(steady), "acc": acc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=4, help="per run; the first is warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="alternating a/b rounds")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mixed-precision", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--configs", nargs="*", default=CONFIGS)
    args = parser.parse_args()

    keras = keras_module()
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    mixed = gpu if args.mixed_precision == "auto" else args.mixed_precision == "on"
    device = {
        "mixed": mixed,
        "xla": gpu,
        "spe": GPU_STEPS_PER_EXECUTION if gpu else CPU_STEPS_PER_EXECUTION,
    }
    data = load_images(args.images, args.test_images)
    flops = matmul_flops(tf)
    import os

    print(
        f"device: {'GPU' if gpu else 'CPU'} ({os.cpu_count()} CPUs visible); "
        f"TensorFlow {tf.__version__}; data: {data[0]} {len(data[1])} train / "
        f"{len(data[3])} test images; batch {args.batch_size}; {args.epochs} epochs per run "
        f"(first is warm-up), {args.rounds} alternating rounds"
    )
    print(
        f"(b) settings: steps_per_execution {device['spe']}, XLA {device['xla']}, "
        f"mixed precision {device['mixed']}"
    )
    print(f"float32 matmul rate: {flops / 1e9:,.1f} GFLOP/s")
    print()
    header = (
        "| config | (a) fit(numpy) img/s | (b) cnnbuild img/s | b/a | (a) test acc | "
        "(b) test acc | (b) share of matmul rate |"
    )
    print(header)
    print("|" + "---|" * 7)
    for path in args.configs:
        cfg, tr = load_traced(ROOT / path)
        results = {"baseline": [], "cnnbuild": []}
        for _ in range(args.rounds):
            for kind in ("baseline", "cnnbuild"):
                results[kind].append(
                    run_once(kind, cfg, data, args.epochs, args.batch_size, device, keras, tf)
                )
        a = statistics.median(r["ips"] for r in results["baseline"])
        b = statistics.median(r["ips"] for r in results["cnnbuild"])
        acc_a = statistics.mean(r["acc"] for r in results["baseline"])
        acc_b = statistics.mean(r["acc"] for r in results["cnnbuild"])
        share = b * 6 * tr.macs / flops
        print(
            f"| {cfg.name} | {a:,.0f} | {b:,.0f} | {b / a:.2f} | {acc_a:.3f} | {acc_b:.3f} | "
            f"{share:.1%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
