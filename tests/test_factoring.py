"""Templates found in a layer list: exact (the same layers, names and arguments) or none."""

from __future__ import annotations

from cnnbuild.factoring import factor
from cnnbuild.importer import to_yaml
from cnnbuild.validate import check_file


def stage(prefix: str, filters: int, strides: int = 1) -> list[dict]:
    return [
        {
            "Conv2D": {
                "filters": filters,
                "kernel_size": 3,
                "strides": strides,
                "name": f"{prefix}_conv",
            }
        },
        {"BatchNormalization": {"name": f"{prefix}_bn"}},
        {"ReLU": {"name": f"{prefix}_relu"}},
        {
            "Residual": {
                "main": [
                    {"Conv2D": {"filters": filters, "kernel_size": 1, "name": f"{prefix}_pw"}}
                ],
                "name": f"{prefix}_add",
            }
        },
    ]


def expanded_names(layers: list, templates: dict, tmp_path) -> list[str]:
    config = {"name": "t", "input": [16, 16, 8], "input_scaling": "none"}
    if templates:
        config["blocks"] = templates
    config["layers"] = layers
    path = tmp_path / "t.yaml"
    path.write_text(to_yaml(config))
    cfg, _, findings = check_file(path)
    assert cfg is not None and not [f for f in findings if f.severity == "error"], findings
    return [n.name for n in cfg.nodes]


def test_runs_with_one_structure_become_uses_of_one_template(tmp_path):
    layers = [*stage("s1", 8), *stage("s2", 8), *stage("s3", 8, strides=2)]
    templates, out = factor(layers)
    assert list(templates) == ["s"]
    assert templates["s"]["params"] == ["strides"]
    assert out == [
        {"s": {"name": "s1", "strides": 1}},
        {"s": {"name": "s2", "strides": 1}},
        {"s": {"name": "s3", "strides": 2}},
    ]
    assert expanded_names(out, templates, tmp_path) == expanded_names(layers, {}, tmp_path)


def test_nothing_is_factored_when_a_layer_inside_is_read_from_outside(tmp_path):
    layers = [*stage("s1", 8), *stage("s2", 8)]
    layers.append({"Add": {"name": "sum", "inputs": ["s1_add", "s2_add"]}})
    templates, out = factor(layers)
    assert not templates and out == layers


def test_different_structures_and_single_runs_stay_as_written():
    one = stage("a1", 8)
    other = [{"Conv2D": {"filters": 8, "kernel_size": 3, "name": f"b1_c{i}"}} for i in range(5)]
    assert factor(one + other) == ({}, one + other)


def test_automatic_names_are_left_out_unless_read_or_different(tmp_path):
    from cnnbuild.factoring import drop_automatic_names

    layers = [
        {"Conv2D": {"filters": 4, "kernel_size": 3, "name": "conv2d"}},
        {"ReLU": {"name": "re_lu_7"}},  # not what cnnbuild would call it: kept
        {"Conv2D": {"filters": 4, "kernel_size": 1, "name": "conv2d_1"}},
        {"Residual": {"main": [{"ReLU": {"name": "re_lu"}}], "name": "add"}},
        {"Add": {"name": "add_1", "inputs": ["conv2d_1", "add"]}},
    ]
    out = drop_automatic_names(layers, {})
    assert out == [
        {"Conv2D": {"filters": 4, "kernel_size": 3}},
        {"ReLU": {"name": "re_lu_7"}},
        {"Conv2D": {"filters": 4, "kernel_size": 1, "name": "conv2d_1"}},  # read by inputs:
        {"Residual": {"main": [{"ReLU": None}], "name": "add"}},
        {"Add": {"inputs": ["conv2d_1", "add"]}},
    ]
    assert expanded_names(out, {}, tmp_path) == expanded_names(layers, {}, tmp_path)
