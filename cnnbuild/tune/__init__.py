"""``cnnbuild tune``: hyperparameter search over the YAML itself, on Optuna's public API.

The search space and its static check live in the static core
(:mod:`cnnbuild.search_space`, no TensorFlow or Optuna), so ``validate`` checks a space
without importing this package. Here, from the bottom up:

- :mod:`~cnnbuild.tune.storage`: the study's database, every wait bounded, faults as messages;
- :mod:`~cnnbuild.tune.trial`: one trial, trained as an ordinary run directory;
- :mod:`~cnnbuild.tune.results`: trials.csv, best.yaml, the plots and the summary table;
- :mod:`~cnnbuild.tune.study`: names and places, and the loop that runs the trials.

Optuna, TensorFlow and SQLAlchemy are imported inside the functions that use them, so
:func:`require` can say what to install before any of them is needed.
"""

from __future__ import annotations

from cnnbuild.tune.study import Study, open_study, require, run_study

__all__ = ["Study", "open_study", "require", "run_study"]
