"""Workarounds for Keras bugs: two that stop ``model.fit`` under
``MultiWorkerMirroredStrategy`` (:data:`PATCHES`, installed when a run uses a strategy),
and one that makes every ``model.save`` and load slower (:data:`EVERYWHERE`, installed by
:func:`cnnbuild.backend.keras_module`).

Each patch names the upstream issue or code, the Keras versions it is applied to (those
known to carry the bug: the buggy code was read in each release's source and run on
3.15), and what it changes. :func:`apply` installs the patches that match the running
Keras and returns their names; on any other version it changes nothing, so a Keras
release that fixes the bug upstream runs its own code. ``tests/test_distribute.py`` runs
two real workers with and without the multi-worker patches, and
``tests/test_keras_patches.py`` saves real models with and without the saving one, so an
upgrade that fixes (or keeps) a bug is noticed there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


def _version(text: str) -> tuple[int, int, int]:
    parts = (text.split("+")[0].split(".") + ["0", "0"])[:3]
    out = []
    for part in parts:
        digits = "".join(c for c in part if c.isdigit()) or "0"
        out.append(int(digits))
    return out[0], out[1], out[2]


@dataclass(frozen=True)
class Patch:
    """A replacement for one Keras function, for the versions in ``[first, before)``."""

    name: str
    first: tuple[int, int, int]
    before: tuple[int, int, int]
    install: Callable[[], None]

    def applies_to(self, version: str) -> bool:
        return self.first <= _version(version) < self.before


def _patch_symbolic_build() -> None:
    """keras-team/keras#20585, tensorflow/tensorflow#72388: ``fit`` under
    ``MultiWorkerMirroredStrategy`` fails with "Attempt to convert a value (PerReplica...)
    to a Tensor".

    https://github.com/keras-team/keras/issues/20585
    https://github.com/tensorflow/tensorflow/issues/72388

    Under any tf.distribute strategy, ``TensorFlowTrainer._maybe_symbolic_build`` pulls
    the first batch out of the training data and averages it over replicas with
    ``strategy.reduce("MEAN", batch, axis=None)``, only to read its shapes and dtypes.
    Under a multi-worker strategy that reduce is a cross-worker collective that cannot
    take a ``PerReplica`` in eager mode. Pulling the batch also opens an extra pass over
    the dataset, so a seeded, reshuffled dataset starts training on its second order,
    not the one a single-device run sees. The patch builds from the dataset's
    ``element_spec`` instead: the same shapes and dtypes, no data read, no
    communication. Introduced in Keras 3.5.0 (commit f0e79cf, "Reland tf distribute
    fix"); still present in 3.15 and in 3.16's source.
    """
    from keras.src.backend.tensorflow import trainer

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build


def _patch_reduce_mean() -> None:
    """keras-team/keras#20585 (the error that follows the first fix): the epoch's
    metrics fail to reduce with "Invalid reduction dimension 0 for input with 0
    dimensions".

    https://github.com/keras-team/keras/issues/20585
    https://github.com/tensorflow/tensorflow/issues/72388

    ``reduce_per_replica`` averages multi-worker step outputs (scalar losses and
    metrics) with ``strategy.reduce("MEAN", v, axis=0)``; a scalar has no axis 0. The
    mean over replicas is ``axis=None``, which the patch uses; every other reduction is
    Keras' own. Present since Keras 3.0.0, still in 3.15 and in 3.16's source.
    """
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            import tensorflow as tf

            if not isinstance(strategy, tf.distribute.TPUStrategy):
                from keras.src import tree

                return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    trainer.reduce_per_replica = reduce_per_replica


def _patch_skipset_cache() -> None:
    """``keras.src.saving.saving_lib.get_attr_skipset`` never finds its cache: it looks
    for ``saving_attr_skiplist_{type}`` but stores ``saving_attr_skipset_{type}``.

    The function names the attributes the saver's walk over a model skips, taken from
    ``dir()`` of a throwaway ``Layer()`` (``Operation()``, ``Optimizer(1.0)``...). With
    the cache missed, every save and load builds one such object for each layer and
    optimizer it walks: on a 155-layer MobileNetV2 with its Adam state, about 0.2 s of a
    0.7 s ``model.save``, every epoch's checkpoint. The patch keeps the result per type,
    as the function means to (the set depends on the type alone). The mismatched keys
    are in Keras 3.15's source (``saving_lib.py``).
    """
    from keras.src.saving import saving_lib

    original = saving_lib.get_attr_skipset
    cache: dict[str, Any] = {}

    def get_attr_skipset(obj_type: str) -> Any:
        if obj_type not in cache:
            cache[obj_type] = original(obj_type)
        return cache[obj_type]

    get_attr_skipset.__wrapped__ = original  # type: ignore[attr-defined]  # Keras' own
    saving_lib.get_attr_skipset = get_attr_skipset


PATCHES = (
    Patch("symbolic-build-from-spec", (3, 5, 0), (3, 17, 0), _patch_symbolic_build),
    Patch("multi-worker-mean-axis-none", (3, 0, 0), (3, 17, 0), _patch_reduce_mean),
)
"""Installed when a run uses a tf.distribute strategy."""

EVERYWHERE = (Patch("saving-skipset-cache", (3, 15, 0), (3, 16, 0), _patch_skipset_cache),)
"""Installed whenever Keras is imported (:func:`cnnbuild.backend.keras_module`)."""

_applied: list[str] = []


def apply(only: Iterable[str] | None = None, patches: Iterable[Patch] = PATCHES) -> list[str]:
    """Install the patches the running Keras needs (each once per process).

    Args:
        only: install just these (by name); the tests use it to show each bug.
        patches: which group: :data:`PATCHES` (multi-worker) or :data:`EVERYWHERE`.

    Returns:
        The names of the patches in force, empty on a Keras version not listed.
    """
    import keras

    for patch in patches:
        if patch.name in _applied or (only is not None and patch.name not in only):
            continue
        if patch.applies_to(keras.__version__):
            patch.install()
            _applied.append(patch.name)
    return list(_applied)
