"""What a study leaves: ``trials.csv``, ``best.yaml``, the history and importance plots,
and the summary table."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

from cnnbuild.errors import RunError
from cnnbuild.io import os_errors, save_figure, write_text
from cnnbuild.search_space import show_value

if TYPE_CHECKING:
    import optuna

    from cnnbuild.tune.study import Study


def rows(study: optuna.Study, s: Study) -> list[dict]:
    """One row per trial of the study (queued and surplus ones aside), as in trials.csv."""
    from optuna.trial import TrialState

    names = {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.RUNNING: "running",
    }
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus") or t.state == TrialState.WAITING:
            continue
        state = names.get(t.state, "failed")
        reason = t.user_attrs.get("reason", "")
        if t.state == TrialState.FAIL and not reason:
            lost = t.user_attrs.get("lost", "its process stopped answering")
            state, reason = "lost", f"{lost}; queued to run again"
        out.append(
            {
                "trial": t.number,
                "state": state,
                s.tune.metric: t.value if t.state == TrialState.COMPLETE else _last(t),
                **{e.text: t.params.get(e.text) for e in s.entries},
                "epochs": t.user_attrs.get("epochs", len(t.intermediate_values) or None),
                "seconds": t.user_attrs.get("seconds"),
                "test_accuracy": t.user_attrs.get("test_accuracy"),
                "run_dir": t.user_attrs.get("run_dir", ""),
                "reason": reason,
            }
        )
    return out


def _last(t: optuna.trial.FrozenTrial) -> float | None:
    if not t.intermediate_values:
        return None
    return t.intermediate_values[max(t.intermediate_values)]


def _csv(table: list[dict]) -> str:
    buf = io.StringIO()
    if table:
        writer = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    return buf.getvalue()


def finish(study: optuna.Study, s: Study) -> dict:
    """Write trials.csv, best.yaml and the plots; print the summary table.

    Returns:
        The summary: best trial, value, params, counts, importances and the folder.

    Raises:
        RunError: no trial completed.
        WriteError: an output cannot be written.
    """
    table = rows(study, s)
    with os_errors():
        write_text(s.folder / "trials.csv", _csv(table))
        plot_history(table, s.tune.metric, s.tune.maximize, s.folder / "history.png", s.name)
        importances = _importances(study)
        if importances:
            plot_importance(importances, s.folder / "importance.png", s.name)
    _print_table(s, table)
    complete = [r for r in table if r["state"] == "complete"]
    if not complete:
        raise RunError(
            f"no trial of study {s.name!r} completed ({len(table)} trials: {_counts_text(table)})"
            f"; see {s.folder / 'trials.csv'} for the reasons"
        )
    best = study.best_trial
    values = [r[s.tune.metric] for r in complete]
    worst = min(values) if s.tune.maximize else max(values)
    _write_best(s, best, worst)
    _print_summary(s, best, worst, table, importances)
    return {
        "best_trial": best.number,
        "best_value": best.value,
        "worst_value": worst,
        "params": dict(best.params),
        "counts": _counts(table),
        "importances": importances,
        "folder": str(s.folder),
    }


def _write_best(s: Study, best: optuna.trial.FrozenTrial, worst: float) -> None:
    """best.yaml: the best trial's config, with a header saying where it comes from."""
    header = (
        f"# cnnbuild tune: the best trial of study {s.name!r} ({best.number}, "
        f"{s.tune.metric} {best.value:.4f} after {s.tune.epochs or s.cfg.train.epochs} epochs; "
        f"the worst completed trial had {worst:.4f})\n"
        + "".join(f"#   {k}: {show_value(v)}\n" for k, v in best.params.items())
        + f"# train it: cnnbuild train {s.folder / 'best.yaml'}\n"
    )
    with os_errors():
        write_text(s.folder / "best.yaml", s.trial_config(best.params, header))


def _print_summary(
    s: Study,
    best: optuna.trial.FrozenTrial,
    worst: float,
    table: list[dict],
    importances: dict[str, float],
) -> None:
    files = ["best.yaml", "trials.csv", "history.png"] + (["importance.png"] if importances else [])
    s.console.print(
        f"best trial {best.number}: {s.tune.metric} {best.value:.4f}  "
        f"(worst completed {worst:.4f}; {len(table)} trials: {_counts_text(table)})",
        highlight=False,
    )
    if importances:
        s.console.print(
            "importance: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()),
            highlight=False,
        )
    s.console.print(f"wrote {', '.join(files)} to {s.folder}/", highlight=False)
    s.console.print(f"train it: cnnbuild train {s.folder / 'best.yaml'}", highlight=False)


def _counts(table: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in table:
        out[r["state"]] = out.get(r["state"], 0) + 1
    return out


def _counts_text(table: list[dict]) -> str:
    return ", ".join(f"{n} {state}" for state, n in _counts(table).items())


def _importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's parameter importances (PED-ANOVA); empty with too few completed trials."""
    import warnings

    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}


def _print_table(s: Study, table: list[dict], top: int = 10) -> None:
    from rich.table import Table

    m = s.tune.metric
    short = s.short_names()
    done = [r for r in table if r["state"] == "complete"]
    done.sort(key=lambda r: r[m], reverse=s.tune.maximize)
    shown = done[:top] + [r for r in table if r["state"] != "complete"][: max(top - len(done), 0)]
    out = Table(title=f"study {s.name}: {len(table)} trials, best first")
    for col in ("trial", "state", m, *short.values(), "epochs", "seconds"):
        out.add_column(col, justify="left" if col == "state" else "right")
    for r in shown:
        value = r[m]
        out.add_row(
            str(r["trial"]),
            r["state"],
            "-" if value is None else f"{value:.4f}",
            *("-" if r[k] is None else show_value(r[k]) for k in short),
            "-" if r["epochs"] is None else str(r["epochs"]),
            "-" if r["seconds"] is None else f"{r['seconds']:.1f}",
        )
    s.console.print(out)
    if len(table) > len(shown):
        s.console.print(f"({len(table) - len(shown)} more in {s.folder / 'trials.csv'})")


def plot_history(table: list[dict], metric: str, maximize: bool, path: Path, title: str) -> None:
    """The metric of every trial by trial number, pruned ones marked, and the best so far."""
    from cnnbuild.charts import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for state, style, label in (
        ("complete", "o", "completed"),
        ("pruned", "x", "pruned (last epoch reported)"),
    ):
        pts = [
            (r["trial"], r[metric]) for r in table if r["state"] == state and r[metric] is not None
        ]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=label)
    done = sorted((r["trial"], r[metric]) for r in table if r["state"] == "complete")
    if done:
        best, line = None, []
        for number, value in done:
            best = value if best is None else (max if maximize else min)(best, value)
            line.append((number, best))
        ax.step(*zip(*line, strict=True), where="post", label="best so far")
    failed = [r["trial"] for r in table if r["state"] == "failed"]
    if failed:
        ax.plot(failed, [ax.get_ylim()[0]] * len(failed), "v", color="red", label="failed")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{title}: {metric} per trial")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)


def plot_importance(importances: dict[str, float], path: Path, title: str) -> None:
    """Horizontal bars: how much of the metric's variation each parameter explains."""
    from cnnbuild.charts import pyplot

    plt = pyplot()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (PED-ANOVA, sums to 1)")
    ax.set_title(f"{title}: parameter importance")
    ax.grid(axis="x", alpha=0.3)
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)
