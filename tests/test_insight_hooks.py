"""Training offers hooks; the gradient flow and the report are hooks the CLI attaches
(cnnbuild.insight.hooks). Training alone writes neither; a hook sees the run."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from cnnbuild.insight.hooks import GradientFlow, RunReport, training_hooks
from cnnbuild.train import train
from tests.test_train_fit import TINY

pytestmark = pytest.mark.slow


class Recorder:
    """A hook that records what it is shown."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def callbacks(self, ctx):
        self.seen.append(("callbacks", (ctx.cfg.name, ctx.initial_epoch, len(ctx.x_train))))
        return []

    def finish(self, ctx, model, metrics):
        self.seen.append(("finish", (model.name, metrics["epochs"], ctx.run_dir)))


def _train(write, tmp_path, name, hooks):
    out = tmp_path / name
    console = Console(file=io.StringIO(), width=160)
    metrics = train(write(TINY), {"epochs": 1}, out=out, console=console, hooks=hooks)
    return out, metrics


def test_training_alone_writes_no_gradient_flow_or_report(write, tmp_path):
    recorder = Recorder()
    out, metrics = _train(write, tmp_path, "plain", [recorder])
    assert (out / "metrics.json").is_file() and (out / "curves.png").is_file()
    assert not (out / "gradients.json").exists() and not (out / "report.html").exists()
    split = round(256 * 0.9)  # limit 256, validation_split 0.1
    assert recorder.seen == [
        ("callbacks", ("tiny", 0, split)),
        ("finish", ("tiny", metrics["epochs"], out)),
    ]


def test_the_cli_hooks_write_gradient_flow_and_the_report(write, tmp_path):
    assert [type(h) for h in training_hooks()] == [GradientFlow, RunReport]
    out, _ = _train(write, tmp_path, "shown", training_hooks())
    flow = json.loads((out / "gradients.json").read_text())
    assert [e["epoch"] for e in flow["epochs"]] == [1]
    assert "gradient" in (out / "report.html").read_text(encoding="utf-8").lower()


def test_silent_phases_show_with_their_times_on_a_terminal_only(write, tmp_path):
    """On a terminal the phases that print nothing for a while (tracing the step,
    evaluating, writing the report) say so, then their time; a pipe or a CI log gets
    none of it, and both get the epoch and result lines."""
    import re

    shown, metrics = {}, {}
    for live in (True, False):
        buffer = io.StringIO()
        console = Console(file=buffer, width=160, force_terminal=live)
        metrics[live] = train(
            write(TINY), {"epochs": 1}, out=tmp_path / f"live-{live}", console=console,
            hooks=training_hooks(),
        )  # fmt: skip
        shown[live] = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue()).replace("\r", "\n")
    n_test = metrics[True]["test_images"]
    assert n_test > 0
    for words in (
        "tracing the training step",
        f"evaluating on {n_test:,} test images",
        "writing report",
    ):
        assert re.search(re.escape(words) + r"… \d+\.\ds\n", shown[True]), shown[True]
        assert words not in shown[False]
    assert "…" not in shown[False]
    for output in shown.values():
        assert re.search(r"^epoch 1/1  loss ", output, re.M) and "test accuracy" in output
