"""``cnnbuild plot``: every config drawn, without TensorFlow unless Keras draws it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from cnnbuild.insight.diagram import dot_text, graphviz_ready, plot
from cnnbuild.validate import load_config
from tests.conftest import CONFIGS, ROOT

ALL = sorted(CONFIGS.glob("*.yaml")) + sorted(CONFIGS.glob("zoo/*.yaml"))


@pytest.mark.parametrize("config", ALL, ids=lambda p: p.stem)
def test_matplotlib_fallback_draws_every_config(config, tmp_path):
    out = tmp_path / "model.png"
    message = plot(load_config(config), out, engine="matplotlib")
    assert "matplotlib" in message
    with Image.open(out) as image:
        width, height = image.size
    nodes = len(load_config(config).nodes)
    assert width > 200 and height > 20 * nodes  # one row of boxes per layer at least


@pytest.mark.parametrize("config", ALL, ids=lambda p: p.stem)
def test_dot_text_has_every_layer_edge_and_block(config, tmp_path):
    cfg = load_config(config)
    text = dot_text(cfg)
    for node in cfg.nodes:
        assert f'"{node.name}" [label="{node.name}\\n{node.kind}' in text
    edges = re.findall(r'^  "[^"]+" -> "[^"]+";$', text, flags=re.M)
    assert len(edges) == sum(len(node.inputs) for node in cfg.nodes)
    blocks = {node.scope[:k] for node in cfg.nodes for k in range(1, len(node.scope) + 1)}
    assert text.count("subgraph cluster_") == len(blocks)
    if shutil.which("dot"):
        (tmp_path / "m.dot").write_text(text)
        done = subprocess.run(
            ["dot", "-Tsvg", "m.dot", "-o", "m.svg"], cwd=tmp_path, capture_output=True
        )
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "m.svg").read_text().lstrip().startswith("<?xml")


def test_fallback_and_dot_import_no_tensorflow(tmp_path):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from cnnbuild.cli import main\n"
        "for args in (['-o', 'a.svg', '--engine', 'matplotlib'], ['-o', 'a.dot']):\n"
        f"    sys.argv = ['cnnbuild', 'plot', {str(CONFIGS / 'zoo/resnet20.yaml')!r}, *args]\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
        "assert Path('a.svg').read_text().lstrip().startswith('<?xml')\n"
        "print(Path('a.dot').read_text().splitlines()[0])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "render it with: dot -Tsvg a.dot -o a.svg" in done.stdout
    assert 'digraph "resnet20" {' in done.stdout


def test_auto_without_graphviz_falls_back_and_says_why(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": str(tmp_path)}  # no `dot` here
    done = subprocess.run(
        [sys.executable, "-m", "cnnbuild", "plot", CONFIGS / "shapes_demo.yaml", "-o", "m.png"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "with matplotlib from the static trace (Graphviz's `dot` is not on the PATH" in (
        done.stdout
    )
    assert (tmp_path / "m.png").stat().st_size > 0


@pytest.mark.skipif(graphviz_ready() is not None, reason=f"Keras plot_model: {graphviz_ready()}")
@pytest.mark.parametrize("name", ["shapes_demo", "zoo/resnet9"])
def test_keras_plot_model_with_graphviz(cli, name, tmp_path):
    out = tmp_path / "m.png"
    result = cli("plot", CONFIGS / f"{name}.yaml", "-o", out)
    assert result.exit_code == 0, result.output
    assert "Keras' plot_model" in result.stdout
    with Image.open(out) as image:
        assert image.size[1] > image.size[0]  # a top-to-bottom graph


def test_plot_usage_errors(cli, tmp_path):
    config = CONFIGS / "shapes_demo.yaml"
    result = cli("plot", config, "-o", tmp_path / "m.txt")
    assert result.exit_code == 2
    assert "end it in .svg, .png, .pdf or .dot" in result.stderr
    result = cli("plot", config, "-o", tmp_path / "m.svg", "--engine", "graphviz")
    assert result.exit_code == 2
    assert "choose one of auto, keras, matplotlib, dot" in result.stderr
    result = cli("plot", config, "-o", tmp_path / "m.svg", "--engine", "dot")
    assert result.exit_code == 2
    assert "ending in .dot" in result.stderr


@pytest.mark.parametrize(("size", "readonly"), [("4k", False), ("1m", True)])
def test_full_or_read_only_disk_is_a_message(tmp_path, cli, size, readonly):
    from tests.test_oserrors import _tmpfs

    with _tmpfs(tmp_path / "disk", size, readonly=readonly) as disk:
        out = disk / "run" / "model.png"
        result = cli("plot", CONFIGS / "shapes_demo.yaml", "-o", out, "--engine", "matplotlib")
        assert result.exit_code == 1, result.output
        reason = "Read-only file system" if readonly else "No space left on device"
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and reason in lines[0] and str(disk / "run") in lines[0], lines
        assert list((disk / "run").iterdir()) == []


def test_dot_text_escapes_names(write):
    """validate refuses such names; a name from elsewhere (an imported model) is escaped."""
    config = write(
        """
        name: tiny
        input: [8, 8, 3]
        layers: [Flatten, {Dense: {units: 2}}]
        """
    )
    cfg = load_config(config)
    cfg.name = 'say "hi" \\'
    assert dot_text(cfg).splitlines()[0] == 'digraph "say \\"hi\\" \\\\" {'
