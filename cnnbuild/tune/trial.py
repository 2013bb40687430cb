"""One trial: suggest its values, train it as an ordinary run, report each epoch, record it.

A trial's run directory is ``STUDY/trial-0003/``; its config and log lie beside it
(``trial-0003.yaml``, ``trial-0003.log``), since a run fills its folder alone. While it
trains, a thread records its heartbeat, so a worker that dies is noticed by the others.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from cnnbuild.errors import CnnbuildError, Interrupted
from cnnbuild.io import os_errors, write_text
from cnnbuild.search_space import Entry
from cnnbuild.tune.storage import HEARTBEAT_SECONDS, make_folder, requeue, trial_id

if TYPE_CHECKING:
    import optuna

    from cnnbuild.tune.study import Study


def suggest(trial: optuna.Trial, entry: Entry) -> Any:
    """Ask Optuna for this entry's value in ``trial``."""
    sp = entry.space
    if sp.choice is not None:
        return trial.suggest_categorical(entry.text, sp.choice)
    if sp.int_range is not None:
        low, high = sp.int_range
        return trial.suggest_int(entry.text, low, high, step=sp.step or 1, log=sp.log)
    low, high = sp.float_range
    return trial.suggest_float(entry.text, float(low), float(high), step=sp.step, log=sp.log)


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that use up the budget: finished (failures with a reason included),
    running and queued ones; lost and surplus trials do not."""
    from optuna.trial import TrialState

    budget = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in budget or (t.state == TrialState.FAIL and "reason" in t.user_attrs)
    ]


def run_trial(study: optuna.Study, trial: optuna.Trial, s: Study) -> None:
    """Train one trial and tell Optuna how it ended; print its line of progress.

    Stopped by Ctrl-C or SIGTERM (``s.stopping`` is set), the trial is recorded as lost
    and queued to run again with the same values.
    """
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    run_dir = s.trial_dir(trial.number)
    trial.set_user_attr("run_dir", str(run_dir))
    params = {e.text: suggest(trial, e) for e in s.entries}
    s.console.print(f"trial {trial.number} start  {s.params_text(params)}", highlight=False)
    watch = Watch(trial, s.tune.metric, s.tune.maximize)
    t0 = time.perf_counter()
    with Heartbeat(s.backend, trial_id(s.backend, s.name, trial.number)):
        state, reason, metrics = _train(study, trial, s, run_dir, params, watch)
    seconds = time.perf_counter() - t0
    trial.set_user_attr("seconds", round(seconds, 2))
    if s.stopping:
        from optuna.trial import TrialState

        trial.set_user_attr("lost", f"interrupted by {s.stopping}")
        frozen = study.tell(trial, state=TrialState.FAIL)
        requeue(study, frozen)
        s.console.print(f"trial {trial.number} interrupted ({s.stopping}); it runs again on resume")
        return
    state, reason = _record(study, trial, state, reason, metrics, watch)
    s.durations.append(seconds)
    s.console.print(_progress(study, s, trial.number, state, reason, watch), highlight=False)


def _train(
    study: optuna.Study,
    trial: optuna.Trial,
    s: Study,
    run_dir: Path,
    params: dict[str, Any],
    watch: Watch,
) -> tuple[str | None, str, dict]:
    """Write the trial's config and train it; returns ``(state, reason, metrics)``, the
    state ``None`` when the epochs decide it (see :meth:`Watch.outcome`)."""
    from optuna.trial import TrialState

    from cnnbuild.insight.hooks import training_hooks
    from cnnbuild.train import train

    try:
        make_folder(s.folder)
        config = run_dir.with_suffix(".yaml")
        write_text(config, s.trial_config(params))
        seed = s.cfg.train.seed if s.cfg.train.seed is not None else (s.tune.seed or 0)
        overrides = {"epochs": s.tune.epochs, "limit": s.tune.limit, "seed": seed}
        with os_errors(), run_dir.with_suffix(".log").open("w", encoding="utf-8") as log:
            metrics = train(
                config,
                overrides,
                out=run_dir,
                console=Console(file=log, highlight=False, width=160),
                live=False,
                verbose=s.verbose,
                extra_callbacks=[watch.callback()],
                hooks=training_hooks(),
            )
        return None, "", metrics
    except KeyboardInterrupt:
        s.stopping = s.stopping or "Ctrl-C"
    except Interrupted as exc:  # the trainer's own handler took the signal, saved, stopped
        s.stopping = s.stopping or _signal_name(exc)
    except CnnbuildError as exc:
        if s.stopping is None:
            return "fail", _reason(exc), {}
    except Exception as exc:
        if s.stopping is None and not _tf_error(exc):
            trial.set_user_attr("reason", f"{type(exc).__name__}: {exc}")
            study.tell(trial, state=TrialState.FAIL)
            raise
        return "fail", f"{type(exc).__name__}: {exc}".splitlines()[0], {}
    finally:
        _clear_session()
    return None, "", {}


def _record(
    study: optuna.Study,
    trial: optuna.Trial,
    state: str | None,
    reason: str,
    metrics: dict,
    watch: Watch,
) -> tuple[str, str]:
    """Tell Optuna how the trial ended; returns its state and the reason of a failure."""
    from optuna.trial import TrialState

    if state is None:
        state, reason = watch.outcome()
    trial.set_user_attr("epochs", len(watch.values))
    if metrics:
        trial.set_user_attr("test_accuracy", metrics.get("test_accuracy"))
    if state == "fail":
        trial.set_user_attr("reason", reason)
        study.tell(trial, state=TrialState.FAIL)
    elif state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, watch.best)
    return state, reason


def _signal_name(exc: Interrupted) -> str:
    """The signal that stopped the trainer: its :class:`StopSignal` is the context of the
    :class:`Interrupted` it raised."""
    from cnnbuild.train.rundir import StopSignal

    stop = exc.__context__
    if isinstance(stop, StopSignal) and stop.signum == signal.SIGTERM:
        return "SIGTERM"
    return "Ctrl-C"


def _reason(exc: CnnbuildError) -> str:
    errors = [f for f in exc.findings if f.severity == "error"]
    if errors:
        return f"{exc.message}: {errors[0].format()}"
    return exc.message.splitlines()[0] if exc.message else type(exc).__name__


def _tf_error(exc: Exception) -> bool:
    """TensorFlow's runtime errors (out of memory and the like) fail a trial, not a study."""
    return type(exc).__module__.startswith(("tensorflow", "keras"))


def _clear_session() -> None:
    """Free the last trial's graph; TensorFlow's retracing notes across trials are noise."""
    from cnnbuild.builder import keras_module

    keras_module().backend.clear_session()
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")


class Heartbeat:
    """Record the trial's heartbeat every few seconds while it runs."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except SQLAlchemyError:
                return  # the trial's own next write meets the same fault and reports it
            if self.stop.wait(HEARTBEAT_SECONDS):
                return

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


class Watch:
    """The metric per epoch, reported to Optuna; stops a trial the pruner condemns."""

    def __init__(self, trial: optuna.Trial, metric: str, maximize: bool) -> None:
        self.trial, self.metric, self.maximize = trial, metric, maximize
        self.values: list[float] = []
        self.pruned_at: int | None = None
        self.missing: list[str] | None = None

    def callback(self) -> Any:
        """A Keras callback that reports each epoch's metric and stops the run when told."""
        from cnnbuild.builder import keras_module

        keras = keras_module()
        watch = self

        class Report(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                logs = logs or {}
                if watch.metric not in logs:
                    watch.missing = sorted(logs)
                    self.model.stop_training = True
                    return
                value = float(logs[watch.metric])
                watch.values.append(value)
                if not math.isfinite(value):
                    self.model.stop_training = True
                    return
                watch.trial.report(value, epoch)  # step 0 is the first epoch
                if watch.trial.should_prune():
                    watch.pruned_at = epoch + 1
                    self.model.stop_training = True

        return Report()

    @property
    def best(self) -> float:
        finite = [v for v in self.values if math.isfinite(v)]
        return max(finite) if self.maximize else min(finite)

    def outcome(self) -> tuple[str, str]:
        """``(state, reason)`` from the epochs seen: complete, pruned or fail."""
        if self.missing is not None:
            return "fail", (
                f"the epoch logs have no {self.metric} (they hold {', '.join(self.missing)})"
            )
        if self.values and not math.isfinite(self.values[-1]):
            return "fail", f"{self.metric} became {self.values[-1]} at epoch {len(self.values)}"
        if not self.values:
            return "fail", "no epoch finished"
        if self.pruned_at is not None:
            return "pruned", ""
        return "complete", ""


def _progress(
    study: optuna.Study, s: Study, number: int, state: str, reason: str, watch: Watch
) -> str:
    m = s.tune.metric
    finished = [t for t in counted(study) if t.state.is_finished()]
    left = max(s.trials - len(finished), 0)
    mean = sum(s.durations) / len(s.durations)
    eta = duration(left * mean) if left else "0s"
    if state == "complete":
        what = f"{m} {watch.best:.4f}"
    elif state == "pruned":
        what = f"pruned at epoch {watch.pruned_at} ({m} {watch.values[-1]:.4f})"
    else:
        what = f"failed: {reason}"
    try:
        best = study.best_trial
        best_text = f"best {best.value:.4f} (trial {best.number})"
    except ValueError:
        best_text = "best -"
    return (
        f"trial {number} {state if state != 'complete' else 'done'}  {what}  {best_text}  "
        f"{s.durations[-1]:.1f}s  {len(finished)}/{s.trials} done  ETA {eta}"
    )


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    return f"{seconds // 60}m{seconds % 60:02d}s"
