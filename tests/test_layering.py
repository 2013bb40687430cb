"""The package's own source: imports run one way (no cycle, no upward or sibling import,
counting imports written inside functions; typing-only imports aside) and no function
body is over 60 lines. See docs/development.md, "How the code is laid out"."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cnnbuild"

# bottom -> top. A module may import modules of lower ranks, and modules of its own rank
# only inside its own package (train.fit -> train.evaluate). Names are module paths
# below cnnbuild; a package name covers all its modules.
LAYERS: list[set[str]] = [
    {"errors", "escape", "precision", "keras_patches", "schema"},  # schema: its empty __init__
    {"io", "backend", "cli_help"},  # cli_help: how --help reads, typer only
    # the static core, no TensorFlow: source -> schema -> catalog -> expand/config ->
    # trace -> checks -> validate
    {"source", "schema.types"},
    {"schema.layers", "schema.blocks", "expression", "shapes"},
    {"catalog"},
    {"schema.sections"},
    {"schema.tune"},
    {"expand"},
    {"config"},
    {"trace", "schema.jsonschema", "layers_doc"},
    {"checks", "render"},
    {"search_space"},  # tune's search space, checked by validate without Optuna
    {"transfer"},  # init: checked statically (the source's saved weights, by h5py)
    {"validate"},
    {"review", "factoring"},  # diff and --baseline; templates found in an imported graph
    # Keras models, datasets and the plots and strategies under training
    {"builder", "data", "charts", "distribute"},
    {"probe"},
    {"runs"},
    # siblings: none imports another
    {"train", "insight", "predict", "export", "importer", "findings_format"},
    {"tune"},
    {"", "cli"},  # "": the package's own __init__ (its public names)
    {"__main__"},
]


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _typing_only(tree: ast.AST) -> set[int]:
    """Ids of the nodes under ``if TYPE_CHECKING:``."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(child) for child in ast.walk(node))
    return skip


def _resolve(name: str) -> str | None:
    """The module of ours a dotted name (``cnnbuild.train.fit.train``) refers to."""
    if name != "cnnbuild" and not name.startswith("cnnbuild."):
        return None
    name = name.removeprefix("cnnbuild").removeprefix(".")
    while name not in MODULES:
        if not name:
            return None
        name = name.rpartition(".")[0]
    return name


def imports(module: str) -> set[str]:
    """The modules of ours ``module`` imports anywhere (functions included)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    skip = _typing_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "cnnbuild" and [a.name for a in node.names] == ["__version__"]:
                continue  # a constant of the package, not its API
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def _rank(module: str) -> int:
    """The rank of the most specific name in LAYERS that is ``module`` or its package."""
    best: tuple[int, int] | None = None
    for rank, layer in enumerate(LAYERS):
        for name in layer:
            covers = module == name or (name and module.startswith(name + "."))
            if covers and (best is None or len(name) > best[0]):
                best = (len(name), rank)
    assert best is not None, f"cnnbuild.{module} has no layer in LAYERS; add it"
    return best[1]


def _package(module: str) -> str:
    return module.split(".")[0]


def test_every_module_has_a_layer():
    for module in MODULES:
        _rank(module)


def test_no_import_cycle():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert cycles == []


def test_imports_go_down_the_layers():
    wrong = []
    for module, targets in GRAPH.items():
        for target in targets:
            mine, theirs = _rank(module), _rank(target)
            sibling = mine == theirs and _package(module) != _package(target)
            if theirs > mine or sibling:
                wrong.append(f"{module} -> {target}")
    assert sorted(wrong) == []


def test_the_layer_test_sees_imports_inside_functions():
    assert "runs" in GRAPH["predict"]
    assert "insight.flow" in GRAPH["insight.hooks"]  # imported inside a method
    assert not any(t.startswith("insight") for t in GRAPH["train.fit"])  # typing-only aside


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = fn.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
        body = body[1:]
    if not body:
        return 0
    return body[-1].end_lineno - body[0].lineno + 1


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_function_body_over_60_lines(module):
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    long = [
        f"{node.name} ({_body_lines(node)} lines, line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > 60
    ]
    assert long == []
