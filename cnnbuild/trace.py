"""The static trace: every node's input and output shapes, parameters, MACs, the
arithmetic behind each spatial size, and the receptive field. No TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass, field

from cnnbuild.catalog import REGISTRY
from cnnbuild.config import INPUT, ModelConfig, Node
from cnnbuild.errors import Finding, shape_str
from cnnbuild.schema.blocks import BLOCK_KINDS
from cnnbuild.shapes import Field, LayerOut, Shape, ShapeError, numel

BYTES_PER_VALUE = 4  # float32
WEIGHT_DTYPES = {"float32": 4, "bfloat16": 2, "int8": 1}
"""Bytes per weight of each storage type ``summary`` and ``trace`` report sizes for."""
MAX_LAYER_WEIGHTS = 2**31 - 1
"""The most weights one layer may hold (8 GiB of float32): beyond it Keras cannot
allocate the layer, so the static engine refuses it instead of letting ``build`` crash."""


@dataclass
class Row:
    """One traced layer. ``out`` is ``None`` when it could not be computed."""

    node: Node
    inputs: list[Shape]
    out: LayerOut | None
    field: Field

    @property
    def shape(self) -> Shape | None:
        return None if self.out is None else self.out.shape


@dataclass
class Trace:
    """The static trace of a whole config."""

    config: ModelConfig
    rows: list[Row]
    findings: list[Finding] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(r.out is not None for r in self.rows)

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.node.name == name)

    @property
    def output_shape(self) -> Shape | None:
        if self.config.output == INPUT:
            return self.config.input_shape
        return self.row(self.config.output).shape

    @property
    def frozen(self) -> set[str]:
        """The layers frozen when training starts (``trainable: false``, ``freeze:``)."""
        return self.config.frozen

    @property
    def trainable(self) -> int:
        frozen = self.frozen
        return sum(_split(r, frozen)[0] for r in self.rows)

    @property
    def non_trainable(self) -> int:
        frozen = self.frozen
        return sum(_split(r, frozen)[1] for r in self.rows)

    @property
    def total_params(self) -> int:
        return self.trainable + self.non_trainable

    @property
    def macs(self) -> int:
        return sum(r.out.macs for r in self.rows if r.out)

    @property
    def activation_bytes(self) -> int:
        """Activations kept for the backward pass, per image: every layer's output, float32."""
        return BYTES_PER_VALUE * (
            numel(self.config.input_shape) + sum(numel(r.out.shape) for r in self.rows if r.out)
        )

    @property
    def output_field(self) -> Field:
        """Receptive field and cumulative stride of the model's output."""
        if self.config.output == INPUT:
            return Field()
        return self.row(self.config.output).field

    def figures(self, total_params: int | None = None) -> dict:
        """The model-wide figures besides the parameter and MAC counts.

        Args:
            total_params: the parameter count to size the weights from (Keras' when the
                summary comes from Keras); default the static engine's.

        Returns:
            ``{"activation_bytes", "weight_bytes": {"float32", "bfloat16", "int8"},
            "receptive_field": [h, w] or "whole", "cumulative_stride": [h, w]}``.
        """
        total = self.total_params if total_params is None else total_params
        rf = self.output_field
        return {
            "activation_bytes": self.activation_bytes,
            "weight_bytes": {dtype: total * size for dtype, size in WEIGHT_DTYPES.items()},
            "receptive_field": "whole" if rf.whole else list(rf.size),
            "cumulative_stride": list(rf.jump),
        }

    def summary_dict(self) -> dict:
        """``summary --static --json``: :meth:`to_dict` with the :meth:`figures`."""
        return {**self.to_dict(), **self.figures()}

    def to_dict(self) -> dict:
        """The ``summary --json`` form (shapes are lists, without the batch axis); a
        frozen layer says ``"frozen": true``."""
        frozen = self.frozen
        return {
            "name": self.config.name,
            "input_shape": list(self.config.input_shape),
            "output_shape": None if self.output_shape is None else list(self.output_shape),
            "total_params": self.total_params,
            "trainable_params": self.trainable,
            "non_trainable_params": self.non_trainable,
            "macs": self.macs,
            "layers": [
                {
                    "name": r.node.name,
                    "type": r.node.kind,
                    "output_shape": None if r.shape is None else list(r.shape),
                    "params": sum(_split(r, frozen)),
                    "macs": r.out.macs if r.out else 0,
                    **({"frozen": True} if r.node.name in frozen else {}),
                }
                for r in self.rows
            ],
        }


def _split(row: Row, frozen: set[str]) -> tuple[int, int]:
    """(trainable, non-trainable) weights: a frozen layer's are all non-trainable."""
    if row.out is None:
        return 0, 0
    if row.node.name in frozen:
        return 0, row.out.params
    return row.out.trainable, row.out.non_trainable


def trace(cfg: ModelConfig) -> Trace:
    """Run the static engine over every node of ``cfg``.

    Shape problems become findings; a node whose inputs are unknown (an earlier error) is
    skipped, so one mistake is reported once.
    """
    shapes: dict[str, Shape | None] = {INPUT: cfg.input_shape}
    fields: dict[str, Field] = {INPUT: Field()}
    result = Trace(cfg, [])
    guessed: set[str] = set()
    for node in cfg.nodes:
        ins = [shapes.get(n) for n in node.inputs]
        rf = Field.merge([fields.get(n, Field()) for n in node.inputs])
        out = guess = None
        if node.args is not None and all(s is not None for s in ins):
            try:
                out = _checked(REGISTRY[node.kind].rule(ins, node.args))
            except ShapeError as exc:
                if guessed.isdisjoint(node.inputs):  # else a consequence of the first error
                    result.findings.append(_shape_finding(cfg, node, ins, exc))
                    guess = _free_size(node, ins)
        if guess is not None or not guessed.isdisjoint(node.inputs):
            guessed.add(node.name)
        shapes[node.name] = guess if out is None else out.shape
        fields[node.name] = rf if out is None else rf.after(out)
        result.rows.append(Row(node, ins, out, fields[node.name]))
    return result


def _checked(out: LayerOut) -> LayerOut:
    if out.params > MAX_LAYER_WEIGHTS:
        raise ShapeError(
            f"the layer would hold {out.params:,} weights, more than the "
            f"{MAX_LAYER_WEIGHTS:,} one layer can hold",
            hint="use fewer filters or units, a smaller kernel, or downsample before it",
        )
    if any(d is not None and d > MAX_LAYER_WEIGHTS for d in out.shape):
        raise ShapeError(
            f"the output {shape_str(out.shape)} has a size beyond what TensorFlow holds",
            hint="use smaller sizes",
        )
    return out


def _shape_finding(cfg: ModelConfig, node: Node, ins: list[Shape], exc: ShapeError) -> Finding:
    path = node.path
    prefix = path if len(path) and path[-1] == node.kind else (*path, node.kind)
    if exc.arg and (*prefix, exc.arg) in cfg.doc.keys:
        path = (*prefix, exc.arg)
    if len(ins) > 1:
        block = path[-1] if path and path[-1] in BLOCK_KINDS else None
        labels = (
            ["shortcut", "main path"]
            if block == "Residual"
            else [f"branch {i}" for i in range(len(ins))]
            if block == "Parallel"
            else ["input"] * len(ins)
        )
        where = "inputs " + " and ".join(
            f"{label} {'the model input' if src == INPUT else repr(src)} {shape_str(s)}"
            for label, src, s in zip(labels, node.inputs, ins, strict=False)
        )
    else:
        where = "input " + " and ".join(shape_str(s) for s in ins)
    msg = f"layer {node.name!r} ({node.kind}) cannot take {where}: {exc.message}"
    if node.use is not None:
        msg += f" (in a block used at line {cfg.doc.locate(node.use, 'key').line})"
    return cfg.doc.finding(path, msg, rule="shape", hint=exc.hint, prefer="key")


def _free_size(node: Node, ins: list[Shape]) -> Shape | None:
    """What a layer that failed on its input sizes gives with height and width left free,
    so the layers after it are still checked (one run reports every problem)."""
    free = [(None, None, *s[2:]) if len(s) == 3 else s for s in ins]
    try:
        return REGISTRY[node.kind].rule(free, node.args).shape
    except ShapeError:
        return None
