"""A deep imported model on a small dataset: ``cnnbuild train`` against plain ``model.fit``.

The tutorial-CNN benchmark (``train_throughput.py``) trains 20,000 images an epoch, which
hides per-epoch costs. Here an imported application (keras.applications.MobileNetV2, 155
layers, 64x64, ``--classes`` classes, no pretrained weights) trains on ``--images`` random
images for ``--epochs`` epochs, as whole processes (start to exit, TensorFlow's import
included), alternating, ``--rounds`` times:

(a) ``cnnbuild train CONFIG`` (the config written by ``cnnbuild import``), with its
    gradient flow, checkpoints, curves, test evaluation and report;
(b) a plain Python script that loads the ``.keras`` that ``cnnbuild build`` writes (its
    optimizer, loss and metrics), holds out the same validation share and runs
    ``model.fit`` with the same data, batch and epochs, then ``model.evaluate`` on the
    test images.

Both run in the same precision: the one ``cnnbuild train`` picks on this machine
(``mixed_bfloat16`` on a CPU with native bf16, else float32) unless ``--precision`` names
one; the plain script rebuilds the loaded model under that policy (its output layer in
float32, as cnnbuild builds it).

Prints a markdown table (wall seconds per round, the median, the ratio plain / cnnbuild:
1.0 means cnnbuild takes as long as plain Keras) with the CPU's name and whether it has
avx512_bf16 / amx_bf16.

    python benchmarks/deep_model.py                          # 320 images x 6 epochs, 2 rounds
    python benchmarks/deep_model.py --images 64 --epochs 1 --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PLAIN_FIT = """
import sys
import numpy as np
import keras

path, data, epochs, batch, split, policy = sys.argv[1:7]
model = keras.saving.load_model(path)
if policy != "float32":  # the same layers under the policy, the output layer in float32
    config = model.get_config()
    for layer in config["layers"][1:-1]:
        layer["config"]["dtype"] = policy
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(model.get_weights())
    optimizer = type(model.optimizer).from_config(model.optimizer.get_config())
    rebuilt.compile(optimizer=optimizer, loss=model.loss, metrics=["accuracy"])
    model = rebuilt
d = np.load(data)
x, y = d["x_train"].astype("float32"), d["y_train"]
n_val = int(len(x) * float(split))
x_tr, y_tr, x_val, y_val = x[n_val:], y[n_val:], x[:n_val], y[:n_val]
model.fit(x_tr, y_tr, batch_size=int(batch), epochs=int(epochs),
          validation_data=(x_val, y_val) if n_val else None, verbose=0)
loss, acc = model.evaluate(d["x_test"].astype("float32"), d["y_test"], verbose=0)
print(f"plain: test accuracy {acc:.4f}")
"""


def cpu_line(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name and its bf16 flags, from /proc/cpuinfo."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "CPU unknown (no /proc/cpuinfo)"
    name = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line),
        "unknown",
    )
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    bf16 = {flag: flag in flags for flag in ("avx512_bf16", "amx_bf16")}
    return f"{name}, {os.cpu_count()} logical CPUs; " + ", ".join(
        f"{flag} {'yes' if has else 'no'}" for flag, has in bf16.items()
    )


def timed(cmd: list[str], env: dict) -> float:
    """Wall seconds of a whole process; exits with its output if it fails."""
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")
    return seconds


def prepare(tmp: Path, args: argparse.Namespace, env: dict) -> tuple[Path, Path, Path]:
    """The dataset (random uint8 images), the imported config and the built .keras."""
    import numpy as np

    rng = np.random.default_rng(0)
    data = tmp / "data.npz"
    shape = (args.size, args.size, 3)
    np.savez(
        data,
        x_train=rng.integers(0, 256, (args.images, *shape), dtype=np.uint8),
        y_train=np.arange(args.images) % args.classes,
        x_test=rng.integers(0, 256, (args.test_images, *shape), dtype=np.uint8),
        y_test=np.arange(args.test_images) % args.classes,
    )
    config, built = tmp / "model.yaml", tmp / "model.keras"
    cnnbuild = [sys.executable, "-m", "cnnbuild"]
    timed(
        [*cnnbuild, "import", f"keras.applications.{args.application}", "--input-shape",
         f"{args.size},{args.size},3", "--classes", str(args.classes), "-o", str(config)],
        env,
    )  # fmt: skip
    timed([*cnnbuild, "build", str(config), "-o", str(built)], env)
    return data, config, built


def default_policy() -> str:
    sys.path.insert(0, str(ROOT))
    from cnnbuild.precision import policy_name

    return policy_name("cpu", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--application", default="MobileNetV2")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--test-images", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--validation-split", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", choices=["float32", "mixed_bfloat16"], default=None)
    args = parser.parse_args()
    policy = args.precision or default_policy()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    times: dict[str, list[float]] = {"cnnbuild train": [], "plain model.fit": []}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        data, config, built = prepare(tmp, args, env)
        plain = tmp / "plain_fit.py"
        plain.write_text(PLAIN_FIT, encoding="utf-8")
        flag = "--no-mixed-precision" if policy == "float32" else "--mixed-precision"
        for i in range(args.rounds):
            times["cnnbuild train"].append(
                timed(
                    [
                        sys.executable,
                        "-m",
                        "cnnbuild",
                        "train",
                        str(config),
                        "--dataset",
                        f"npz:{data}",
                        "--epochs",
                        str(args.epochs),
                        "--batch-size",
                        str(args.batch_size),
                        "--validation-split",
                        str(args.validation_split),
                        "--seed",
                        "0",
                        flag,
                        "--out",
                        str(tmp / f"run{i}"),
                    ],
                    env,
                )  # fmt: skip
            )
            times["plain model.fit"].append(
                timed(
                    [
                        sys.executable,
                        str(plain),
                        str(built),
                        str(data),
                        str(args.epochs),
                        str(args.batch_size),
                        str(args.validation_split),
                        policy,
                    ],
                    env,
                )  # fmt: skip
            )
    plain_median = statistics.median(times["plain model.fit"])
    print(
        f"\n{args.application} {args.size}x{args.size}, {args.images} images "
        f"({args.validation_split:g} held out), {args.epochs} epochs, batch "
        f"{args.batch_size}, {policy}; whole processes, {args.rounds} round(s), alternating"
    )
    print(f"CPU: {cpu_line()}\n")
    print("| run | wall s per round | median s | plain / this |")
    print("|---|---|---|---|")
    for label, values in times.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {label} | {rounds} | {median:.1f} | {plain_median / median:.2f}x |")


if __name__ == "__main__":
    main()
