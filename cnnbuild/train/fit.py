"""The fit orchestrator: a run :class:`Session` in phases, ``prepare`` (settings, device,
data, the run directory), ``build`` (the model, fresh or restored), ``fit`` (progress and
committed checkpoints) and ``finish`` (evaluate, write the results).

Training imports no presentation: what a run shows beside itself (gradient flow, the
report) comes in as :class:`Hook` objects from the caller (the CLI attaches
:func:`cnnbuild.insight.hooks.training_hooks`).

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
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml
from rich.console import Console

from cnnbuild import distribute
from cnnbuild.backend import keras_module
from cnnbuild.builder import (
    adapt_normalization,
    build_model,
    build_training_state,
    compile_model,
    set_frozen,
)
from cnnbuild.catalog import one_hot_classes
from cnnbuild.charts import curves
from cnnbuild.config import ModelConfig, frozen_names
from cnnbuild.data import Data, describe
from cnnbuild.errors import DataError, Interrupted, RunError, UsageError
from cnnbuild.escape import rich
from cnnbuild.io import os_errors, write_json, write_text
from cnnbuild.runs import apply_init, load_data, load_model, resolve_train
from cnnbuild.schema.sections import TrainConfig
from cnnbuild.train.evaluate import evaluate_model
from cnnbuild.train.rundir import STATE, RunDir, Signals, State, StopSignal
from cnnbuild.train.settings import (
    Device,
    check_data,
    make_schedule,
    resolved_config,
    select_device,
    split_validation,
    stdout_console,
)
from cnnbuild.validate import load_config


def fmt_metrics(logs: dict, keys: list[str]) -> str:
    return "  ".join(f"{k} {logs[k]:.4f}" for k in keys if k in logs)


def epoch_seed(seed: int, epoch: int, index: int = 0) -> int:
    """A 31-bit seed derived from (seed, epoch, index) alone."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


@contextmanager
def phase(console: Console, live: bool, text: str) -> Iterator[None]:
    """A silent phase made visible on a terminal: a spinner with ``text…`` while it runs,
    then the same words with its time. Elsewhere (a pipe, CI logs) nothing, so the output
    stays the run's record."""
    if not live:
        yield
        return
    start = time.perf_counter()
    with console.status(f"{text}…"):
        yield
    console.print(f"{text}… {time.perf_counter() - start:.1f}s", highlight=False)


TRACING = "tracing the training step"


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
    phase: int | None = None  # the phase of train.phases in progress (1-based)
    best_weights: list | None = None  # what model.keras holds, when saved in this session

    @property
    def history(self) -> list[dict]:
        return self.state.history

    def saved_words(self) -> str:
        """Which epoch a stopped run keeps, for its last message."""
        done = self.state.epochs_done
        return (
            f"epoch {done} is saved in {self.dir.file('last.keras')}"
            if done
            else ("no epoch had finished")
        )

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
        self.best_weights = None  # model.keras is read back instead

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
        if self.phase is not None:
            record["phase"] = self.phase
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
        saves = {"last.keras": model.save}
        if improved:  # the same model: last.keras's bytes, not a second save
            saves["model.keras"] = self.dir.copy_of("last.keras")
        with self.dir.signals.deferred():
            self.dir.commit_epoch(after, saves)
            self.state = after
            if improved:  # the test evaluation reads these instead of model.keras again
                self.best_weights = model.get_weights()
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


def _epoch_progress(run: Run, epoch: int) -> tuple[Any, Any]:
    """A started rich progress bar for one epoch, with its task (see make_callbacks)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn(f"epoch {epoch + 1}/{run.settings.epochs}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[metrics]}"),
        TextColumn("{task.fields[speed]}"),
        TimeRemainingColumn(),
        console=run.console,
        transient=True,
    )
    task = progress.add_task("", total=run.steps, metrics="", speed="")
    progress.start()
    return progress, task


def make_callbacks(keras: Any, run: Run, live: bool, epoch_var: Any) -> list[Any]:
    """Progress display, per-epoch seeds, non-finite-loss guard and the epoch commit."""
    seed = run.state.seed

    class Reporter(keras.callbacks.Callback):
        """Seeds for the epoch, a rich progress bar (on a terminal), the loss guard."""

        def on_train_begin(self, logs=None):
            self.generators = [v for v in self.model.variables if "seed_generator_state" in v.path]
            self.traced = False

        def on_epoch_begin(self, epoch, logs=None):
            epoch_var.assign(epoch)
            # Dropout's and the augmentation layers' generator states are not saved in
            # .keras: each epoch's derives from (seed, epoch), so a resumed run equals an
            # uninterrupted one. Assigning them costs nothing; keras.utils.set_random_seed
            # here made TensorFlow re-instantiate the train function every epoch.
            for i, var in enumerate(self.generators):
                var.assign(np.asarray([epoch_seed(seed, epoch, i + 1), 0]).astype(var.dtype))
            run.epoch_start = time.perf_counter()
            run.train_end = None
            if live:
                self.progress, self.task = _epoch_progress(run, epoch)
                if not self.traced:  # the first step waits for the trace (compiling)
                    self.progress.update(self.task, metrics=f"{TRACING}…")

        def on_train_batch_end(self, batch, logs=None):
            logs = logs or {}
            run.train_end = time.perf_counter()
            loss = logs.get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                run.diverged = (len(run.history) + 1, batch + 1, float(loss))
                self.model.stop_training = True
            if live and not self.traced:
                seconds = run.train_end - run.epoch_start
                self.progress.console.print(f"{TRACING}… {seconds:.1f}s", highlight=False)
            self.traced = True
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


@dataclass
class FitContext:
    """What a hook sees of a run (on the chief only).

    Attributes:
        keras: the keras module.
        cfg: the config the model was built from.
        run_dir: the run directory.
        console: where the run prints.
        initial_epoch: epochs already done (a resumed run keeps their records).
        data: the dataset.
        x_train: the training images (raw pixels), validation held out.
        y_train: their integer labels.
        batch_size: the training batch (per replica).
        test_outputs: the best model's outputs on ``data.x_test``, in order, once the
            test evaluation has run (``None`` before, or without test images).
        phase: ``with ctx.phase("writing report"):`` shows a phase and its time on a
            terminal (nothing elsewhere).
    """

    keras: Any
    cfg: ModelConfig
    run_dir: Path
    console: Console
    initial_epoch: int
    data: Data
    x_train: np.ndarray
    y_train: np.ndarray
    batch_size: int
    phase: Callable[[str], AbstractContextManager] = lambda text: nullcontext()
    test_outputs: np.ndarray | None = None


class Hook(Protocol):
    """What the caller attaches to a run (the CLI attaches gradient flow and the report).

    Both methods run on the chief only, on an undistributed copy of the model.
    """

    def callbacks(self, ctx: FitContext) -> list[Any]:
        """Keras callbacks for ``model.fit``."""
        ...

    def finish(self, ctx: FitContext, model: Any, metrics: dict) -> None:
        """Called with the best model once ``metrics.json`` is written."""
        ...


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
    hooks: Sequence[Hook] = (),
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
        extra_callbacks: more Keras callbacks for ``model.fit`` (on every worker).
        hooks: what the chief runs beside training (see :class:`Hook`).

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        ConfigError, UsageError, DataError, RunError, WriteError: a message for the user.
        Interrupted: SIGINT or SIGTERM; the run is saved and can be resumed.
    """
    console = console or stdout_console()
    request = Request(
        config=config,
        overrides=overrides,
        out=out,
        console=console,
        live=console.is_terminal if live is None else live,
        verbose=verbose,
        extra_callbacks=tuple(extra_callbacks),
        hooks=tuple(hooks),
    )
    with Signals() as signals, os_errors():
        run_dir: RunDir | None = None
        try:
            if resume is not None:
                run_dir = RunDir.open(resume, signals)
            return Session(request, signals).execute(run_dir)
        except StopSignal as stop:
            raise Interrupted(f"{stop.name}: interrupted before the run started") from None
        finally:
            if run_dir is not None:
                run_dir.close()


@dataclass(frozen=True)
class Request:
    """What the caller asked of :func:`train`."""

    config: Path | None
    overrides: dict[str, Any]
    out: Path | None
    console: Console
    live: bool
    verbose: bool
    extra_callbacks: tuple[Any, ...] = ()
    hooks: tuple[Hook, ...] = ()


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


def _open_new(config: Path, overrides: dict, out: Path | None):
    """The config and settings of a new run, its folder (this worker's, under
    multi-worker) and the state a multi-worker relaunch left there, if any."""
    cfg = load_config(config)
    settings = resolve_train(cfg, overrides)
    cluster = distribute.multi_worker_cluster(settings.strategy)
    if cluster is None:
        RunDir.check_out(out)
        return cfg, settings, out, None
    if out is None:
        raise UsageError(
            "--strategy multi-worker: give every worker the same --out RUN_DIR; "
            "to continue after a failure, run the same command again"
        )
    out = distribute.worker_dir(out, cluster)
    relaunch = RunDir(out).read_state() if (out / STATE).is_file() else None
    if relaunch is not None and relaunch.status in ("completed", "early_stopped"):
        raise UsageError(
            f"--out {out}: already holds a finished run ({relaunch.status}); choose another folder"
        )
    if settings.seed is None and relaunch is None:
        raise UsageError(
            "--strategy multi-worker: every worker must shuffle alike; set "
            "train.seed or --seed (cnnbuild train --workers N sets one for you)"
        )
    return cfg, settings, out, relaunch


def _restore(run_dir: RunDir, state: State, keras: Any, device: Device, since: int = 0) -> Any:
    """The compiled model of the last committed epoch, checked against the state (its
    optimizer counts the steps since epoch ``since``, where its phase began)."""
    path = run_dir.file("last.keras")
    if not path.is_file():
        raise RunError(
            f"--resume {run_dir.path}: {path.name} is missing but state.json records "
            f"{state.epochs_done} finished epoch(s); the checkpoint was deleted, so start "
            "the run again in a new folder"
        )
    keras.mixed_precision.set_global_policy(device.policy)
    model = load_model(path, compile=True)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not optimizer.built:
        raise RunError(
            f"--resume {run_dir.path}: {path} holds no optimizer state (it was saved "
            "uncompiled, not by cnnbuild train); a resume needs it, so start the run again"
        )
    done = int(model.optimizer.iterations.numpy())
    want = (state.epochs_done - since) * (state.steps_per_epoch or 0)
    if state.steps_per_epoch and done != want:
        raise RunError(
            f"--resume {run_dir.path}: {path} has made {done} optimizer steps but "
            f"state.json records {state.epochs_done - since} epochs of {state.steps_per_epoch} "
            f"steps ({want}); the files do not belong together, so start the run again"
        )
    return model


@dataclass
class Session:
    """One session of a run, in phases: :meth:`prepare` (settings, device, data, the run
    directory), :meth:`build` (the model, fresh or restored), :meth:`fit` and
    :meth:`finish` (evaluate, record, hooks). Each phase fills the fields the next reads.
    """

    request: Request
    signals: Signals
    keras: Any = None
    tf: Any = None
    device: Device | None = None
    plan: distribute.Plan | None = None
    data: Data | None = None
    split: tuple[np.ndarray, ...] = ()
    run: Run | None = None
    one_hot: int | None = None
    model: Any = None
    plain: Any = None  # an undistributed copy for the chief's hooks (else the model)
    epoch_var: Any = None  # the epoch, read by the training pipeline's shuffle
    datasets: tuple[Any, Any] = (None, None)  # training and validation pipelines
    test_outputs: Any = None  # the best model's outputs on the test images, once evaluated

    def execute(self, run_dir: RunDir | None) -> dict:
        """All the phases; a signal saves the state and raises :class:`Interrupted`."""
        self.prepare(run_dir)
        run = self.run
        try:
            self.build()
            self.fit()
            return self.finish()
        except StopSignal as stop:
            with self.signals.deferred(reraise=False):
                run.finish("interrupted")
            again = (
                "the same command, on every worker"
                if self.plan.multi_worker
                else _resume_command(run.dir.path)
            )
            raise Interrupted(
                f"{stop.name}: interrupted; {run.saved_words()}. Resume with:\n  {again}"
            ) from None
        finally:
            run.dir.close()

    # -- prepare ---------------------------------------------------------------------

    def prepare(self, run_dir: RunDir | None) -> None:
        """Settings, device, strategy, data and its split, then the run directory."""
        req = self.request
        state = relaunch = None  # relaunch: what a multi-worker run left in this folder
        out = req.out
        if run_dir is not None:
            cfg, state, settings = _open_resumed(run_dir, req.config, req.overrides, req.console)
        elif req.config is None:
            raise UsageError("give a CONFIG to train, or --resume RUN_DIR")
        else:
            cfg, settings, out, relaunch = _open_new(req.config, req.overrides, out)
        self.keras = keras_module(req.verbose)
        import tensorflow as tf

        self.tf = tf
        self.device = select_device(settings, len(cfg.nodes))
        # before any TensorFlow op: a multi-worker strategy configures the runtime
        self.plan = distribute.make_plan(settings.strategy, self.device.kind)
        if self.plan.strategy is not None:
            if (settings.steps_per_execution or 1) > 1:
                raise UsageError(
                    f"--steps-per-execution {settings.steps_per_execution}: Keras' multi-step "
                    f"loop fails under tf.distribute ({self.plan.name}); use 1, the default there"
                )
            self.device.steps_per_execution = 1
        seed = settings.seed
        if seed is None:
            seed = relaunch.seed if relaunch else random.SystemRandom().randrange(2**31)
        self._load_data(cfg, settings, seed)
        if run_dir is None and relaunch is not None:
            run_dir = RunDir.open(out, self.signals, flag="--out")
            state, _ = run_dir.recover()
        elif run_dir is None:
            run_dir = RunDir.create(out, cfg.name, self.signals)
        self._start_run(cfg, settings, seed, run_dir, state)

    def _load_data(self, cfg: ModelConfig, settings: TrainConfig, seed: int) -> None:
        """The dataset, checked against the config, split into train and validation."""
        console = self.request.console
        data = load_data(cfg.input_shape, settings, quiet=not self.request.live)
        for note in data.notes:
            console.print(f"note: {note}", highlight=False, soft_wrap=True)
        check_data(cfg, data)
        self.split = split_validation(data.x_train, data.y_train, settings.validation_split, seed)
        if len(self.split[0]) == 0:
            raise DataError(
                f"dataset {data.name}: no training images left after "
                f"validation_split {settings.validation_split}"
            )
        self.data = data

    def _start_run(
        self,
        cfg: ModelConfig,
        settings: TrainConfig,
        seed: int,
        run_dir: RunDir,
        state: State | None,
    ) -> None:
        """The run's resolved settings and its state, as a :class:`Run`."""
        device, plan = self.device, self.plan
        x_tr, _, x_val, _ = self.split
        global_batch = plan.global_batch(settings.batch_size)
        steps = math.ceil(len(x_tr) / global_batch)
        settings = settings.model_copy(
            update={
                "seed": seed,
                "mixed_precision": device.mixed_precision,
                "jit_compile": device.jit_compile,
                "steps_per_execution": device.steps_per_execution,
                "strategy": plan.name,
            }
        )
        monitor = settings.monitor
        if not len(x_val) and monitor.startswith("val_"):
            monitor = monitor.removeprefix("val_")
        if state is None:
            state = State(status="running", epochs_done=0, monitor=monitor, seed=seed)
        state.steps_per_epoch = steps
        self.run = Run(
            cfg,
            settings,
            run_dir,
            state,
            self.request.console,
            n_train=len(x_tr),
            steps=steps,
            global_batch=global_batch,
            initial_epoch=state.epochs_done,
            prior_wall=state.wall_seconds,
        )

    # -- build or restore ------------------------------------------------------------

    def build(self) -> None:
        """Record the resolved config and state, then build the model or restore it."""
        run, keras = self.run, self.keras
        cfg, settings, device, plan = run.cfg, run.settings, self.device, self.plan
        # the resolved config (rewritten on resume, where --epochs may have changed), then state
        write_text(
            run.dir.file("config.yaml"),
            yaml.safe_dump(resolved_config(cfg, settings), sort_keys=False),
        )
        run.dir.save(run.state)
        keras.utils.set_random_seed(run.state.seed)
        self.one_hot = one_hot_classes(cfg.compile.loss, self.data.num_classes)
        self.epoch_var = self.tf.Variable(run.initial_epoch, dtype=self.tf.int64, trainable=False)
        self.datasets = self._datasets(self.epoch_var)
        # a multi-worker relaunch builds afresh: the backup callback restores the weights
        with plan.scope():
            if run.initial_epoch > 0 and not plan.multi_worker:
                # the optimizer counts the steps since the last finished epoch's phase began
                since = phase_at(phase_plan(cfg, settings), run.initial_epoch - 1).start
                self.model = _restore(run.dir, run.state, keras, device, since)
            else:
                self.model = build_model(
                    cfg,
                    mixed_precision=device.policy,
                    lr=make_schedule(keras, cfg, settings, run.steps),
                    steps_per_execution=device.steps_per_execution,
                    jit_compile=device.jit_compile,
                )
                adapt_normalization(self.model, self.split[0])
                report = apply_init(self.model, cfg)  # a new run: --resume keeps its own
                for line in report.message().splitlines() if report is not None else ():
                    run.console.print(rich(line), highlight=False)
        self.plain = self.model
        if plan.strategy is not None and plan.is_chief and self.request.hooks:
            self.plain = build_model(cfg, compile=False, mixed_precision=device.policy)

    # -- fit -------------------------------------------------------------------------

    def _datasets(self, epoch_var: Any) -> tuple[Any, Any]:
        """The training pipeline (shuffled per epoch) and the validation one, sharded
        under a strategy."""
        from cnnbuild.data.pipeline import make_pipeline

        run, plan = self.run, self.plan
        x_tr, y_tr, x_val, y_val = self.split
        batch = run.global_batch  # split between the replicas under a strategy
        train_ds = make_pipeline(
            x_tr,
            y_tr,
            batch_size=batch,
            training=True,
            seed=run.state.seed,
            one_hot=self.one_hot,
            shuffle_buffer=run.settings.shuffle_buffer,
            epoch=epoch_var,
        )
        val_ds = None
        if len(x_val):
            val_ds = make_pipeline(
                x_val, y_val, batch_size=batch, training=False, one_hot=self.one_hot
            )
        if plan.strategy is not None:
            train_ds = distribute.shard(train_ds)
            val_ds = distribute.shard(val_ds) if val_ds is not None else None
        return train_ds, val_ds

    def _announce(self) -> None:
        run, device, plan = self.run, self.device, self.plan
        settings, x_tr, x_val = run.settings, self.split[0], self.split[2]
        where = f"{device.kind} ({device.name})"
        replicas = (
            f" per replica x {plan.replicas} = {run.global_batch}" if plan.replicas > 1 else ""
        )
        run.console.print(
            f"[bold]{run.cfg.name}[/bold]: {self.model.count_params():,} parameters; "
            f"{describe(settings.dataset)}"
            f" {len(x_tr):,} train / {len(x_val):,} validation / "
            f"{len(self.data.x_test):,} test images;"
            f" {where}; {plan.describe()}; batch {settings.batch_size}{replicas}; precision "
            f"{device.policy}; XLA {'on' if device.jit_compile else 'off'}"
            f"; steps/execution {device.steps_per_execution}; seed {run.state.seed}",
            highlight=False,
        )
        run.console.print(f"run directory: {rich(run.dir.path)}", highlight=False)
        if run.initial_epoch >= settings.epochs:
            run.console.print(f"already trained {run.initial_epoch} epochs", highlight=False)

    def context(self) -> FitContext:
        """What the hooks see."""
        run = self.run
        return FitContext(
            self.keras,
            run.cfg,
            run.dir.path,
            run.console,
            run.initial_epoch,
            self.data,
            self.split[0],
            self.split[1],
            run.settings.batch_size,
            self.phase,
            self.test_outputs,
        )

    def phase(self, text: str) -> AbstractContextManager:
        """See :func:`phase`: on a terminal only."""
        return phase(self.run.console, self.request.live, text)

    def _callbacks(self, epoch_var: Any) -> list[Any]:
        """Ours, the config's, the hooks' (chief only) and the caller's, in that order."""
        keras, run, plan = self.keras, self.run, self.plan
        callbacks = [*make_callbacks(keras, run, self.request.live, epoch_var)]
        callbacks += keras_callbacks(keras, run)
        if plan.is_chief:
            for hook in self.request.hooks:
                for callback in hook.callbacks(self.context()):
                    if self.plain is not self.model:
                        callback = distribute.on_plain_copy(keras, callback, self.plain)
                    callbacks.append(callback)
        callbacks += self.request.extra_callbacks
        if plan.multi_worker:

            def restored(epoch: int) -> None:
                run.restored(epoch)
                if epoch:
                    run.console.print(
                        f"restored from the backup: continuing after epoch {epoch}",
                        highlight=False,
                    )

            callbacks += distribute.backup_callbacks(keras, run.dir.path, plan.strategy, restored)
        return callbacks

    def fit(self) -> None:
        """``model.fit`` with the callbacks; a non-finite loss ends the run as diverged.

        Raises:
            RunError: the loss diverged (the last good checkpoint is named).
        """
        run, plan, tf = self.run, self.plan, self.tf
        train_ds, val_ds = self.datasets
        self._announce()
        callbacks = self._callbacks(self.epoch_var)
        where_ops = (
            plan.scope()
            if plan.strategy is not None
            else tf.device("/GPU:0" if self.device.kind == "gpu" else "/CPU:0")
        )
        with where_ops:
            for phase in phase_plan(run.cfg, run.settings):
                if run.initial_epoch >= phase.end:
                    continue  # done in an earlier session
                start = max(phase.start, run.initial_epoch)
                run.phase = phase.index if phase.frozen is not None else None
                if phase.frozen is not None and start == phase.start:
                    self._enter_phase(phase)  # a resume inside a phase restored its own
                try:
                    if plan.strategy is None:  # a strategy's fit builds it itself
                        build_training_state(self.model, train_ds.element_spec)
                    self.model.fit(
                        train_ds,
                        validation_data=val_ds,
                        epochs=phase.end,
                        initial_epoch=0 if plan.multi_worker else start,
                        callbacks=callbacks,
                        verbose=0,
                        shuffle=False,
                    )
                except tf.errors.OpError as exc:  # a kernel failed: memory, a missing kernel
                    run.finish("failed")
                    raise RunError(self._kernel_failure(exc)) from None
                if run.diverged or len(run.history) < phase.end:
                    break  # diverged, or stopped early
        if run.diverged:
            epoch, step, loss = run.diverged
            run.finish("diverged")
            kept = (
                f"the last good checkpoint (epoch {len(run.history)}) is "
                f"{run.dir.file('last.keras')}"
                if run.history
                else "no epoch finished"
            )
            raise RunError(
                f"the loss became {loss} at epoch {epoch}, step {step}; training "
                f"stopped and {kept}. Lower the learning rate, or check the data "
                "scaling and the loss"
            )

    def _kernel_failure(self, exc: Any) -> str:
        """What to say when TensorFlow fails inside the training step: its error's kind,
        node and reason (:func:`op_error_parts`), where the run stands, what to try."""
        run, tf = self.run, self.tf
        node, reason = op_error_parts(getattr(exc, "message", "") or str(exc))
        where = f" at node {node}" if node else ""
        new_run = (
            "in a new run (--resume keeps the run's settings)" if run.state.epochs_done else "again"
        )
        if isinstance(exc, tf.errors.ResourceExhaustedError):
            hint = f"It ran out of memory: train {new_run} with a lower --batch-size"
        elif self.device.mixed_precision and any(w in reason for w in PRECISION_WORDS):
            hint = (
                f"It trained in {self.device.policy}: train {new_run} with "
                "--no-mixed-precision (float32, where every CPU and GPU kernel exists)"
            )
        else:
            hint = "Run with -v to see TensorFlow's own messages"
        return (
            f"TensorFlow failed during training{where} ({type(exc).__name__}: {reason}); "
            f"{run.saved_words()}. {hint}"
        )

    def _enter_phase(self, phase: Phase) -> None:
        """Freeze what the phase says, compile again (as Keras requires after a change
        to ``trainable``) at its learning rate, and say where it begins."""
        run, device = self.run, self.device
        run.phase = phase.index
        with self.plan.scope():
            weights = set_frozen(self.model, run.cfg, phase.frozen)
            lr = phase.learning_rate
            compile_model(
                self.model,
                run.cfg,
                lr=lr
                if lr is not None
                else make_schedule(self.keras, run.cfg, run.settings, run.steps),
                steps_per_execution=device.steps_per_execution,
                jit_compile=device.jit_compile,
            )
        rate = f"learning rate {lr:g}" if lr is not None else "the optimizer's learning rate"
        run.console.print(
            f"phase {phase.index}/{phase.count}: epochs {phase.start + 1}-{phase.end}, {rate}, "
            f"{weights:,} trainable weights, {len(phase.frozen)} layers frozen",
            highlight=False,
        )

    # -- finish ----------------------------------------------------------------------

    def finish(self) -> dict:
        """Evaluate the best model, write metrics.json and the curves, run the hooks."""
        run, model, plan = self.run, self.model, self.plan
        status = "completed" if len(run.history) >= run.settings.epochs else "early_stopped"
        digest = distribute.weights_digest(model)
        if run.best_weights is not None:  # model.keras, committed in this session
            model.set_weights(run.best_weights)
        elif run.state.best_epoch is not None and run.dir.file("model.keras").exists():
            with warnings.catch_warnings():  # a best model of an earlier phase: its optimizer
                warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
                model.load_weights(run.dir.file("model.keras"))
        metrics = _results(self, status)
        metrics["weights_sha256"] = digest
        if not plan.is_chief:  # the evaluation above is a collective: every worker takes part
            run.console.print(f"final weights sha256 {digest}", highlight=False)
            run.finish(status)
            distribute.finish(run.dir.path, plan.cluster)
            return metrics
        write_json(run.dir.file("metrics.json"), metrics)
        run.finish(status)
        curves(run.history, run.dir.file("curves.png"), run.cfg.name)
        if self.plain is not model:
            self.plain.set_weights(model.get_weights())
        for hook in self.request.hooks:
            hook.finish(self.context(), self.plain, metrics)
        if plan.multi_worker:
            run.console.print(f"final weights sha256 {digest}", highlight=False)
        accuracy = metrics["test_accuracy"]
        run.console.print(
            (
                f"test accuracy {accuracy:.4f}  test loss {metrics['test_loss']:.4f}  "
                if accuracy is not None
                else "no test images, so no test accuracy  "
            )
            + f"({metrics['epochs']} epochs, {metrics['wall_seconds']:.1f}s, "
            f"{metrics['images_per_second']:,.0f} img/s on {self.device.kind})",
            highlight=False,
        )
        run.console.print(f"saved to {rich(run.dir.path)}/", highlight=False)
        return metrics


@dataclass(frozen=True)
class Phase:
    """One phase of a run: epochs ``start`` (0-based) up to ``end``, its learning rate
    and its frozen layers (``None``: a run without phases, the model as built)."""

    index: int
    count: int
    start: int
    end: int
    learning_rate: float | None = None
    frozen: set[str] | None = None


def phase_plan(cfg: ModelConfig, settings: TrainConfig) -> list[Phase]:
    """The phases of ``train.phases`` in order (one phase without them).

    Raises:
        UsageError: ``--epochs`` differs from the phases' sum.
    """
    phases = settings.phases
    if not phases:
        return [Phase(1, 1, 0, settings.epochs)]
    total = sum(p.epochs for p in phases)
    if settings.epochs != total:
        raise UsageError(
            f"--epochs {settings.epochs}: train.phases adds up to {total} epochs; change "
            "the phases' epochs in the config instead"
        )
    plan, start = [], 0
    for i, p in enumerate(phases, 1):
        frozen = frozen_names(cfg, p.freeze)
        plan.append(Phase(i, len(phases), start, start + p.epochs, p.learning_rate, frozen))
        start += p.epochs
    return plan


# words in a TensorFlow error that point at a 16-bit type or a kernel missing for it
PRECISION_WORDS = ("bfloat16", "float16", "half", "No OpKernel", "primitive descriptor")


def op_error_parts(message: str) -> tuple[str, str]:
    """The node and the reason of a TensorFlow error raised inside a traced function.

    Its message is "Graph execution error:", "Detected at node NODE defined at...", the
    Python frames that made the node (or "<stack traces unavailable>"), the reason, then
    "[[{{node NODE}}]] [Op:...]"; an eager error is the reason on one line. The node is
    given from the model's name on (the part after the last ``StatefulPartitionedCall/``).

    Returns:
        ``(node, reason)``; the node is empty when the message names none, the reason is
        "no message" when it is empty. At most 300 characters of the reason.
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    detected = [ln.split()[3] for ln in lines if ln.startswith("Detected at node ")]
    node = detected[0].split("StatefulPartitionedCall/")[-1] if detected else ""
    said = [ln for ln in lines if not ln.startswith("[[")]  # the reason is the last of these
    reason = said[-1] if said else ""
    if reason.startswith(("Graph execution error", "Detected at node", "<stack", "File ")):
        reason = ""
    reason = reason.split(" [Op:")[0].strip()
    return node, reason[:300] or "no message"


def phase_at(plan: list[Phase], epoch: int) -> Phase:
    """The phase that epoch ``epoch`` (0-based, the next to run) belongs to."""
    return next((p for p in plan if epoch < p.end), plan[-1])


def _results(session: Session, status: str) -> dict:
    """Evaluate on the test set and gather what ``metrics.json`` records."""
    run, data, device, plan = session.run, session.data, session.device, session.plan
    keras, tf = session.keras, session.tf
    settings, history = run.settings, run.history
    x_tr, _, x_val, _ = session.split
    result = {"accuracy": None, "loss": None, "per_class": {}}
    if len(data.x_test):
        with session.phase(f"evaluating on {len(data.x_test):,} test images"):
            result, session.test_outputs = evaluate_model(
                session.model,
                data,
                settings.batch_size,
                session.one_hot,
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
