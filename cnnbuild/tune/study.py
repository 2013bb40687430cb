"""A study: its names and places, and the loop that runs trials until it holds enough.

Optuna runs it with a seeded TPE sampler, a MedianPruner fed by a Keras callback and RDB
storage (SQLite by default) that makes a study resumable and shared by several processes
or machines: each asks the storage for its next trial, so none runs twice.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shlex
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from cnnbuild.config import ModelConfig
from cnnbuild.errors import Interrupted, UsageError
from cnnbuild.schema.tune import TuneSection
from cnnbuild.search_space import Entry, entries, show_value, substitute, to_yaml
from cnnbuild.tune import results
from cnnbuild.tune.storage import (
    check_folder,
    make_folder,
    open_storage,
    read_back,
    requeue,
    shown,
    sqlite_url,
    storage_errors,
    trial_id,
)
from cnnbuild.tune.trial import counted, run_trial

if TYPE_CHECKING:
    import optuna

POLL_SECONDS = 2.0
# what a study imports (module, pip name): all in the `train` extra
PACKAGES = (("tensorflow", "tensorflow"), ("keras", "keras"), ("optuna", "optuna"))


@dataclass
class Study:
    """Where a study lives and what it searches."""

    config: Path
    cfg: ModelConfig
    name: str
    folder: Path
    storage: str
    entries: list[Entry]
    trials: int
    console: Console
    verbose: bool = False
    stopping: str | None = None
    durations: list[float] = field(default_factory=list)
    backend: Any = None  # the open optuna.storages.RDBStorage, while the study runs

    @property
    def tune(self) -> TuneSection:
        assert self.cfg.tune is not None
        return self.cfg.tune

    @property
    def where(self) -> str:
        """The storage URL for messages (password hidden)."""
        return shown(self.storage)

    def resume_command(self) -> str:
        return (
            f"cnnbuild tune {shlex.quote(str(self.config))} --study {shlex.quote(self.name)} "
            f"--storage {shlex.quote(self.storage)} --out {shlex.quote(str(self.folder))}"
        )

    def trial_dir(self, number: int) -> Path:
        """The trial's run directory; the run fills it alone (a run refuses a used folder),
        so the trial's config and log lie beside it: ``trial-0003.yaml``, ``.log``."""
        return self.folder / f"trial-{number:04d}"

    def trial_config(self, params: dict[str, Any], header: str = "") -> str:
        """The YAML of the config with ``params`` substituted and no ``tune:`` section."""
        return to_yaml(substitute(self.cfg.doc.data, self.entries, params), header)

    def short_names(self) -> dict[str, str]:
        """Space text -> its last key, where that is unambiguous (``filters``)."""
        lasts = [str(e.path[-1]) for e in self.entries]
        return {
            e.text: (last if lasts.count(last) == 1 else e.text)
            for e, last in zip(self.entries, lasts, strict=True)
        }

    def params_text(self, params: dict[str, Any]) -> str:
        short = self.short_names()
        return " ".join(f"{short[k]}={show_value(v)}" for k, v in params.items() if k in short)


def open_study(
    config: Path,
    *,
    study: str | None = None,
    storage: str | None = None,
    out: Path | None = None,
    trials: int | None = None,
    console: Console | None = None,
    verbose: bool = False,
) -> Study:
    """Load and check a config with a ``tune:`` section; settle names and places.

    Raises:
        ConfigError: the config (or its space) does not validate.
        UsageError: no ``tune:`` section, or a bad option.
        WriteError: ``out`` is a file, or lies under one.
    """
    from cnnbuild.validate import load_config

    cfg = load_config(config)
    if cfg.tune is None:
        raise UsageError(
            f"{config}: no tune: section; add one with a search space, e.g.\n"
            "tune:\n  trials: 20\n  space:\n"
            "    compile.optimizer.adam.learning_rate: {float: [1.0e-4, 1.0e-2], log: true}"
        )
    name = study or cfg.name
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,100}", name) or name.startswith("."):
        raise UsageError(f"--study {name!r}: use letters, digits, '_', '.', '-'")
    folder = out or Path("runs") / "tune" / name
    if trials is not None and trials < 1:
        raise UsageError(f"--trials {trials}: expected an integer >= 1")
    check_folder(folder)
    return Study(
        config=config,
        cfg=cfg,
        name=name,
        folder=folder,
        storage=storage or sqlite_url(folder / "study.db"),
        entries=entries(cfg),
        trials=trials or cfg.tune.trials,
        console=console or Console(),
        verbose=verbose,
    )


def require() -> None:
    """Refuse early, naming the packages, when TensorFlow, Keras or Optuna is missing.

    Raises:
        UsageError: with the ``pip install`` line that provides them (the light install).
    """
    missing = [pip for module, pip in PACKAGES if importlib.util.find_spec(module) is None]
    if missing:
        raise UsageError(
            f"tune needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed; install "
            f"{'it' if len(missing) == 1 else 'them'} with: pip install 'cnnbuild[train]'"
        )


def _optuna() -> Any:
    import warnings

    require()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # our own thread records heartbeats (see trial.Heartbeat), which Optuna cannot tell
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    return optuna


def run_study(s: Study) -> dict:
    """Run trials until the study holds ``s.trials`` of them; write the outputs.

    Several processes may run this on one storage: each asks Optuna for the next trial,
    so none is run twice. Ctrl-C or SIGTERM stops after recording the current trial as
    lost (it runs again on resume).

    Returns:
        The summary: best trial, value, params, counts and output paths.

    Raises:
        RunError: interrupted, no trial completed, or the storage failed (unreachable,
            locked, damaged).
        UsageError: the storage URL is wrong or holds a different study.
        WriteError: an output cannot be written.
    """
    optuna = _optuna()
    s.backend = open_storage(s.storage, requeue)
    study = _load(optuna, s)
    make_folder(s.folder)
    handlers = _catch_signals(s)
    try:
        with storage_errors(s.storage):
            _loop(study, s)
    finally:
        for signum, previous in handlers.items():
            signal.signal(signum, previous)
    with storage_errors(s.storage):
        return results.finish(study, s)


def _load(optuna: Any, s: Study) -> optuna.Study:
    """Create the study, or load it and check that it is the same search."""
    direction = "maximize" if s.tune.maximize else "minimize"

    def load() -> optuna.Study:
        study = optuna.create_study(
            storage=s.backend,
            study_name=s.name,
            direction=direction,
            load_if_exists=True,
            pruner=_pruner(optuna, s.tune),
        )
        study.get_trials(deepcopy=False)  # every stored trial reads back
        return study

    study = read_back(s.storage, s.name, load)
    if study.direction.name.lower() != direction:
        raise UsageError(
            f"study {s.name!r} in {s.where} was created to {study.direction.name.lower()} "
            f"its metric; {s.tune.metric} is to {direction}. Use another --study name"
        )
    with storage_errors(s.storage):
        _check_space(study, s)
    return study


def _catch_signals(s: Study) -> dict[int, Any]:
    """Ctrl-C and SIGTERM stop the study: the trainer saves its epoch, the trial is
    recorded as lost (to run again on resume), and the resume command is printed."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        s.stopping = s.stopping or ("SIGTERM" if signum == signal.SIGTERM else "Ctrl-C")
        raise KeyboardInterrupt

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _pruner(optuna: Any, tune: TuneSection) -> optuna.pruners.BasePruner:
    p = tune.pruning
    if not p.enabled:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs
    )


def _sampler(s: Study, number: int) -> optuna.samplers.BaseSampler:
    """TPE, seeded by the study seed and the trial number: a study is repeatable, and
    workers sharing it never draw the same starting points."""
    import optuna

    seed = s.tune.seed if s.tune.seed is not None else (s.cfg.train.seed or 0)
    # hashed: Mersenne Twister seeded with neighbouring integers starts with similar draws
    mixed = int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "big")
    return optuna.samplers.TPESampler(seed=mixed, n_startup_trials=max(2, min(10, s.trials // 3)))


def _check_space(study: optuna.Study, s: Study) -> None:
    space = sorted(e.text for e in s.entries)
    recorded = study.user_attrs.get("space")
    if recorded is None:
        study.set_user_attr("space", space)
        study.set_user_attr("metric", s.tune.metric)
    elif recorded != space:
        raise UsageError(
            f"study {s.name!r} in {s.where} searches {', '.join(recorded)}; this config "
            f"searches {', '.join(space)}. Use another --study name for a different space"
        )


def _loop(study: optuna.Study, s: Study) -> None:
    from optuna.trial import TrialState

    waiting_said = False
    while True:
        _reap(study, s)
        budget = counted(study)
        queued = any(t.state == TrialState.WAITING for t in budget)
        if len(budget) >= s.trials and not queued:
            others = [t for t in budget if t.state == TrialState.RUNNING]
            if not others:
                return
            if not waiting_said:
                s.console.print(
                    f"waiting for {len(others)} trial(s) running in other processes",
                    highlight=False,
                )
                waiting_said = True
            _sleep(s)
            continue
        waiting_said = False
        trial = _next_trial(study, s)
        if trial is None:
            continue
        study.sampler = _sampler(s, trial.number)
        run_trial(study, trial, s)
        if s.stopping:
            done = len([t for t in counted(study) if t.state.is_finished()])
            raise Interrupted(
                f"interrupted ({s.stopping}); {done} of {s.trials} trials are done and "
                f"stored in {s.where}. Resume with:\n  {s.resume_command()}"
            )


def _next_trial(study: optuna.Study, s: Study) -> optuna.Trial | None:
    """Ask for a trial; ``None`` when another worker took the last slot at the same moment
    (the trial is given back unrun, marked surplus)."""
    from optuna.trial import TrialState

    trial = study.ask()
    place = [t.number for t in sorted(counted(study), key=lambda t: t.number)].index(trial.number)
    if place < s.trials:
        return trial
    trial.set_user_attr("surplus", True)
    study.tell(trial, state=TrialState.FAIL)
    return None


def _reap(study: optuna.Study, s: Study) -> None:
    """Fail (and queue again) running trials whose process is gone: on this host at once
    (its PID no longer exists), elsewhere when the heartbeat stops."""
    import optuna

    host = socket.gethostname()
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in running:
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or not isinstance(pid, int) or _alive(pid):
            continue
        stored = trial_id(s.backend, s.name, t.number)
        gone = f"its process (pid {pid} on {host}) is gone"
        try:
            s.backend.set_trial_user_attr(stored, "lost", gone)
            if s.backend.set_trial_state_values(stored, state=optuna.trial.TrialState.FAIL):
                requeue(study, t)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process got there first
    optuna.storages.fail_stale_trials(study)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sleep(s: Study) -> None:
    try:
        time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        s.stopping = s.stopping or "Ctrl-C"
        raise Interrupted(
            f"interrupted ({s.stopping}). Resume with:\n  {s.resume_command()}"
        ) from None
