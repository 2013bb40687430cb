"""What a training run shows beside itself, as hooks the caller attaches to
:func:`cnnbuild.train.train` (the CLI and the tuner attach both): the gradient flow
recorded every epoch (``gradients.json``) and the run's ``report.html`` once it ends.

Training never imports this module; it calls whatever hooks it is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnnbuild.train.fit import FitContext


class GradientFlow:
    """Per-layer gradient norms on one fixed training batch, every epoch, into
    ``gradients.json``."""

    def callbacks(self, ctx: FitContext) -> list[Any]:
        from cnnbuild.insight.flow import gradient_flow

        flow = gradient_flow(
            ctx.keras,
            ctx.cfg,
            ctx.x_train,
            ctx.y_train,
            ctx.data.num_classes,
            ctx.run_dir,
            ctx.console,
            ctx.batch_size,
            ctx.initial_epoch,
        )
        return [flow]

    def finish(self, ctx: FitContext, model: Any, metrics: dict) -> None:
        """Nothing to do: the callback wrote every epoch."""


class RunReport:
    """The run's self-contained ``report.html``, written once the metrics are."""

    def callbacks(self, ctx: FitContext) -> list[Any]:
        return []

    def finish(self, ctx: FitContext, model: Any, metrics: dict) -> None:
        from cnnbuild.insight.run_report import write_report

        with ctx.phase("writing report"):
            write_report(
                ctx.run_dir, model=model, cfg=ctx.cfg, data=ctx.data, outputs=ctx.test_outputs
            )


def training_hooks() -> list[Any]:
    """The hooks every ``cnnbuild train`` run gets: gradient flow, then the report."""
    return [GradientFlow(), RunReport()]
