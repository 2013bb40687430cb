"""Training runs, along the data flow: settings and device (:mod:`.settings`), the run
directory as a transaction (:mod:`.rundir`), the fit orchestrator (:mod:`.fit`) and
evaluation (:mod:`.evaluate`).

A run directory holds ``config.yaml`` (the resolved config), ``state.json`` (what a
resume needs, and the commit record of the checkpoints), ``last.keras`` and
``model.keras`` (best by ``train.monitor``), ``history.csv``/``history.json``,
``metrics.json``, ``curves.png``, ``confusion.png`` and, with ``tensorboard: true``,
``tb/``. Every file is written atomically and durably.
"""

from __future__ import annotations

from cnnbuild.runs import load_data, resolve_train
from cnnbuild.train.evaluate import evaluate, evaluate_model, print_evaluation
from cnnbuild.train.fit import train
from cnnbuild.train.settings import (
    CPU_STEPS_PER_EXECUTION,
    GPU_STEPS_PER_EXECUTION,
    stdout_console,
)

__all__ = [
    "CPU_STEPS_PER_EXECUTION",
    "GPU_STEPS_PER_EXECUTION",
    "evaluate",
    "evaluate_model",
    "load_data",
    "print_evaluation",
    "resolve_train",
    "stdout_console",
    "train",
]
