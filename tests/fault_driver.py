"""Run ``cnnbuild ARGS`` with a fault at one point: ``python -m tests.fault_driver POINT ARGS``.

POINT is ``OP:N[:ACTION]``: at the N-th ``OP`` the process acts on itself with real
signals. OP is ``save`` (a Keras ``model.save``), ``copy`` (a ``shutil.copyfile``: the
best checkpoint copied from the last), ``replace`` (an ``os.replace``),
``replaced`` (just after one) or ``batch`` (a training batch ends). ACTION is ``kill``
(SIGKILL; for ``save`` and ``copy``, after writing half of the file), ``term`` or ``int``
(SIGTERM or SIGINT sent to itself, then the operation goes on).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def main() -> None:
    point, args = sys.argv[1], sys.argv[2:]
    op, nth, *rest = point.split(":")
    action = rest[0] if rest else "kill"
    nth = int(nth)
    counts = {"n": 0}

    def hit() -> bool:
        counts["n"] += 1
        return counts["n"] == nth

    def act() -> None:
        sig = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}[action]
        sys.stdout.flush()
        os.kill(os.getpid(), sig)

    def halve(path) -> None:
        """Cut a file just written to half its size: a kill half-way through the write."""
        with open(path, "r+b") as fh:
            fh.truncate(Path(path).stat().st_size // 2)

    if op in ("replace", "replaced"):
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            due = hit()
            if due and op == "replace":
                act()
            real_replace(src, dst, *a, **k)
            if due and op == "replaced":
                act()

        os.replace = replace
    elif op == "save":
        from cnnbuild.builder import keras_module

        keras = keras_module()
        real_save = keras.Model.save

        def save(self, path, *a, **k):
            if hit():
                if action == "kill":
                    real_save(self, path, *a, **k)
                    halve(path)
                    act()
                act()
            real_save(self, path, *a, **k)

        keras.Model.save = save
    elif op == "copy":
        import shutil

        real_copy = shutil.copyfile

        def copyfile(src, dst, *a, **k):
            out = real_copy(src, dst, *a, **k)
            if hit():
                if action == "kill":
                    halve(dst)
                act()
            return out

        shutil.copyfile = copyfile
    elif op == "batch":
        from cnnbuild.builder import keras_module
        from cnnbuild.train import fit

        keras = keras_module()
        real_callbacks = fit.make_callbacks

        class Fault(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if hit():
                    act()

        fit.make_callbacks = lambda *a, **k: [*real_callbacks(*a, **k), Fault()]
    else:
        raise SystemExit(f"unknown fault point {point}")
    from cnnbuild.cli import main as cli_main

    sys.argv = ["cnnbuild", *args]
    cli_main()


if __name__ == "__main__":
    main()
