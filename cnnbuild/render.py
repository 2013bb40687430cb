"""Rich tables for ``summary`` and ``trace``, and the JSON form of a trace."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cnnbuild.errors import shape_str
from cnnbuild.trace import Trace


def human(n: float, unit: str = "") -> str:
    """``1234567`` -> ``1.23M``."""
    for size, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            return f"{n / size:.2f}{suffix}{unit}"
    return f"{n:g}{unit}"


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def size_str(nbytes: float) -> str:
    """``490280`` -> ``478.8 KiB``; below 1 KiB in bytes."""
    for size, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(nbytes) >= size:
            return f"{nbytes / size:.1f} {suffix}"
    return f"{nbytes:g} B"


def _scope_label(scope: tuple[str, ...]) -> str:
    return " › ".join(scope)


def summary_table(summary: dict, scopes: dict[str, tuple[str, ...]], source: str) -> Table:
    """The ``summary`` table from the ``--json`` form, with block nesting shown.

    Args:
        summary: the ``summary --json`` dict (from Keras or from the static engine).
        scopes: each layer's enclosing blocks, for indentation.
        source: "Keras" or "static engine", for the caption.
    """
    table = Table(
        title=f"{summary['name']}  input {shape_str(summary['input_shape'])}",
        caption=f"shapes and parameters from {source}",
        title_justify="left",
    )
    table.add_column("Layer")
    table.add_column("Type")
    table.add_column("Output shape")
    table.add_column("Params", justify="right")
    table.add_column("MACs", justify="right")
    last: tuple[str, ...] = ()
    for layer in summary["layers"]:
        scope = scopes.get(layer["name"], ())
        if scope and scope != last:
            common = 0
            while common < min(len(scope), len(last)) and scope[common] == last[common]:
                common += 1
            for depth in range(common, len(scope)):
                table.add_row(Text("  " * depth + "▸ " + scope[depth], style="bold cyan"))
        last = scope
        table.add_row(
            "  " * len(scope) + layer["name"] + (" (frozen)" if layer.get("frozen") else ""),
            layer["type"],
            shape_str(layer["output_shape"]),
            f"{layer['params']:,}",
            human(layer["macs"]) if layer["macs"] else "0",
        )
    table.add_section()
    table.add_row(
        "Total",
        "",
        shape_str(summary["output_shape"]),
        f"{summary['total_params']:,}",
        human(summary["macs"]),
    )
    return table


def summary_footer(summary: dict, activation_bytes: int) -> list[str]:
    """The totals under the ``summary`` table; ``summary`` holds :meth:`Trace.figures`.
    With a free input height or width, the MACs and the activation memory count only the
    layers of a known size, and say so."""
    free = any(d is None for d in summary["input_shape"][:2])
    partial = "; without the layers of a free height or width" if free else ""
    return [
        f"Total params: {summary['total_params']:,} "
        f"({mib(summary['total_params'] * 4)} as float32)",
        f"Trainable params: {summary['trainable_params']:,}",
        f"Non-trainable params: {summary['non_trainable_params']:,}",
        f"MACs per image: {summary['macs']:,} ({human(summary['macs'])}{partial}); "
        f"training FLOPs per image ~ {human(6 * summary['macs'])} (3 x 2 x MACs)",
        f"Activation memory per training image: {mib(activation_bytes)} "
        f"(every layer's output, float32{partial})",
        *figure_lines(summary),
    ]


def field_str(field: list | str) -> str:
    """``[18, 18]`` -> ``18x18``; ``"whole"`` -> ``whole image``."""
    return "whole image" if field == "whole" else "x".join(str(v) for v in field)


def figure_lines(figures: dict) -> list[str]:
    """Weight bytes per storage type and the output's receptive field (:meth:`Trace.figures`)."""
    sizes = ", ".join(f"{size_str(n)} {dtype}" for dtype, n in figures["weight_bytes"].items())
    stride = field_str(figures["cumulative_stride"])
    return [
        f"Weights: {sizes}",
        f"Receptive field of the output: {field_str(figures['receptive_field'])} "
        f"(cumulative stride {stride})",
    ]


def trace_dict(tr: Trace) -> dict[str, Any]:
    """The ``trace --json`` form."""
    cfg = tr.config
    frozen = tr.frozen
    layers = []
    for row in tr.rows:
        out = row.out
        layers.append(
            {
                "name": row.node.name,
                "type": row.node.kind,
                "block": list(row.node.scope),
                "inputs": list(row.node.inputs),
                "input_shapes": [None if s is None else list(s) for s in row.inputs],
                "output_shape": None if out is None else list(out.shape),
                "arithmetic": []
                if out is None
                else [{"axis": c.axis, "text": c.text} for c in out.calcs],
                "receptive_field": "whole" if row.field.whole else list(row.field.size),
                "cumulative_stride": list(row.field.jump),
                "params": 0 if out is None else out.params,
                "macs": 0 if out is None else out.macs,
                "frozen": row.node.name in frozen,
            }
        )
    return {
        "name": cfg.name,
        "input_shape": list(cfg.input_shape),
        "output_shape": None if tr.output_shape is None else list(tr.output_shape),
        **tr.figures(),
        "layers": layers,
    }


def trace_table(tr: Trace, real: dict[str, dict] | None = None) -> Table:
    """Layer by layer: input -> output shape, the arithmetic, receptive field, stride.

    Args:
        tr: the static trace.
        real: for ``--run``: per layer ``{"shape", "mean", "std", "zeros"}`` from Keras.
    """
    cfg = tr.config
    table = Table(
        title=f"{cfg.name}: shape trace, input {shape_str(cfg.input_shape)}", title_justify="left"
    )
    for col in ("#", "Layer", "Type", "Input → output", "How", "RF", "Stride"):
        table.add_column(col, justify="right" if col in ("#", "Stride") else "left")
    if real is not None:
        for col in ("Real shape", "mean", "std", "zeros"):
            table.add_column(col, justify="right")
    last: tuple[str, ...] = ()
    frozen = tr.frozen
    for i, row in enumerate(tr.rows, 1):
        scope = row.node.scope
        if scope and scope != last:
            table.add_row(
                "", Text("  " * (len(scope) - 1) + "▸ " + _scope_label(scope), style="bold cyan")
            )
        last = scope
        out = row.out
        ins = " + ".join(shape_str(s) for s in row.inputs)
        how = "\n".join(f"{c.axis}: {c.text}" for c in out.calcs) if out else ""
        cells = [
            str(i),
            "  " * len(scope) + row.node.name + (" (frozen)" if row.node.name in frozen else ""),
            row.node.kind,
            f"{ins} → {shape_str(row.shape) if out else '?'}",
            how,
            row.field.text(),
            f"{row.field.jump[0]}x{row.field.jump[1]}",
        ]
        if real is not None:
            r = real.get(row.node.name)
            if r is None:
                cells += ["", "", "", ""]
            else:
                agree = out is not None and tuple(r["shape"]) == tuple(out.shape)
                mark = "" if agree else " ≠ static"
                cells += [
                    Text(shape_str(r["shape"]) + mark, style="" if agree else "bold red"),
                    f"{r['mean']:.3f}",
                    f"{r['std']:.3f}",
                    f"{r['zeros']:.0%}",
                ]
        table.add_row(*cells)
    return table


def print_lines(console: Console, lines: list[str]) -> None:
    for line in lines:
        console.print(line, highlight=False)
