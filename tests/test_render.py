"""Rendering of views (cnnbuild/render.py)."""

from __future__ import annotations

from cnnbuild.render import summary_footer
from cnnbuild.validate import load_traced


def test_a_free_input_size_says_the_macs_and_memory_leave_layers_out(write):
    # found by the stranger tests: `input: [null, null, 3]` printed "MACs per image: 80"
    # for a model whose convolution's cost depends on the image size
    text = "input: [{}, 3]\nlayers:\n  - Conv2D: {{filters: 8, kernel_size: 3}}\n"
    text += "  - GlobalAveragePooling2D\n  - Dense: {{units: 10}}\n"
    _, free = load_traced(write(text.format("null, null"), "free.yaml"))
    _, fixed = load_traced(write(text.format("32, 32"), "fixed.yaml"))
    free_lines = summary_footer(free.summary_dict(), free.activation_bytes)
    fixed_lines = summary_footer(fixed.summary_dict(), fixed.activation_bytes)
    partial = "without the layers of a free height or width"
    assert free_lines[3].startswith(f"MACs per image: 80 (80; {partial}); ")
    assert free_lines[4].endswith(f"(every layer's output, float32; {partial})")
    assert not any(partial in line for line in fixed_lines)
