"""The one place TensorFlow and Keras are imported, quietly and lazily.

TensorFlow is imported inside :func:`keras_module`, with its C++ start-up chatter (oneDNN
notes, CUDA-driver probes) captured at the file-descriptor level; pass ``verbose=True``
to see it. Nothing here runs at import time, so the static commands stay TensorFlow-free.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
from contextlib import contextmanager
from typing import Any, NoReturn

from cnnbuild.errors import UsageError

STRATEGIES = ("auto", "one", "mirrored", "multi-worker")
"""The tf.distribute strategies a run may ask for (see :mod:`cnnbuild.distribute`): the
config schema, the ``--strategy`` flag and the planner all read this tuple."""

_STARTUP_LOG: list[str] = []

UNUSED_AT_IMPORT = ("sklearn", "matplotlib")
"""Packages Keras imports when it is imported, if they are installed, for parts cnnbuild
never calls (its scikit-learn wrappers, ``keras.visualization``): about 1.2 s and 0.6 s of
every command's start on a 2-core CPU. :func:`keras_module` imports Keras without them;
cnnbuild imports matplotlib itself where it draws (:func:`cnnbuild.charts.pyplot`)."""

TRAIN_INSTALL = "pip install 'cnnbuild[train]'"
TRAIN_MODULES = ("numpy", "tensorflow", "keras")
"""What the train extra brings that the light install (``pip install cnnbuild``) lacks and
training and evaluation import."""


def missing_hint(command: str, missing: list[str]) -> str:
    """The light install's message: ``COMMAND needs X, Y, which are not installed; install
    them with: pip install 'cnnbuild[train]'``."""
    one = len(missing) == 1
    return (
        f"{command} needs {', '.join(missing)}, which {'is' if one else 'are'} not "
        f"installed; install {'it' if one else 'them'} with: {TRAIN_INSTALL}"
    )


def require_train(command: str) -> None:
    """Refuse, with the install command, when numpy, TensorFlow or Keras is missing: checked
    before the command imports anything of them.

    Raises:
        UsageError: naming what is missing (exit 2).
    """
    import importlib.util

    missing = [name for name in TRAIN_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(missing_hint(command, missing))


@contextmanager
def captured_fds(fds: tuple[int, ...] = (1, 2)):
    """Send what C code writes to ``fds`` into a buffer while the block runs.

    Yields:
        A list that receives the captured text when the block ends.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in fds}
    out: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        try:
            for fd in fds:
                os.dup2(tmp.fileno(), fd)
            yield out
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def keras_module(verbose: bool = False) -> Any:
    """Import TensorFlow and Keras quietly, once.

    Args:
        verbose: print TensorFlow's start-up messages to stderr.

    Returns:
        The ``keras`` module (Keras 3 on the TensorFlow backend).

    Raises:
        UsageError: when TensorFlow or Keras is not installed (the light install), with
            the command that installs them.
    """
    if "keras" in sys.modules and "tensorflow" in sys.modules:
        if verbose and _STARTUP_LOG:
            sys.stderr.write(_STARTUP_LOG[0])
        _patch()
        return sys.modules["keras"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    with captured_fds() as log:
        try:
            try:
                with _hidden(UNUSED_AT_IMPORT):
                    keras, tf = _import_keras()
            except ImportError as exc:
                if exc.name not in UNUSED_AT_IMPORT:
                    raise
                keras, tf = _import_keras()  # a release that needs it at import: as it is
        except ImportError as exc:
            raise UsageError(
                f"this command needs TensorFlow and Keras ({exc.name or exc} is not "
                "installed); install them with: pip install 'cnnbuild[train]'"
            ) from None

        tf.config.list_physical_devices("GPU")  # probes CUDA now, while captured
    # TensorFlow's and Keras' import leaves about 280,000 objects that live as long as the
    # process; every full collection after would scan them again (0.1 s each, a dozen in
    # a deep model's run). Frozen, the collector skips them.
    gc.freeze()
    _patch()
    _STARTUP_LOG[:] = log
    if verbose:
        sys.stderr.write(log[0])
    return keras


def _import_keras() -> tuple[Any, Any]:
    import keras
    import tensorflow as tf

    return keras, tf


@contextmanager
def _hidden(names: tuple[str, ...]):
    """Make ``import NAME`` fail (``ImportError``) inside the block, for each of ``names``
    not imported yet; afterwards they import as usual."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "absent"
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def exit_process(code: int | str | None) -> NoReturn:
    """End the process with ``code`` (as ``sys.exit`` takes it).

    Once TensorFlow is loaded, everything the command wrote is closed and fsynced, and
    Python's teardown (freeing every traced graph, TensorFlow's thread pools) is all that
    is left: about 3 s after a 155-layer MobileNetV2 has trained, 2 s after plain
    ``model.fit``. So the output streams are flushed and the process ends at once
    (``os._exit``). Without TensorFlow, or in a multi-worker cluster (``TF_CONFIG``: its
    runtime talks to the other workers until it is torn down), the normal exit.
    """
    if isinstance(code, str):
        sys.stderr.write(code + "\n")
        code = 1
    code = 0 if code is None else int(code)
    if "tensorflow" not in sys.modules or os.environ.get("TF_CONFIG"):
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: nothing more can be said on it
        code = code or 1
    os._exit(code)


def _patch() -> None:
    """The Keras workarounds every command gets (see :mod:`cnnbuild.keras_patches`)."""
    from cnnbuild.keras_patches import EVERYWHERE, apply

    apply(patches=EVERYWHERE)


def room_for(depth: int) -> int:
    """The recursion limit a ``depth``-layer model needs: Keras builds, saves, loads,
    calls and differentiates a functional graph recursively, a few frames per layer."""
    return 50 * depth + 1000


def keep_recursion_room(depth: int) -> None:
    """Raise the recursion limit for a ``depth``-layer model for the rest of the process
    (never lowering it): a loaded model stays deep when a command later builds a sub-model
    of it (Grad-CAM, feature maps) or traces it."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), room_for(depth)))


@contextmanager
def recursion_room(depth: int):
    """Room for a ``depth``-layer model while the block runs; the limit is restored after."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, room_for(depth)))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)
