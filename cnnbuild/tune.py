"""Hyperparameter search over the YAML itself: the ``tune:`` section and ``cnnbuild tune``.

A space entry names a place in the config with the same path syntax findings use:
``layers[0].Conv2D.filters``, ``layers[2].Residual.main[0].Conv2D.kernel_size``,
``blocks.stage.params.width`` (a block parameter's default), ``layers[3].stage.width``
(a block use's argument), ``compile.optimizer.adam.learning_rate`` and
``train.batch_size``. A bare name is addressed as its mapping form (``optimizer: adam``
reaches ``compile.optimizer.adam.learning_rate``; ``- BatchNormalization`` reaches
``layers[4].BatchNormalization.momentum``).

The static part (:func:`space_findings`) never imports TensorFlow or Optuna: it checks
the paths, then substitutes every corner of the space into the YAML tree and runs the
normal static check, so a value that breaks the model is found before any training.

The study (:func:`run_study`) uses Optuna: a seeded TPE sampler, a MedianPruner fed by a
Keras callback, RDB storage (SQLite by default) that makes a study resumable and shared
by several processes or machines. Each trial is an ordinary run directory.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import importlib.util
import io
import itertools
import math
import os
import random
import re
import shlex
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from cnnbuild.config import ModelConfig, from_document
from cnnbuild.errors import CnnbuildError, Finding, Interrupted, RunError, UsageError
from cnnbuild.io import write_text
from cnnbuild.schema.tune import PATH_RE, SpaceEntry, TuneSection
from cnnbuild.source import Document, PathKey, format_path

MAX_CORNERS = 64
MAX_CORNER_FINDINGS = 3
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 60
POLL_SECONDS = 2.0
STORAGE_ATTEMPTS = 5
# what workers opening a new database together see when another one created it first
CREATION_RACE = ("already exists", "UNIQUE constraint failed", "Duplicate entry", "locked")
SPACE = ("tune", "space")
SECTIONS = ("compile", "train", "lint")
UNKNOWN = ("unknown argument", "unknown parameter", "unknown key")
# what a study imports (module, pip name): all in the `train` extra
PACKAGES = (("tensorflow", "tensorflow"), ("keras", "keras"), ("optuna", "optuna"))

# -- paths ------------------------------------------------------------------------------


class PathError(ValueError):
    """A space path that does not lead to a value of the config."""


def parse_path(text: str) -> PathKey:
    """``"layers[0].Conv2D.filters"`` -> ``("layers", 0, "Conv2D", "filters")``.

    Raises:
        PathError: the text is not a path.
    """
    if not isinstance(text, str) or not PATH_RE.fullmatch(text):
        raise PathError(
            f"{text!r} is not a config path; write it as findings show paths, e.g. "
            "layers[0].Conv2D.filters, blocks.stage.params.width, "
            "compile.optimizer.adam.learning_rate or train.batch_size"
        )
    parts: list[str | int] = []
    for name, index in re.findall(r"\.?([A-Za-z_$][A-Za-z0-9_]*)|\[([0-9]+)\]", text):
        parts.append(int(index) if index else name)
    return tuple(parts)


def _close(word: str, options: list) -> str:
    from difflib import get_close_matches

    close = get_close_matches(word, [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _section_keys(section: Any) -> list[str]:
    from cnnbuild.schema.sections import CompileConfig, LintConfig, TrainConfig

    models = {"compile": CompileConfig, "train": TrainConfig, "lint": LintConfig}
    return list(models[section].model_fields) if section in models else []


def _shown(steps: PathKey) -> str:
    return format_path(steps) or "the config"


def assign(data: Any, path: PathKey, value: Any) -> Any:
    """A deep copy of ``data`` with ``value`` written at ``path``.

    A bare name (``adam``, ``- Flatten``) becomes its mapping form on the way, ``null``
    arguments become a mapping, and a block's list-form ``params`` is searched by name.
    Only the last key may be new (an argument left at its default); a missing section
    in the middle is refused, so a search never switches a feature on by itself.

    Raises:
        PathError: the path does not lead into the config.
    """
    root = copy.deepcopy(data)
    holder: Any = {"": root}
    key: Any = ""
    for depth, step in enumerate(path):
        last = depth == len(path) - 1
        node = holder[key]
        here = _shown(path[:depth])
        if isinstance(node, str) and node == step and not last:
            node = holder[key] = {step: {}}
        if node is None and isinstance(step, str):
            node = holder[key] = {}
        if isinstance(node, dict):
            if step not in node and depth == 0 and step in SECTIONS and not last:
                node[step] = {}  # an absent section: its defaults apply, now written out
            if step not in node:
                known = _section_keys(path[0]) if depth == 1 else []
                if not last and step in known:
                    raise PathError(
                        f"{here}.{step} is not written; write it first to search inside it"
                    )
                if not last:
                    close = _close(str(step), list(node) + known)
                    raise PathError(
                        f"{here} has no key {step!r}"
                        + (close or (f"; its keys are {', '.join(map(str, node))}" if node else ""))
                    )
                if path[:1] == ("blocks",) and len(path) >= 3 and path[2] == "params":
                    raise PathError(f"block {path[1]!r} has no parameter {step!r}")
                if depth == 0:
                    raise PathError(f"the config has no {step!r} section")
        elif isinstance(node, list) and isinstance(step, int):
            if step >= len(node):
                raise PathError(f"{here} has {len(node)} entries; index {step} is past its end")
        elif isinstance(node, list) and isinstance(step, str):
            # a block's `params: [filters, {strides: 1}]`: find the entry by name
            for i, entry in enumerate(node):
                if entry == step or (isinstance(entry, dict) and list(entry) == [step]):
                    if not last:
                        raise PathError(f"{here}.{step} is a parameter value; nothing is inside")
                    node[i] = {step: value}
                    return root
            names = [e if isinstance(e, str) else next(iter(e), "?") for e in node]
            raise PathError(f"{here} has no entry {step!r}{_close(step, names)}")
        else:
            what = "a list" if isinstance(node, list) else repr(node)
            want = f"[{step}]" if isinstance(step, int) else f".{step}"
            raise PathError(f"{here} is {what}; {want} cannot follow it")
        if last:
            node[step] = value
            return root
        holder, key = node, step
    raise PathError("an empty path names nothing")


# -- the static check -------------------------------------------------------------------


@dataclass
class Entry:
    """One space entry: its text, parsed path and values."""

    text: str
    path: PathKey
    space: SpaceEntry


def _entries(cfg: ModelConfig, findings: list[Finding]) -> list[Entry]:
    doc = cfg.doc
    out = []
    assert cfg.tune is not None
    for text, entry in cfg.tune.space.items():
        where = (*SPACE, text)
        try:
            path = parse_path(text)
            assign(doc.data, path, entry.corners()[0])
        except PathError as exc:
            findings.append(
                doc.finding(where, f"unknown path: {exc}", prefer="key", path_text=_label(text))
            )
            continue
        out.append(Entry(text, path, entry))
    return out


def _label(text: str) -> str:
    return f"tune.space.{text}"


def _errors_with(doc: Document, data: Any) -> list[Finding]:
    """Errors of the normal static check (schema, expansion, shapes, lint) on ``data``."""
    from cnnbuild.checks import lint
    from cnnbuild.trace import trace

    trial = Document(doc.file, data, doc.keys, doc.values, [], doc.lines)
    cfg = from_document(trial)
    if cfg is None:
        return list(trial.findings)
    found = list(cfg.findings)
    if cfg.input_shape[2] is not None and not any(f.severity == "error" for f in found):
        tr = trace(cfg)
        found += tr.findings + lint(tr, frozenset(cfg.lint.ignore))
    return [f for f in found if f.severity == "error"]


def _without_tune(data: dict) -> dict:
    return {k: v for k, v in data.items() if k != "tune"}


def _why(f: Finding) -> str:
    where = f" (line {f.line})" if f.line else ""
    return f"{f.path}{where}: {f.message}" if f.path else f.message + where


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def space_findings(cfg: ModelConfig) -> list[Finding]:
    """Check ``cfg.tune``: paths exist, and every corner of the space is a valid model.

    Each problem points at the space entry (or the value in it) that causes it. Without
    TensorFlow: the corners go through the same static check as ``validate``.

    Returns:
        Findings (errors), empty when the space is sound.
    """
    doc = cfg.doc
    findings: list[Finding] = []
    if cfg.tune is None or any(
        f.severity == "error" and f.path.startswith("tune") for f in cfg.findings
    ):
        return findings  # the section itself did not validate: already reported
    if not cfg.tune.space:
        findings.append(
            doc.finding(
                ("tune",),
                "tune.space is empty: give at least one path to search, e.g. "
                "compile.optimizer.adam.learning_rate: {float: [1.0e-4, 1.0e-2], log: true}",
                prefer="key",
            )
        )
        return findings
    findings += _metric_findings(cfg)
    entries = _entries(cfg, findings)
    if not entries or any(f.severity == "error" for f in cfg.findings):
        return findings  # corners of a config that is already wrong say nothing new
    base = _without_tune(doc.data)
    bad: dict[str, set[int]] = {}
    for e in entries:
        bad[e.text] = _entry_findings(doc, base, e, findings)
    if len(entries) < 2:
        return findings
    options = [
        [(i, v) for i, v in enumerate(e.space.corners()) if i not in bad[e.text]] for e in entries
    ]
    reported = 0
    for combo in _combinations(options):
        data = base
        for e, (_, value) in zip(entries, combo, strict=True):
            data = assign(data, e.path, value)
        errors = _errors_with(doc, data)
        if errors:
            setting = ", ".join(
                f"{e.text} = {_show(v)}" for e, (_, v) in zip(entries, combo, strict=True)
            )
            findings.append(
                doc.finding(
                    SPACE,
                    f"the corner {setting} makes the model invalid: {_why(errors[0])}",
                    prefer="key",
                    path_text="tune.space",
                    hint="narrow the ranges so every combination is a valid model",
                )
            )
            reported += 1
            if reported >= MAX_CORNER_FINDINGS:
                break
    return findings


def _combinations(options: list[list]) -> list[tuple]:
    """Every combination of the entries' corners, or MAX_CORNERS of them drawn at random
    (seeded) when there are more."""
    total = math.prod(map(len, options))
    if total <= MAX_CORNERS:
        return list(itertools.product(*options))
    rng = random.Random(0)
    drawn = {tuple(rng.choice(o) for o in options) for _ in range(MAX_CORNERS)}
    return sorted(drawn, key=repr)


def _entry_findings(doc: Document, base: dict, e: Entry, findings: list[Finding]) -> set[int]:
    """Each corner of one entry, the others as written; returns the bad corners' indexes."""
    kind = e.space.kind
    where = (*SPACE, e.text)
    corners = e.space.corners()
    results = [_errors_with(doc, assign(base, e.path, value)) for value in corners]
    first = results[0][0] if results[0] else None
    target = format_path(e.path)
    if first is not None and first.path == target and first.message.startswith(UNKNOWN):
        findings.append(
            doc.finding(
                where, f"unknown path: {first.message}", prefer="key", path_text=_label(e.text)
            )
        )
        return set(range(len(corners)))
    if kind == "float" and first is not None and "expected an integer" in first.message:
        low, high = e.space.float_range
        findings.append(
            doc.finding(
                (*where, "float"),
                f"a float range samples values such as {corners[0]!r}, but "
                f"{first.path} (line {first.line}) takes an integer",
                prefer="key",
                path_text=_label(e.text),
                hint=f"use int: [{math.ceil(low)}, {math.floor(high)}]",
            )
        )
        return set(range(len(corners)))
    bad: set[int] = set()
    for i, (value, errors) in enumerate(zip(corners, results, strict=True)):
        if not errors:
            continue
        bad.add(i)
        what = (
            f"choice {_show(value)}"
            if kind == "choice"
            else f"the {'lower' if i == 0 else 'upper'} bound {_show(value)}"
        )
        findings.append(
            doc.finding(
                (*where, kind, i),
                f"{what} makes the model invalid: {_why(errors[0])}",
                path_text=_label(e.text),
            )
        )
    return bad


def _metric_findings(cfg: ModelConfig) -> list[Finding]:
    assert cfg.tune is not None
    names = ["loss", *cfg.compile.metrics]
    known = names + [f"val_{n}" for n in names]
    metric = cfg.tune.metric
    if metric in known:
        if metric.startswith("val_") and cfg.train.validation_split == 0:
            return [
                cfg.doc.finding(
                    ("tune", "metric"),
                    f"metric {metric} needs a validation set, but train.validation_split is 0",
                )
            ]
        return []
    return [
        cfg.doc.finding(
            ("tune", "metric"),
            f"unknown metric {metric!r}{_close(metric, known)}; the epoch logs hold "
            + ", ".join(known),
        )
    ]


# -- the study --------------------------------------------------------------------------


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

    @property
    def tune(self) -> TuneSection:
        assert self.cfg.tune is not None
        return self.cfg.tune

    def resume_command(self) -> str:
        return (
            f"cnnbuild tune {shlex.quote(str(self.config))} --study {shlex.quote(self.name)} "
            f"--storage {shlex.quote(self.storage)} --out {shlex.quote(str(self.folder))}"
        )


def _entries_of(cfg: ModelConfig) -> list[Entry]:
    assert cfg.tune is not None
    return [Entry(t, parse_path(t), e) for t, e in cfg.tune.space.items()]


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


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
    return Study(
        config=config,
        cfg=cfg,
        name=name,
        folder=folder,
        storage=storage or _sqlite_url(folder / "study.db"),
        entries=_entries_of(cfg),
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
    # our own thread records heartbeats (see _Heartbeat), which Optuna cannot tell
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    return optuna


def _storage(optuna: Any, url: str) -> Any:
    """Optuna's RDB storage with heartbeats, so a dead worker's trial is noticed."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        kwargs = {"connect_args": {"timeout": 60}}
        db = url.removeprefix("sqlite:///")
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
    attempt = 1
    while True:
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=_retry,
            )
        except ImportError as exc:
            raise UsageError(
                f"--storage {url}: the database driver is not installed ({exc}); "
                "for PostgreSQL: pip install psycopg2-binary, for MySQL: pip install pymysql"
            ) from None
        except Exception as exc:  # SQLAlchemy raises many types for a bad URL or server
            # workers starting together race to create the tables: the loser tries again
            if attempt == STORAGE_ATTEMPTS or not any(m in str(exc) for m in CREATION_RACE):
                first = str(exc).strip().splitlines()[0]
                raise UsageError(
                    f"--storage {url}: cannot open the study storage: {first}"
                ) from None
        attempt += 1
        time.sleep(0.5 + random.random())


def _retry(study: Any, trial: Any) -> None:
    """A trial lost with its process (or interrupted) runs again with the same params."""
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def _trial_dir(s: Study, number: int) -> Path:
    """The trial's run directory; the run fills it alone (a run refuses a used folder), so
    the trial's config and log lie beside it: ``trial-0003.yaml``, ``trial-0003.log``."""
    return s.folder / f"trial-{number:04d}"


def _states(optuna: Any) -> tuple:
    st = optuna.trial.TrialState
    return st.COMPLETE, st.PRUNED, st.FAIL, st.RUNNING, st.WAITING


def _counted(optuna: Any, study: Any) -> list[Any]:
    """The trials that use up the budget: finished (failures with a reason included),
    running and queued ones; lost and surplus trials do not."""
    complete, pruned, fail, running, waiting = _states(optuna)
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in (complete, pruned, running, waiting)
        or (t.state == fail and "reason" in t.user_attrs)
    ]


def _reap(optuna: Any, study: Any) -> None:
    """Fail (and queue again) running trials whose process is gone: on this host at once
    (its PID no longer exists), elsewhere when the heartbeat stops."""
    host = socket.gethostname()
    _, _, fail, running, _ = _states(optuna)
    for t in study.get_trials(deepcopy=False, states=(running,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or not isinstance(pid, int) or _alive(pid):
            continue
        try:
            gone = f"its process (pid {pid} on {host}) is gone"
            study._storage.set_trial_user_attr(t._trial_id, "lost", gone)
            if study._storage.set_trial_state_values(t._trial_id, state=fail):
                _retry(study, t)
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


class _Heartbeat:
    """Record the trial's heartbeat every few seconds while it runs."""

    def __init__(self, storage: Any, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            self.storage.record_heartbeat(self.trial_id)
            if self.stop.wait(HEARTBEAT_SECONDS):
                return

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


def run_study(s: Study) -> dict:
    """Run trials until the study holds ``s.trials`` of them; write the outputs.

    Several processes may run this on one storage: each asks Optuna for the next trial,
    so none is run twice. Ctrl-C or SIGTERM stops after recording the current trial as
    lost (it runs again on resume).

    Returns:
        The summary: best trial, value, params, counts and output paths.

    Raises:
        RunError: interrupted, or no trial completed.
        UsageError: the storage cannot be opened or holds a different study.
    """
    optuna = _optuna()
    storage = _storage(optuna, s.storage)
    direction = "maximize" if s.tune.maximize else "minimize"
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=s.name,
            direction=direction,
            load_if_exists=True,
            pruner=_pruner(optuna, s.tune),
        )
    except Exception as exc:  # SQLAlchemy and Optuna raise many types for a bad storage
        raise UsageError(f"--storage {s.storage}: cannot open study {s.name!r}: {exc}") from None
    if study.direction.name.lower() != direction:
        raise UsageError(
            f"study {s.name!r} in {s.storage} was created to {study.direction.name.lower()} "
            f"its metric; {s.tune.metric} is to {direction}. Use another --study name"
        )
    _check_space(study, s)
    s.folder.mkdir(parents=True, exist_ok=True)
    handlers = _catch_signals(s)
    try:
        _loop(optuna, study, s)
    finally:
        for signum, previous in handlers.items():
            signal.signal(signum, previous)
    return finish(optuna, study, s)


def _catch_signals(s: Study) -> dict[int, Any]:
    """Ctrl-C and SIGTERM stop the study: the trainer saves its epoch, the trial is
    recorded as lost (to run again on resume), and the resume command is printed."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        s.stopping = s.stopping or ("SIGTERM" if signum == signal.SIGTERM else "Ctrl-C")
        raise KeyboardInterrupt

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _pruner(optuna: Any, tune: TuneSection) -> Any:
    p = tune.pruning
    if not p.enabled:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs
    )


def _sampler(optuna: Any, s: Study, number: int) -> Any:
    """TPE, seeded by the study seed and the trial number: a study is repeatable, and
    workers sharing it never draw the same starting points."""
    seed = s.tune.seed if s.tune.seed is not None else (s.cfg.train.seed or 0)
    # hashed: Mersenne Twister seeded with neighbouring integers starts with similar draws
    mixed = int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "big")
    return optuna.samplers.TPESampler(seed=mixed, n_startup_trials=max(2, min(10, s.trials // 3)))


def _check_space(study: Any, s: Study) -> None:
    space = sorted(e.text for e in s.entries)
    recorded = study.user_attrs.get("space")
    if recorded is None:
        study.set_user_attr("space", space)
        study.set_user_attr("metric", s.tune.metric)
    elif recorded != space:
        raise UsageError(
            f"study {s.name!r} in {s.storage} searches {', '.join(recorded)}; this config "
            f"searches {', '.join(space)}. Use another --study name for a different space"
        )


def _loop(optuna: Any, study: Any, s: Study) -> None:
    waiting_said = False
    while True:
        _reap(optuna, study)
        counted = _counted(optuna, study)
        queued = any(t.state == _states(optuna)[4] for t in counted)
        if len(counted) >= s.trials and not queued:
            others = [t for t in counted if t.state == _states(optuna)[3]]
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
        trial = study.ask()
        counted = _counted(optuna, study)
        place = [t.number for t in sorted(counted, key=lambda t: t.number)].index(trial.number)
        if place >= s.trials:  # another worker took the last slot at the same moment
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=_states(optuna)[2])
            continue
        _run_trial(optuna, study, trial, s)
        if s.stopping:
            done = len([t for t in _counted(optuna, study) if t.state.is_finished()])
            raise Interrupted(
                f"interrupted ({s.stopping}); {done} of {s.trials} trials are done and "
                f"stored in {s.storage}. Resume with:\n  {s.resume_command()}"
            )


def _sleep(s: Study) -> None:
    try:
        time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        s.stopping = s.stopping or "Ctrl-C"
        raise Interrupted(
            f"interrupted ({s.stopping}). Resume with:\n  {s.resume_command()}"
        ) from None


def suggest(trial: Any, entry: Entry) -> Any:
    """Ask Optuna for this entry's value in ``trial``."""
    sp = entry.space
    if sp.choice is not None:
        return trial.suggest_categorical(entry.text, sp.choice)
    if sp.int_range is not None:
        low, high = sp.int_range
        return trial.suggest_int(entry.text, low, high, step=sp.step or 1, log=sp.log)
    low, high = sp.float_range
    return trial.suggest_float(entry.text, float(low), float(high), step=sp.step, log=sp.log)


def trial_data(s: Study, params: dict[str, Any]) -> dict:
    """The config with ``params`` substituted and no ``tune:`` section."""
    data = _without_tune(s.cfg.doc.data)
    for e in s.entries:
        if e.text in params:
            data = assign(data, e.path, params[e.text])
    return data


def _yaml(data: dict, header: str = "") -> str:
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


def _short_names(s: Study) -> dict[str, str]:
    lasts = [str(e.path[-1]) for e in s.entries]
    return {
        e.text: (last if lasts.count(last) == 1 else e.text)
        for e, last in zip(s.entries, lasts, strict=True)
    }


def _params_text(s: Study, params: dict[str, Any]) -> str:
    short = _short_names(s)
    return " ".join(f"{short[k]}={_show(v)}" for k, v in params.items() if k in short)


def _run_trial(optuna: Any, study: Any, trial: Any, s: Study) -> None:
    from cnnbuild.insight.hooks import training_hooks
    from cnnbuild.train import train

    study.sampler = _sampler(optuna, s, trial.number)
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    run_dir = _trial_dir(s, trial.number)
    trial.set_user_attr("run_dir", str(run_dir))
    params = {e.text: suggest(trial, e) for e in s.entries}
    head = f"trial {trial.number}"
    t0 = time.perf_counter()
    s.console.print(f"{head} start  {_params_text(s, params)}", highlight=False)
    watch = _Watch(trial, s.tune.metric, s.tune.maximize)
    state, reason, metrics = None, "", {}
    with _Heartbeat(study._storage, trial._trial_id):
        try:
            s.folder.mkdir(parents=True, exist_ok=True)
            config = run_dir.with_suffix(".yaml")
            write_text(config, _yaml(trial_data(s, params)))
            seed = s.cfg.train.seed if s.cfg.train.seed is not None else (s.tune.seed or 0)
            overrides = {"epochs": s.tune.epochs, "limit": s.tune.limit, "seed": seed}
            with run_dir.with_suffix(".log").open("w", encoding="utf-8") as log:
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
        except KeyboardInterrupt:
            s.stopping = s.stopping or "Ctrl-C"
        except Interrupted as exc:  # the trainer's own handler took the signal, saved, stopped
            signame = "SIGTERM" if exc.message.startswith("SIGTERM") else "Ctrl-C"
            s.stopping = s.stopping or signame
        except CnnbuildError as exc:
            if s.stopping is None:
                state, reason = "fail", _reason(exc)
        except Exception as exc:
            if s.stopping is None and not _tf_error(exc):
                trial.set_user_attr("reason", f"{type(exc).__name__}: {exc}")
                study.tell(trial, state=_states(optuna)[2])
                raise
            state, reason = "fail", f"{type(exc).__name__}: {exc}".splitlines()[0]
        finally:
            _clear_session()
    seconds = time.perf_counter() - t0
    trial.set_user_attr("seconds", round(seconds, 2))
    if s.stopping:
        trial.set_user_attr("lost", f"interrupted by {s.stopping}")
        study.tell(trial, state=_states(optuna)[2])
        _retry(study, trial)
        s.console.print(f"{head} interrupted ({s.stopping}); it runs again on resume")
        return
    if state is None:
        state, reason = watch.outcome()
    trial.set_user_attr("epochs", len(watch.values))
    if metrics:
        trial.set_user_attr("test_accuracy", metrics.get("test_accuracy"))
    if state == "fail":
        trial.set_user_attr("reason", reason)
        study.tell(trial, state=_states(optuna)[2])
    elif state == "pruned":
        study.tell(trial, state=_states(optuna)[1])
    else:
        study.tell(trial, watch.best)
    s.durations.append(seconds)
    s.console.print(
        _progress(optuna, study, s, trial.number, state, reason, watch), highlight=False
    )


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


class _Watch:
    """The metric per epoch, reported to Optuna; stops a trial the pruner condemns."""

    def __init__(self, trial: Any, metric: str, maximize: bool) -> None:
        self.trial, self.metric, self.maximize = trial, metric, maximize
        self.values: list[float] = []
        self.pruned_at: int | None = None
        self.missing: list[str] | None = None

    def callback(self) -> Any:
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
    optuna: Any, study: Any, s: Study, number: int, state: str, reason: str, watch: _Watch
) -> str:
    m = s.tune.metric
    counted = _counted(optuna, study)
    finished = [t for t in counted if t.state.is_finished()]
    left = max(s.trials - len(finished), 0)
    mean = sum(s.durations) / len(s.durations)
    eta = _duration(left * mean) if left else "0s"
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


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    return f"{seconds // 60}m{seconds % 60:02d}s"


# -- outputs ----------------------------------------------------------------------------


def _rows(optuna: Any, study: Any, s: Study) -> list[dict]:
    complete, pruned, fail, running, waiting = _states(optuna)
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus") or t.state == waiting:
            continue
        state = {complete: "complete", pruned: "pruned", running: "running"}.get(t.state, "failed")
        reason = t.user_attrs.get("reason", "")
        if t.state == fail and not reason:
            lost = t.user_attrs.get("lost", "its process stopped answering")
            state, reason = "lost", f"{lost}; queued to run again"
        value = t.value if t.state == complete else _last(t)
        row = {
            "trial": t.number,
            "state": state,
            s.tune.metric: value,
            **{e.text: t.params.get(e.text) for e in s.entries},
            "epochs": t.user_attrs.get("epochs", len(t.intermediate_values) or None),
            "seconds": t.user_attrs.get("seconds"),
            "test_accuracy": t.user_attrs.get("test_accuracy"),
            "run_dir": t.user_attrs.get("run_dir", ""),
            "reason": reason,
        }
        rows.append(row)
    return rows


def _last(t: Any) -> float | None:
    if not t.intermediate_values:
        return None
    return t.intermediate_values[max(t.intermediate_values)]


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def finish(optuna: Any, study: Any, s: Study) -> dict:
    """Write trials.csv, best.yaml and the plots; print the summary table.

    Raises:
        RunError: no trial completed.
    """
    rows = _rows(optuna, study, s)
    write_text(s.folder / "trials.csv", _csv(rows))
    complete = [r for r in rows if r["state"] == "complete"]
    plot_history(rows, s.tune.metric, s.tune.maximize, s.folder / "history.png", s.name)
    importances = _importances(optuna, study)
    if importances:
        plot_importance(importances, s.folder / "importance.png", s.name)
    _print_table(s, rows)
    if not complete:
        raise RunError(
            f"no trial of study {s.name!r} completed ({len(rows)} trials: "
            + ", ".join(f"{n} {st}" for st, n in _counts(rows).items())
            + f"); see {s.folder / 'trials.csv'} for the reasons"
        )
    best = study.best_trial
    values = [r[s.tune.metric] for r in complete]
    worst = min(values) if s.tune.maximize else max(values)
    header = (
        f"# cnnbuild tune: the best trial of study {s.name!r} ({best.number}, "
        f"{s.tune.metric} {best.value:.4f} after {s.tune.epochs or s.cfg.train.epochs} epochs; "
        f"the worst completed trial had {worst:.4f})\n"
        + "".join(f"#   {k}: {_show(v)}\n" for k, v in best.params.items())
        + f"# train it: cnnbuild train {s.folder / 'best.yaml'}\n"
    )
    write_text(s.folder / "best.yaml", _yaml(trial_data(s, best.params), header))
    files = ["best.yaml", "trials.csv", "history.png"] + (["importance.png"] if importances else [])
    s.console.print(
        f"best trial {best.number}: {s.tune.metric} {best.value:.4f}  "
        f"(worst completed {worst:.4f}; {len(rows)} trials: "
        + ", ".join(f"{n} {st}" for st, n in _counts(rows).items())
        + ")",
        highlight=False,
    )
    if importances:
        s.console.print(
            "importance: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()),
            highlight=False,
        )
    s.console.print(f"wrote {', '.join(files)} to {s.folder}/", highlight=False)
    s.console.print(f"train it: cnnbuild train {s.folder / 'best.yaml'}", highlight=False)
    return {
        "best_trial": best.number,
        "best_value": best.value,
        "worst_value": worst,
        "params": dict(best.params),
        "counts": _counts(rows),
        "importances": importances,
        "folder": str(s.folder),
    }


def _counts(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["state"]] = out.get(r["state"], 0) + 1
    return out


def _importances(optuna: Any, study: Any) -> dict[str, float]:
    """Optuna's parameter importances (PED-ANOVA); empty with too few completed trials."""
    import warnings

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}


def _print_table(s: Study, rows: list[dict], top: int = 10) -> None:
    from rich.table import Table

    m = s.tune.metric
    short = _short_names(s)
    done = [r for r in rows if r["state"] == "complete"]
    done.sort(key=lambda r: r[m], reverse=s.tune.maximize)
    shown = done[:top] + [r for r in rows if r["state"] != "complete"][: max(top - len(done), 0)]
    table = Table(title=f"study {s.name}: {len(rows)} trials, best first")
    for col in ("trial", "state", m, *short.values(), "epochs", "seconds"):
        table.add_column(col, justify="left" if col == "state" else "right")
    for r in shown:
        value = r[m]
        table.add_row(
            str(r["trial"]),
            r["state"],
            "-" if value is None else f"{value:.4f}",
            *("-" if r[k] is None else _show(r[k]) for k in short),
            "-" if r["epochs"] is None else str(r["epochs"]),
            "-" if r["seconds"] is None else f"{r['seconds']:.1f}",
        )
    s.console.print(table)
    if len(rows) > len(shown):
        s.console.print(f"({len(rows) - len(shown)} more in {s.folder / 'trials.csv'})")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(rows: list[dict], metric: str, maximize: bool, path: Path, title: str) -> None:
    """The metric of every trial by trial number, pruned ones marked, and the best so far."""
    from cnnbuild.io import save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for state, style, label in (
        ("complete", "o", "completed"),
        ("pruned", "x", "pruned (last epoch reported)"),
    ):
        pts = [
            (r["trial"], r[metric]) for r in rows if r["state"] == state and r[metric] is not None
        ]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=label)
    done = sorted((r["trial"], r[metric]) for r in rows if r["state"] == "complete")
    if done:
        best, line = None, []
        for number, value in done:
            best = value if best is None else (max if maximize else min)(best, value)
            line.append((number, best))
        ax.step(*zip(*line, strict=True), where="post", label="best so far")
    failed = [r["trial"] for r in rows if r["state"] == "failed"]
    if failed:
        ax.plot(failed, [ax.get_ylim()[0]] * len(failed), "v", color="red", label="failed")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{title}: {metric} per trial")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def plot_importance(importances: dict[str, float], path: Path, title: str) -> None:
    """Horizontal bars: how much of the metric's variation each parameter explains."""
    from cnnbuild.io import save_figure

    plt = _pyplot()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (PED-ANOVA, sums to 1)")
    ax.set_title(f"{title}: parameter importance")
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)
