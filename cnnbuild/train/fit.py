"""The fit orchestrator: open the run, load the data, build or restore the model, fit
with progress and committed checkpoints, evaluate, write the results.

SIGINT and SIGTERM behave the same: a save in progress completes, ``state.json`` records
``interrupted``, the resume command is printed and the process exits with 130.

Under a tf.distribute strategy (:mod:`cnnbuild.distribute`) the model is built and fit
in the strategy's scope and every step takes the global batch. Under multi-worker, every
worker runs this same code: the chief into the run directory, every other worker into a
folder of its own beside it (its backup and checkpoints, removed once training ends);
only the chief writes the gradient flow, curves and report. A relaunch of the same
command continues from the workers' common backup.
"""

from __future__ import annotations

import hashlib
import math
import platform
import random
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console

from cnnbuild import distribute
from cnnbuild.catalog import one_hot_classes
from cnnbuild.config import ModelConfig
from cnnbuild.data import Data, describe
from cnnbuild.errors import DataError, Interrupted, RunError, UsageError
from cnnbuild.escape import rich
from cnnbuild.io import os_errors, write_json, write_text
from cnnbuild.schema.sections import TrainConfig
from cnnbuild.train.evaluate import evaluate_model, load_model
from cnnbuild.train.rundir import STATE, RunDir, Signals, State, StopSignal
from cnnbuild.train.settings import (
    Device,
    check_data,
    load_data,
    make_schedule,
    resolve_train,
    resolved_config,
    select_device,
    split_validation,
    stdout_console,
)
from cnnbuild.validate import load_config

AfterTrain = Callable[[Path, dict], None]


def fmt_metrics(logs: dict, keys: list[str]) -> str:
    return "  ".join(f"{k} {logs[k]:.4f}" for k in keys if k in logs)


def epoch_seed(seed: int, epoch: int, index: int = 0) -> int:
    """A 31-bit seed derived from (seed, epoch, index) alone."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


@dataclass
class Run:
    """A training run in progress: its settings, directory, state and timings."""

    cfg: ModelConfig
    settings: TrainConfig
    dir: RunDir
    state: State
    console: Console
    n_train: int = 0
    steps: int = 0
    initial_epoch: int = 0
    diverged: tuple[int, int, float] | None = None
    epoch_start: float = 0.0
    train_end: float | None = None
    wall_start: float = field(default_factory=time.perf_counter)
    prior_wall: float = 0.0
    global_batch: int = 0

    @property
    def history(self) -> list[dict]:
        return self.state.history

    def restored(self, epoch: int) -> None:
        """A multi-worker backup resumed training at ``epoch``: forget any later record."""
        history = self.state.history[:epoch]
        scores = [(h[self.state.monitor], h["epoch"]) for h in history if self.state.monitor in h]
        pick = min if "loss" in self.state.monitor else max
        best, best_epoch = pick(scores) if scores else (None, None)
        self.state = self.state.model_copy(
            update={
                "history": history,
                "epochs_done": epoch,
                "best": best,
                "best_epoch": best_epoch,
            }
        )
        self.initial_epoch = epoch

    @property
    def wall_seconds(self) -> float:
        """Seconds this run has taken so far, over all its sessions."""
        return self.prior_wall + time.perf_counter() - self.wall_start

    def end_epoch(self, epoch: int, logs: dict, model: Any) -> None:
        """Commit the epoch (checkpoints, then state, then history), then report it."""
        seconds = (self.train_end or time.perf_counter()) - self.epoch_start
        record = {
            "epoch": epoch + 1,
            **{k: float(v) for k, v in logs.items() if isinstance(v, (int, float, np.floating))},
        }
        record["learning_rate"] = float(np.asarray(model.optimizer.learning_rate))
        record["train_seconds"] = round(seconds, 3)
        record["images_per_second"] = round(self.n_train / max(seconds, 1e-9), 1)
        value = record.get(self.state.monitor)
        best = self.state.best
        improved = value is not None and (
            best is None or (value > best if "loss" not in self.state.monitor else value < best)
        )
        after = self.state.model_copy(
            update={
                "status": "running",
                "history": [*self.state.history, record],
                "epochs_done": self.state.epochs_done + 1,
                "wall_seconds": round(self.wall_seconds, 2),
                **({"best": value, "best_epoch": epoch + 1} if improved else {}),
            }
        )
        saves = {"model.keras": model.save} if improved else {}
        saves["last.keras"] = model.save
        with self.dir.signals.deferred():
            self.dir.commit_epoch(after, saves)
            self.state = after
            keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in record]
            self.console.print(
                f"epoch {epoch + 1}/{self.settings.epochs}  {fmt_metrics(record, keys)}  "
                f"lr {record['learning_rate']:.3g}  {seconds:.1f}s  "
                f"{record['images_per_second']:,.0f} img/s{' *' if improved else ''}",
                highlight=False,
            )

    def finish(self, status: str) -> None:
        self.state = self.state.model_copy(
            update={"status": status, "wall_seconds": round(self.wall_seconds, 2)}
        )
        self.dir.save(self.state)


def make_callbacks(keras: Any, run: Run, live: bool, epoch_var: Any) -> list[Any]:
    """Progress display, per-epoch seeds, non-finite-loss guard and the epoch commit."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    seed = run.state.seed

    class Reporter(keras.callbacks.Callback):
        """Seeds for the epoch, a rich progress bar (on a terminal), the loss guard."""

        def on_epoch_begin(self, epoch, logs=None):
            epoch_var.assign(epoch)
            keras.utils.set_random_seed(epoch_seed(seed, epoch))
            # dropout/augmentation RNG states are not saved in .keras: derive them too
            generators = [v for v in self.model.variables if "seed_generator_state" in v.path]
            for i, var in enumerate(generators):
                var.assign(np.asarray([epoch_seed(seed, epoch, i + 1), 0]).astype(var.dtype))
            run.epoch_start = time.perf_counter()
            run.train_end = None
            if live:
                self.progress = Progress(
                    TextColumn(f"epoch {epoch + 1}/{run.settings.epochs}"),
                    BarColumn(),
                    TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[metrics]}"),
                    TextColumn("{task.fields[speed]}"),
                    TimeRemainingColumn(),
                    console=run.console,
                    transient=True,
                )
                self.task = self.progress.add_task("", total=run.steps, metrics="", speed="")
                self.progress.start()

        def on_train_batch_end(self, batch, logs=None):
            logs = logs or {}
            run.train_end = time.perf_counter()
            loss = logs.get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                run.diverged = (len(run.history) + 1, batch + 1, float(loss))
                self.model.stop_training = True
            if live:
                done = min(batch + 1, run.steps)
                seconds = max(run.train_end - run.epoch_start, 1e-9)
                images = done * (run.global_batch or run.settings.batch_size)
                speed = min(images, run.n_train) / seconds
                self.progress.update(
                    self.task,
                    completed=done,
                    metrics=fmt_metrics(logs, ["loss", "accuracy"]),
                    speed=f"{speed:,.0f} img/s",
                )

        def on_epoch_end(self, epoch, logs=None):
            if live:
                self.progress.stop()

    class Checkpointer(keras.callbacks.Callback):
        """Commit every epoch: last.keras, model.keras when best, state, history."""

        def on_epoch_end(self, epoch, logs=None):
            if not run.diverged:
                run.end_epoch(epoch, dict(logs or {}), self.model)

    return [Reporter(), Checkpointer()]


def keras_callbacks(keras: Any, run: Run) -> list[Any]:
    """The Keras callbacks the config's ``train:`` section asks for."""
    s = run.settings
    out = []
    if s.early_stopping is not None:
        out.append(keras.callbacks.EarlyStopping(**s.early_stopping.model_dump()))
    if s.reduce_lr_on_plateau is not None:
        out.append(
            keras.callbacks.ReduceLROnPlateau(**s.reduce_lr_on_plateau.model_dump(), verbose=0)
        )
    if s.tensorboard:
        out.append(keras.callbacks.TensorBoard(log_dir=str(run.dir.file("tb"))))
    return out


def _resume_command(run_dir: Path) -> str:
    return f"cnnbuild train --resume {shlex.quote(str(run_dir))}"


def train(
    config: Path | None,
    overrides: dict[str, Any],
    *,
    out: Path | None = None,
    resume: Path | None = None,
    console: Console | None = None,
    live: bool | None = None,
    verbose: bool = False,
    extra_callbacks: Sequence[Any] = (),
    after_train: AfterTrain | None = None,
) -> dict:
    """Train a config (or resume a run) and evaluate it on the test set.

    Args:
        config: the YAML config; with ``resume``, the run's own config.yaml is used.
        overrides: ``train:`` settings from the command line (None means not given).
        out: the run directory, new or empty (default ``runs/<name>-<timestamp>``).
        resume: a run directory to continue from its last committed epoch.
        console: where progress and results go.
        live: show progress bars (default: when the console is a terminal).
        verbose: show TensorFlow's start-up messages.
        extra_callbacks: more Keras callbacks for ``model.fit``.
        after_train: called with the run directory and the metrics once they are written.

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        ConfigError, UsageError, DataError, RunError, WriteError: a message for the user.
        Interrupted: SIGINT or SIGTERM; the run is saved and can be resumed.
    """
    console = console or stdout_console()
    live = console.is_terminal if live is None else live
    with Signals() as signals, os_errors():
        run_dir: RunDir | None = None
        try:
            if resume is not None:
                run_dir = RunDir.open(resume, signals)
            return _train(
                config, overrides, out, run_dir, signals, console, live, verbose,
                extra_callbacks, after_train,
            )  # fmt: skip
        except StopSignal as stop:
            raise Interrupted(f"{stop.name}: interrupted before the run started") from None
        finally:
            if run_dir is not None:
                run_dir.close()


def _open_resumed(run_dir: RunDir, config: Path | None, overrides: dict, console: Console):
    """The config, state and settings of a run to resume, after recovering its folder."""
    extra = sorted(k for k, v in overrides.items() if v is not None and k != "epochs")
    if extra:
        raise UsageError(
            "a resumed run keeps its recorded settings; only --epochs may "
            "change (received " + ", ".join("--" + k.replace("_", "-") for k in extra) + ")"
        )
    cfg = load_config(run_dir.file("config.yaml"))
    settings = resolve_train(cfg, overrides)
    if distribute.multi_worker_cluster(settings.strategy) is not None:
        raise UsageError(
            f"--resume {run_dir.path}: a multi-worker run continues when the same "
            "command is run again on every worker (no --resume)"
        )
    state, removed = run_dir.recover()
    if removed:
        console.print(
            f"removed {len(removed)} temp file(s) an earlier crash left: {', '.join(removed)}",
            highlight=False,
        )
    if config is not None:
        console.print(
            f"resuming with {run_dir.file('config.yaml')} (the run's own config; "
            f"{config} is not read)",
            highlight=False,
        )
    return cfg, state, settings


def _restore(keras: Any, run_dir: RunDir, state: State, device: Device) -> Any:
    """The compiled model of the last committed epoch, checked against the state."""
    path = run_dir.file("last.keras")
    if not path.is_file():
        raise RunError(
            f"--resume {run_dir.path}: {path.name} is missing but state.json records "
            f"{state.epochs_done} finished epoch(s); the checkpoint was deleted, so start "
            "the run again in a new folder"
        )
    keras.mixed_precision.set_global_policy(device.policy)
    model = load_model(keras, path, compile=True)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not optimizer.built:
        raise RunError(
            f"--resume {run_dir.path}: {path} holds no optimizer state (it was saved "
            "uncompiled, not by cnnbuild train); a resume needs it, so start the run again"
        )
    done = int(model.optimizer.iterations.numpy())
    want = state.epochs_done * (state.steps_per_epoch or 0)
    if state.steps_per_epoch and done != want:
        raise RunError(
            f"--resume {run_dir.path}: {path} has made {done} optimizer steps but "
            f"state.json records {state.epochs_done} epochs of {state.steps_per_epoch} "
            f"steps ({want}); the files do not belong together, so start the run again"
        )
    return model


def _train(
    config: Path | None,
    overrides: dict[str, Any],
    out: Path | None,
    run_dir: RunDir | None,
    signals: Signals,
    console: Console,
    live: bool,
    verbose: bool,
    extra_callbacks: Sequence[Any],
    after_train: AfterTrain | None,
) -> dict:
    state = None
    relaunch = None  # the state a multi-worker run left in this worker's folder
    if run_dir is not None:
        cfg, state, settings = _open_resumed(run_dir, config, overrides, console)
    elif config is None:
        raise UsageError("give a CONFIG to train, or --resume RUN_DIR")
    else:
        cfg = load_config(config)
        settings = resolve_train(cfg, overrides)
        cluster = distribute.multi_worker_cluster(settings.strategy)
        if cluster is None:
            RunDir.check_out(out)
        else:
            if out is None:
                raise UsageError(
                    "--strategy multi-worker: give every worker the same --out RUN_DIR; "
                    "to continue after a failure, run the same command again"
                )
            out = distribute.worker_dir(out, cluster)
            if (out / STATE).is_file():
                relaunch = RunDir(out).read_state()
            if relaunch is not None and relaunch.status in ("completed", "early_stopped"):
                raise UsageError(
                    f"--out {out}: already holds a finished run ({relaunch.status}); "
                    "choose another folder"
                )
            if settings.seed is None and relaunch is None:
                raise UsageError(
                    "--strategy multi-worker: every worker must shuffle alike; set "
                    "train.seed or --seed (cnnbuild train --workers N sets one for you)"
                )

    from cnnbuild.builder import build_model, keras_module

    keras = keras_module(verbose)
    import tensorflow as tf

    device = select_device(settings)
    # before any TensorFlow op: a multi-worker strategy configures the runtime
    plan = distribute.make_plan(settings.strategy, device.kind)
    if plan.strategy is not None:
        if (settings.steps_per_execution or 1) > 1:
            raise UsageError(
                f"--steps-per-execution {settings.steps_per_execution}: Keras' multi-step "
                f"loop fails under tf.distribute ({plan.name}); use 1, the default there"
            )
        device.steps_per_execution = 1
    seed = settings.seed
    if seed is None:
        seed = relaunch.seed if relaunch else random.SystemRandom().randrange(2**31)
    data = load_data(cfg.input_shape, settings, quiet=not live)
    for note in data.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    check_data(cfg, data)
    x_tr, y_tr, x_val, y_val = split_validation(
        data.x_train, data.y_train, settings.validation_split, seed
    )
    if len(x_tr) == 0:
        raise DataError(
            f"dataset {data.name}: no training images left after "
            f"validation_split {settings.validation_split}"
        )
    global_batch = plan.global_batch(settings.batch_size)
    steps = math.ceil(len(x_tr) / global_batch)
    if run_dir is None and relaunch is not None:
        run_dir = RunDir.open(out, signals, flag="--out")
        state, _ = run_dir.recover()
    elif run_dir is None:
        run_dir = RunDir.create(out, cfg.name, signals)
    settings = settings.model_copy(
        update={
            "seed": seed,
            "mixed_precision": device.mixed_precision,
            "jit_compile": device.jit_compile,
            "steps_per_execution": device.steps_per_execution,
            "strategy": plan.name,
        }
    )
    monitor = (
        settings.monitor
        if len(x_val) or not settings.monitor.startswith("val_")
        else settings.monitor.removeprefix("val_")
    )
    if state is None:
        state = State(status="running", epochs_done=0, monitor=monitor, seed=seed)
    state.steps_per_epoch = steps
    run = Run(
        cfg, settings, run_dir, state, console, n_train=len(x_tr), steps=steps,
        global_batch=global_batch,
    )  # fmt: skip
    run.initial_epoch = state.epochs_done
    run.prior_wall = state.wall_seconds
    try:
        return _fit(
            run, keras, tf, device, plan, data, (x_tr, y_tr, x_val, y_val), live,
            extra_callbacks, after_train, build_model,
        )  # fmt: skip
    except StopSignal as stop:
        with signals.deferred(reraise=False):
            run.finish("interrupted")
        again = (
            "the same command, on every worker"
            if plan.multi_worker
            else _resume_command(run_dir.path)
        )
        done = run.state.epochs_done
        saved = (
            f"epoch {done} is saved in {run_dir.file('last.keras')}"
            if done
            else "no epoch had finished"
        )
        raise Interrupted(f"{stop.name}: interrupted; {saved}. Resume with:\n  {again}") from None
    finally:
        run_dir.close()


def _fit(
    run: Run,
    keras: Any,
    tf: Any,
    device: Device,
    plan: distribute.Plan,
    data: Data,
    split: tuple[np.ndarray, ...],
    live: bool,
    extra_callbacks: Sequence[Any],
    after_train: AfterTrain | None,
    build_model: Callable[..., Any],
) -> dict:
    cfg, settings, run_dir, console = run.cfg, run.settings, run.dir, run.console
    x_tr, y_tr, x_val, y_val = split
    seed = run.state.seed
    # the resolved config (rewritten on resume, where --epochs may have changed), then state
    write_text(
        run_dir.file("config.yaml"),
        yaml.safe_dump(resolved_config(cfg, settings), sort_keys=False),
    )
    run_dir.save(run.state)

    from cnnbuild.data.pipeline import make_pipeline

    keras.utils.set_random_seed(seed)
    one_hot = one_hot_classes(cfg.compile.loss, data.num_classes)
    epoch_var = tf.Variable(run.initial_epoch, dtype=tf.int64, trainable=False)
    batch = run.global_batch  # split between the replicas under a strategy
    train_ds = make_pipeline(
        x_tr, y_tr, batch_size=batch, training=True, seed=seed,
        one_hot=one_hot, shuffle_buffer=settings.shuffle_buffer, epoch=epoch_var,
    )  # fmt: skip
    val_ds = (
        make_pipeline(x_val, y_val, batch_size=batch, training=False, one_hot=one_hot)
        if len(x_val)
        else None
    )
    if plan.strategy is not None:
        train_ds = distribute.shard(train_ds)
        val_ds = distribute.shard(val_ds) if val_ds is not None else None
    # a multi-worker relaunch builds afresh: the backup callback restores the weights
    restore = run.initial_epoch > 0 and not plan.multi_worker
    with plan.scope():
        if restore:
            model = _restore(keras, run_dir, run.state, device)
        else:
            model = build_model(
                cfg,
                mixed_precision=device.policy,
                lr=make_schedule(keras, cfg, settings, run.steps),
                steps_per_execution=device.steps_per_execution,
                jit_compile=device.jit_compile,
            )
            from cnnbuild.builder import adapt_normalization

            adapt_normalization(model, x_tr)
    where = f"{device.kind} ({device.name})"
    replicas = f" per replica x {plan.replicas} = {batch}" if plan.replicas > 1 else ""
    console.print(
        f"[bold]{cfg.name}[/bold]: {model.count_params():,} parameters; "
        f"{describe(settings.dataset)}"
        f" {len(x_tr):,} train / {len(x_val):,} validation / {len(data.x_test):,} test images;"
        f" {where}; {plan.describe()}; batch {settings.batch_size}{replicas}; precision "
        f"{device.policy}; XLA {'on' if device.jit_compile else 'off'}"
        f"; steps/execution {device.steps_per_execution}; seed {seed}",
        highlight=False,
    )
    console.print(f"run directory: {rich(run_dir.path)}", highlight=False)
    if run.initial_epoch >= settings.epochs:
        console.print(f"already trained {run.initial_epoch} epochs", highlight=False)
    from cnnbuild.insight.flow import gradient_flow

    callbacks = [
        *make_callbacks(keras, run, live, epoch_var),
        *keras_callbacks(keras, run),
        *extra_callbacks,
    ]
    # what only the chief runs (gradient flow, report) runs on an undistributed copy
    plain = model
    if plan.strategy is not None and plan.is_chief:
        plain = build_model(cfg, compile=False, mixed_precision=device.policy)
    if plan.is_chief:
        # per-layer gradient flow on one fixed batch -> gradients.json
        flow = gradient_flow(
            keras, cfg, x_tr, y_tr, data.num_classes, run_dir.path, console, run.initial_epoch
        )
        if plain is not model:
            flow = distribute.on_plain_copy(keras, flow, plain)
        callbacks.insert(len(callbacks) - len(extra_callbacks), flow)
    if plan.multi_worker:

        def restored(epoch: int) -> None:
            run.restored(epoch)
            if epoch:
                console.print(
                    f"restored from the backup: continuing after epoch {epoch}", highlight=False
                )

        callbacks += distribute.backup_callbacks(keras, run_dir.path, plan.strategy, restored)
    where_ops = (
        plan.scope()
        if plan.strategy is not None
        else tf.device("/GPU:0" if device.kind == "gpu" else "/CPU:0")
    )
    with where_ops:
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=settings.epochs,
            initial_epoch=0 if plan.multi_worker else run.initial_epoch,
            callbacks=callbacks,
            verbose=0,
            shuffle=False,
        )
    if run.diverged:
        epoch, step, loss = run.diverged
        run.finish("diverged")
        kept = (
            f"the last good checkpoint (epoch {len(run.history)}) is {run_dir.file('last.keras')}"
            if run.history
            else "no epoch finished"
        )
        raise RunError(
            f"the loss became {loss} at epoch {epoch}, step {step}; training "
            f"stopped and {kept}. Lower the learning rate, or check the data "
            "scaling and the loss"
        )
    status = "completed" if len(run.history) >= settings.epochs else "early_stopped"
    digest = distribute.weights_digest(model)
    if run.state.best_epoch is not None and run_dir.file("model.keras").exists():
        model.load_weights(run_dir.file("model.keras"))
    metrics = _results(run, model, keras, tf, device, plan, data, split, one_hot, status)
    metrics["weights_sha256"] = digest
    if not plan.is_chief:  # the evaluation above is a collective: every worker takes part
        console.print(f"final weights sha256 {digest}", highlight=False)
        run.finish(status)
        distribute.finish(run_dir.path, plan.cluster)
        return metrics
    write_json(run_dir.file("metrics.json"), metrics)
    run.finish(status)
    from cnnbuild.charts import curves

    curves(run.history, run_dir.file("curves.png"), cfg.name)
    from cnnbuild.insight.run_report import write_report

    if plain is not model:
        plain.set_weights(model.get_weights())
    write_report(run_dir.path, model=plain, cfg=cfg, data=data)
    if after_train is not None:
        after_train(run_dir.path, metrics)
    if plan.multi_worker:
        console.print(f"final weights sha256 {digest}", highlight=False)
    accuracy = metrics["test_accuracy"]
    console.print(
        (
            f"test accuracy {accuracy:.4f}  test loss {metrics['test_loss']:.4f}  "
            if accuracy is not None
            else "no test images, so no test accuracy  "
        )
        + f"({metrics['epochs']} epochs, {metrics['wall_seconds']:.1f}s, "
        f"{metrics['images_per_second']:,.0f} img/s on {device.kind})",
        highlight=False,
    )
    console.print(f"saved to {rich(run_dir.path)}/", highlight=False)
    return metrics


def _results(
    run: Run,
    model: Any,
    keras: Any,
    tf: Any,
    device: Device,
    plan: distribute.Plan,
    data: Data,
    split: tuple[np.ndarray, ...],
    one_hot: int | None,
    status: str,
) -> dict:
    """Evaluate on the test set and gather what ``metrics.json`` records."""
    settings, history = run.settings, run.history
    x_tr, _, x_val, _ = split
    result = {"accuracy": None, "loss": None, "per_class": {}}
    if len(data.x_test):
        result = evaluate_model(
            model,
            data,
            settings.batch_size,
            one_hot,
            run.dir.path,
            f"{run.cfg.name}: best epoch {run.state.best_epoch}",
        )
    train_seconds = sum(h["train_seconds"] for h in history)
    steady = history[1:] or history
    return {
        "test_accuracy": result["accuracy"],
        "test_loss": result["loss"],
        "epochs": len(history),
        "epochs_planned": settings.epochs,
        "best_epoch": run.state.best_epoch,
        "monitor": run.state.monitor,
        "best": run.state.best,
        "wall_seconds": round(run.wall_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "images_per_second": round(len(history) * run.n_train / max(train_seconds, 1e-9), 1),
        "steady_images_per_second": round(
            len(steady) * run.n_train / max(sum(h["train_seconds"] for h in steady), 1e-9), 1
        ),
        "device": device.kind,
        "device_name": device.name,
        "mixed_precision": device.mixed_precision,
        "precision_policy": device.policy,
        "jit_compile": device.jit_compile,
        "steps_per_execution": device.steps_per_execution,
        "batch_size": settings.batch_size,
        "strategy": plan.name,
        "replicas": plan.replicas,
        "workers": plan.cluster.num_workers if plan.cluster else 1,
        "global_batch_size": run.global_batch,
        "seed": run.state.seed,
        "dataset": describe(settings.dataset),
        "data_source": data.source,
        "data_resize": data.resize,
        "train_images": len(x_tr),
        "validation_images": len(x_val),
        "test_images": len(data.x_test),
        "per_class_accuracy": result["per_class"],
        "status": status,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "python_version": platform.python_version(),
    }
