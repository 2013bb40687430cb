"""Architecture diagrams: Keras' ``plot_model`` when Graphviz is installed, otherwise a
matplotlib drawing or DOT text made from the static trace (no TensorFlow import).

Every drawing shows each layer with its kind and output shape, branches side by side,
and the config's blocks (templates, ``Residual``, ``Parallel``) as labelled frames.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnbuild.config import INPUT, ModelConfig
from cnnbuild.errors import UsageError, shape_str
from cnnbuild.escape import dot, mathtext
from cnnbuild.io import os_errors, write_text
from cnnbuild.trace import trace

ENGINES = ("auto", "keras", "matplotlib", "dot")
IMAGE_SUFFIXES = (".svg", ".png", ".pdf")


@dataclass
class Box:
    """One layer of the drawing."""

    name: str
    kind: str
    shape: str
    inputs: list[str]
    scope: tuple[str, ...]
    level: int = 0
    x: float = 0.0


def boxes(cfg: ModelConfig) -> list[Box]:
    """The input and every layer, with output shapes, placed on levels (longest path)."""
    tr = trace(cfg)
    out = [Box(INPUT, "Input", shape_str(cfg.input_shape), [], ())]
    level = {INPUT: 0}
    for row in tr.rows:
        node = row.node
        depth = 1 + max((level.get(n, 0) for n in node.inputs), default=0)
        level[node.name] = depth
        shape = shape_str(row.shape) if row.shape is not None else "?"
        out.append(Box(node.name, node.kind, shape, list(node.inputs), node.scope, depth))
    by_level: dict[int, list[Box]] = {}
    for box in out:
        by_level.setdefault(box.level, []).append(box)
    for row in by_level.values():
        for i, box in enumerate(row):
            box.x = i - (len(row) - 1) / 2
    return out


def _dot_id(name: str) -> str:
    return f'"{dot(name)}"'


def dot_text(cfg: ModelConfig) -> str:
    """The graph in Graphviz's DOT language, blocks as clusters."""
    items = boxes(cfg)
    lines = [
        f"digraph {_dot_id(cfg.name)} {{",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fillcolor="#eef4fb", fontname="Helvetica"];',
    ]
    tree: dict = {}
    for box in items:
        node = tree
        for part in box.scope:
            node = node.setdefault(part, {})
        node.setdefault("", []).append(box)
    counter = [0]

    def emit(node: dict, indent: str) -> None:
        for box in node.get("", []):
            label = f"{dot(box.name)}\\n{dot(box.kind)}  {box.shape}"
            lines.append(f'{indent}{_dot_id(box.name)} [label="{label}"];')
        for key, child in node.items():
            if key == "":
                continue
            counter[0] += 1
            lines.append(f"{indent}subgraph cluster_{counter[0]} {{")
            lines.append(f'{indent}  label="{dot(key)}"; style=dashed; color="#888888";')
            emit(child, indent + "  ")
            lines.append(f"{indent}}}")

    emit(tree, "  ")
    for box in items:
        for src in box.inputs:
            lines.append(f"  {_dot_id(src)} -> {_dot_id(box.name)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


DX, DY, BW, BH = 3.4, 1.0, 2.6, 0.62  # spacing and box size, in axis units


def _center(box: Box) -> tuple[float, float]:
    return box.x * DX, -box.level * DY


def _frames(ax: Any, items: list[Box]) -> None:
    """A dashed frame around each block's layers, labelled with the block's name."""
    from matplotlib.patches import FancyBboxPatch

    scopes: dict[tuple[str, ...], list[Box]] = {}
    for box in items:
        for k in range(1, len(box.scope) + 1):
            scopes.setdefault(box.scope[:k], []).append(box)
    deepest = max((len(s) for s in scopes), default=0)
    for scope, members in scopes.items():
        pad = 0.06 * (deepest - len(scope) + 1)
        xs = [_center(b)[0] for b in members]
        ys = [_center(b)[1] for b in members]
        left, right = min(xs) - BW / 2 - pad, max(xs) + BW / 2 + pad
        bottom, top = min(ys) - BH / 2 - pad, max(ys) + BH / 2 + pad
        frame = FancyBboxPatch(
            (left, bottom), right - left, top - bottom, boxstyle="round,pad=0.02",
            fill=False, ls="--", lw=0.8, ec="#888888",
        )  # fmt: skip
        ax.add_patch(frame)
        ax.text(left + 0.05, top - 0.02, mathtext(scope[-1]), fontsize=6, color="#555555", va="top")


def _layers(ax: Any, items: list[Box]) -> None:
    """Each layer as a box with its name, kind and shape, and an arrow from each input."""
    from matplotlib.patches import FancyBboxPatch

    at = {b.name: b for b in items}
    side = 0
    arrow = {"arrowstyle": "->", "lw": 0.8, "color": "#444444"}
    for box in items:
        x, y = _center(box)
        for src in box.inputs:
            sx, sy = _center(at[src])
            if box.level - at[src].level > 1 and sx == x:
                # a skip connection: around the column, on the right
                side += 1
                off = x + BW / 2 + 0.25 + 0.12 * (side % 3)
                ax.plot([sx + BW / 2, off, off], [sy, sy, y], lw=0.8, color="#aa4444")
                skip = {**arrow, "color": "#aa4444"}
                ax.annotate("", xy=(x + BW / 2, y), xytext=(off, y), arrowprops=skip)
                continue
            ax.annotate("", xy=(x, y + BH / 2), xytext=(sx, sy - BH / 2), arrowprops=arrow)
        fill = "#eef4fb" if box.name != INPUT else "#fff4e0"
        ax.add_patch(
            FancyBboxPatch(
                (x - BW / 2, y - BH / 2), BW, BH, boxstyle="round,pad=0.02",
                fc=fill, ec="#33557a", lw=0.8,
            )
        )  # fmt: skip
        ax.text(x, y + 0.1, mathtext(box.name), ha="center", va="center", fontsize=7, weight="bold")
        label = f"{mathtext(box.kind)}  {box.shape}"
        ax.text(x, y - 0.15, label, ha="center", va="center", fontsize=6.5)


def draw_matplotlib(cfg: ModelConfig, output: Path) -> None:
    """Draw the graph with matplotlib (no system binary, no TensorFlow); names are text,
    never mathtext."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError(
            "drawing without Graphviz needs matplotlib, which is not installed; install it "
            "with: pip install 'cnnbuild[train]', or write DOT text with -o model.dot"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnnbuild.io import save_figure

    items = boxes(cfg)
    levels = max(b.level for b in items) + 1
    width = max(sum(1 for b in items if b.level == lv) for lv in range(levels))
    fig, ax = plt.subplots(figsize=(1.5 + width * DX * 0.9, 0.6 + levels * DY * 0.62))
    ax.set_xlim(-width * DX / 2 - 0.2, width * DX / 2 + 0.5)
    ax.set_ylim(-levels * DY, 0.6)
    ax.axis("off")
    _frames(ax, items)
    _layers(ax, items)
    ax.set_title(mathtext(cfg.name), fontsize=10)
    save_figure(fig, output)
    plt.close(fig)


def graphviz_ready() -> str | None:
    """Why Keras' ``plot_model`` cannot run here, or ``None`` when it can."""
    if shutil.which("dot") is None:
        return "Graphviz's `dot` is not on the PATH"
    try:
        import pydot  # noqa: F401
    except ImportError:
        return "the Python package pydot is not installed"
    return None


def plot(cfg: ModelConfig, output: Path, engine: str = "auto", verbose: bool = False) -> str:
    """Draw ``cfg`` into ``output`` (.svg, .png, .pdf, or .dot for DOT text).

    Returns:
        A line for the user: what was written, and how.

    Raises:
        UsageError: an unknown engine or suffix, or ``keras`` without Graphviz.
        WriteError: ``output`` cannot be written (disk full, read-only, under a file).
    """
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
    output = Path(output)
    suffix = output.suffix.lower()
    if engine == "dot" or suffix == ".dot":
        if suffix != ".dot":
            raise UsageError("--engine dot writes DOT text; give an --output ending in .dot")
        with os_errors(output):
            write_text(output, dot_text(cfg))
        return (
            f"wrote {output} (Graphviz DOT text); render it with: "
            f"dot -Tsvg {output} -o {output.with_suffix('.svg')}"
        )
    if suffix not in IMAGE_SUFFIXES:
        raise UsageError(
            f"--output {output}: end it in .svg, .png, .pdf or .dot; "
            f"received {suffix or 'no suffix'!r}"
        )
    missing = graphviz_ready()
    if engine == "keras" and missing:
        raise UsageError(
            f"--engine keras: {missing}; install Graphviz (apt-get install graphviz) and "
            "pydot, or use --engine matplotlib"
        )
    if engine == "keras" or (engine == "auto" and missing is None):
        from cnnbuild.builder import build_model, keras_module
        from cnnbuild.io import atomic_write

        keras = keras_module(verbose)
        model = build_model(cfg, compile=False)
        with os_errors(output):
            atomic_write(
                output,
                lambda tmp: keras.utils.plot_model(
                    model,
                    to_file=tmp,
                    show_shapes=True,
                    show_layer_names=True,
                    show_layer_activations=True,
                    dpi=72,
                ),
                suffix=Path(output).suffix,
            )
        return f"wrote {output} with Keras' plot_model (Graphviz)"
    with os_errors(output):
        draw_matplotlib(cfg, output)
    why = f" ({missing}; install Graphviz and pydot for Keras' plot_model)" if missing else ""
    return f"wrote {output} with matplotlib from the static trace{why}"
