"""What the gradient-flow callback costs: epoch time with and without it, on the demo.

``cnnbuild train`` records per-layer gradient norms on one fixed batch at the end of each
epoch (``gradients.json``). This trains ``configs/shapes_demo.yaml`` on its own dataset
and settings (batch 64, the steps_per_execution ``train`` picks for the device) twice per
round, alternately with and without the callback, each time a new model with the same
initial weights. An epoch is timed from its start until every callback's ``on_epoch_end``
has run (the timer is the last callback); the first epoch of each fit (tracing) is
reported apart.

    python benchmarks/gradient_flow_cost.py                    # the demo's 10,800 images
    python benchmarks/gradient_flow_cost.py --images 4000 --epochs 3 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnbuild.builder import build_model, keras_module  # noqa: E402
from cnnbuild.data.pipeline import make_pipeline  # noqa: E402
from cnnbuild.insight.flow import gradient_flow  # noqa: E402
from cnnbuild.train.settings import (  # noqa: E402
    load_data,
    resolve_train,
    select_device,
    split_validation,
    stdout_console,
)
from cnnbuild.validate import load_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/shapes_demo.yaml"))
    parser.add_argument("--images", type=int, default=None, help="training images (default all)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per fit (first: warm-up)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    keras = keras_module()
    cfg = load_config(args.config)
    settings = resolve_train(cfg, {})
    device = select_device(settings, len(cfg.nodes))
    data = load_data(cfg.input_shape, settings, quiet=True)
    x, y, _, _ = split_validation(
        data.x_train, data.y_train, settings.validation_split, settings.seed or 0
    )
    x, y = x[: args.images], y[: args.images]
    train = make_pipeline(x, y, batch_size=settings.batch_size, training=True, seed=1)

    def fresh_model():
        """The same initial weights every time; a new model traces its own functions."""
        keras.utils.set_random_seed(1)
        return build_model(
            cfg,
            mixed_precision=device.policy,
            steps_per_execution=device.steps_per_execution,
            jit_compile=device.jit_compile,
        )

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    steady: dict[bool, list[float]] = {False: [], True: []}
    first: dict[bool, list[float]] = {False: [], True: []}
    flow_calls: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for with_flow in (False, True):
                model = fresh_model()
                timer = Timer()
                callbacks = [timer]
                if with_flow:
                    flow = gradient_flow(
                        keras, cfg, x, y, data.num_classes, Path(tmp), stdout_console()
                    )
                    callbacks = [flow, timer]
                model.fit(train, epochs=args.epochs, callbacks=callbacks, verbose=0)
                first[with_flow].append(timer.seconds[0])
                steady[with_flow] += timer.seconds[1:]
                if with_flow:
                    record = json.loads((Path(tmp) / "gradients.json").read_text())
                    flow_calls += [e["seconds"] for e in record["epochs"][1:]]
    base, flow = statistics.median(steady[False]), statistics.median(steady[True])
    print(
        f"{cfg.name}: {len(x):,} training images, batch {settings.batch_size}, "
        f"{device.kind} ({device.name}), steps/execution {device.steps_per_execution}; "
        f"{args.rounds} rounds x {args.epochs} epochs, alternating"
    )
    print("| measurement | without callback | with callback | cost |")
    print("|---|---|---|---|")
    cost = 100 * (flow - base) / base
    print(f"| steady epoch (median s) | {base:.3f} | {flow:.3f} | {cost:+.1f}% |")
    f0, f1 = statistics.median(first[False]), statistics.median(first[True])
    print(f"| first epoch (median s) | {f0:.3f} | {f1:.3f} | {100 * (f1 - f0) / f0:+.1f}% |")
    call = statistics.median(flow_calls)
    print(f"| one flow measurement (median s) | | {call:.4f} | {100 * call / base:.1f}% of base |")


if __name__ == "__main__":
    main()
