"""The expander: every problem in one run, the expansion budget, template arithmetic and
inputs, dead layers, deep nesting, and the files it refuses before reading them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cnnbuild.expand import MAX_NODES, budget, parse_templates
from cnnbuild.expression import ExpressionError, evaluate
from cnnbuild.source import parse_text
from cnnbuild.validate import check_file
from tests.conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def lines(findings) -> list[str]:
    return [f.format() for f in findings]


def test_a_typo_a_collapse_and_a_doubled_softmax_in_one_run(write):
    path = write("""
        input: [8, 8, 1]
        layers:
          - Conv2D: {filters: 4, kernal_size: 3, activation: relu}
          - Conv2D: {filters: 4, kernel_size: 3, activation: relu}
          - MaxPooling2D: {pool_size: 4}
          - Conv2D: {filters: 4, kernel_size: 3}
          - GlobalAveragePooling2D
          - Dense: {units: 10, activation: softmax}
        compile: {from_logits: true}
    """)
    _, _, findings = check_file(path)
    errors = [f for f in findings if f.severity == "error"]
    assert [(f.line, f.column, f.rule) for f in errors] == [
        (3, 26, "schema"),
        (6, 26, "shape"),
        (8, 24, "softmax-logits"),
    ]
    assert "did you mean 'kernel_size'?" in errors[0].message
    assert "needs `kernel_size`" not in " ".join(lines(findings))  # one finding per typo


def test_nested_empty_blocks_are_counted_before_expanding(write):
    text = """
        name: e
        input: [8, 8, 1]
        blocks:
          a: {layers: []}
          b: {layers: [{a: {repeat: 1000}}]}
          c: {layers: [{b: {repeat: 1000}}]}
          d: {layers: [{c: {repeat: 1000}}]}
        layers:
          - d: {repeat: 1000}
    """
    path = write(text)
    doc = parse_text(path.read_text(), str(path))
    templates = parse_templates(doc, doc.data["blocks"], [])
    assert budget(doc.data["layers"], templates) > MAX_NODES  # stops counting early
    cfg, _, findings = check_file(path)
    assert cfg.nodes == []
    assert lines(findings) == [
        f"{path}:8:1: error: layers: the model expands to more than 5,000 layers (counting "
        "every repeat and every use of a block); refusing to expand it [schema]"
    ]


def test_the_budget_counts_what_expansion_makes(write):
    path = write("""
        input: [8, 8, 1]
        blocks:
          unit:
            params: [f]
            layers:
              - Conv2D: {filters: $f, kernel_size: 1}
              - Residual: {main: [ReLU, {Conv2D: {filters: $f, kernel_size: 1}}]}
        layers:
          - unit: {f: 1, repeat: 3}
          - Parallel: {branches: [[ReLU], [ReLU, ReLU]]}
    """)
    doc = parse_text(path.read_text(), str(path))
    cfg, _, findings = check_file(path)
    assert not [f for f in findings if f.severity == "error"]
    # each use of a block and each Residual/Parallel counts one more than its layers
    expected = 3 * (1 + 1 + (1 + 2)) + (1 + 3)
    assert budget(doc.data["layers"], parse_templates(doc, doc.data["blocks"], [])) == expected
    assert len(cfg.nodes) == 1 + 3 * 4 + 4  # input_scaling, 3 x (conv, relu, conv, add), ...


def test_deeply_nested_templates_are_a_finding_not_a_recursion_error(write):
    chain = "".join(f"  t{i}:\n    layers: [t{i + 1}]\n" for i in range(2000))
    path = write(
        f"input: [8, 8, 1]\nblocks:\n{chain}  t2000:\n    layers: [Flatten]\nlayers: [t0]\n"
    )
    _, _, findings = check_file(path)
    assert any("blocks nest more than 32 levels deep" in f.message for f in findings)


def test_integers_beyond_pythons_limit_are_a_finding(write):
    path = write("input: [8, 8, 1]\nlayers:\n  - Dense: {units: " + "9" * 5000 + "}\n")
    _, _, findings = check_file(path)
    assert [(f.line, f.column, f.rule) for f in findings] == [(3, 20, "yaml")]
    assert "a number of 5000 characters" in findings[0].message


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("$f * 4", 32),
        ("$f // 3", 2),
        ("($w + 1) // 2", 5),
        ("-$f + 2 * 3", -2),
        ("2 * (3 + $f) - 1", 21),
        ("$name", "relu"),
    ],
)
def test_template_arithmetic(text, value):
    assert evaluate(text, {"f": 8, "w": 9, "name": "relu"}) == value


@pytest.mark.parametrize(
    ("text", "offset", "message"),
    [
        ("$f * ", 4, "expected a number or $parameter at character 5"),
        ("$f // 0", 3, "division by zero"),
        ("$g + 1", 0, "unknown template parameter $g"),
        ("$nme", 0, "unknown template parameter $nme; did you mean 'name'?"),
        ("$f ** 2", 4, "expected a number or $parameter"),
        ("$f + $name", 5, "$name is 'relu'; arithmetic needs an integer parameter"),
        ("__import__('os')", 0, "unexpected '_'"),
        ("(" * 40 + "1" + ")" * 40, 32, "too deeply nested"),
    ],
)
def test_template_arithmetic_errors_point_at_the_character(text, offset, message):
    with pytest.raises(ExpressionError) as exc:
        evaluate(text, {"f": 8, "name": "relu"})
    assert exc.value.offset == offset and message in exc.value.message


def test_arithmetic_errors_are_reported_at_file_line_col(write):
    path = write("""
        input: [8, 8, 1]
        blocks:
          b:
            params: [f]
            layers:
              - Conv2D: {filters: $f * 4, kernel_size: "$g // 2"}
              - Conv2D: {filters: $f // 0, kernel_size: 1}
        layers: [{b: {f: 2}}]
    """)
    cfg, _, findings = check_file(path)
    assert lines(findings) == [
        f"{path}:6:49: error: blocks.b.layers[0].Conv2D.kernel_size: unknown template "
        "parameter $g (in block 'b_1' used at line 8) [schema]",
        f"{path}:7:30: error: blocks.b.layers[1].Conv2D.filters: division by zero at "
        "character 4 of '$f // 0' (in block 'b_1' used at line 8) [schema]",
    ]
    good = write("""
        input: [8, 8, 1]
        blocks:
          b:
            params: [f]
            layers: [{Conv2D: {filters: $f * 4 - 1, kernel_size: 1}}]
        layers: [{b: {f: 2}}]
    """)
    cfg, tr, findings = check_file(good)
    assert not findings and cfg.nodes[-1].args.filters == 7 and tr.output_shape == (8, 8, 7)


CELL = """
    input: [16, 16, 3]
    blocks:
      cell:
        params: [filters]
        inputs: [x, prev]
        layers:
          - SeparableConv2D: {filters: $filters, kernel_size: 3, padding: same, name: a}
          - Conv2D: {filters: $filters, kernel_size: 1, inputs: prev, name: b}
          - Add: {inputs: [a, b]}
    layers:
      - Conv2D: {filters: 8, kernel_size: 3, padding: same, activation: relu, name: stem}
      - Conv2D: {filters: 8, kernel_size: 3, padding: same, activation: relu, name: c1}
      - cell: {filters: 8, inputs: [c1, stem], name: cell1}
      - cell: {filters: 8, inputs: [cell1, c1]}
      - GlobalAveragePooling2D
      - Dense: {units: 10, activation: softmax}
"""


def test_a_template_reads_several_inputs(write):
    cfg, tr, findings = check_file(write(CELL))
    assert findings == []
    by_name = {n.name: n for n in cfg.nodes}
    assert by_name["cell1_a"].inputs == ["c1"] and by_name["cell1_b"].inputs == ["stem"]
    assert by_name["cell_1_a"].inputs == ["cell1_add"] and by_name["cell_1_b"].inputs == ["c1"]
    assert tr.output_shape == (10,)


def test_a_template_given_the_wrong_number_of_inputs_is_an_error(write):
    text = CELL.replace("inputs: [c1, stem], name: cell1", "inputs: [c1], name: cell1")
    _, _, findings = check_file(write(text))
    (f,) = [f for f in findings if f.severity == "error"]
    assert f.line == 13 and f.path == "layers[2].cell.inputs"
    assert f.message == "block 'cell' takes 2 inputs (x, prev); received 1: 'c1'"
    one_input = write("""
        input: [8, 8, 1]
        blocks:
          unit: {layers: [ReLU]}
        layers:
          - Conv2D: {filters: 2, kernel_size: 1, name: a}
          - Conv2D: {filters: 2, kernel_size: 1, name: b}
          - unit: {inputs: [a, b]}
    """)
    _, _, findings = check_file(one_input)
    assert [f.message for f in findings if f.severity == "error"] == [
        "block 'unit' takes 1 input (input); received 2: 'a', 'b'"
    ]


DEAD = """
    input: [8, 8, 1]
    layers:
      - Conv2D: {filters: 4, kernel_size: 3, activation: relu, name: features}
      - Flatten: {name: flat}
      - Dense: {units: 8, activation: relu, name: aux}
      - Dense: {units: 10, activation: softmax, inputs: flat}
"""


def test_a_layer_nothing_reads_is_a_warning_and_is_not_counted(write):
    cfg, tr, findings = check_file(write(DEAD))
    assert [(f.line, f.column, f.severity, f.rule) for f in findings] == [
        (5, 5, "warning", "dead-layer")
    ]
    assert "layer 'aux' (Dense) is never read" in findings[0].message
    assert "aux" not in [n.name for n in cfg.nodes]
    # 4 * 9 + 4 (conv) + 6 * 6 * 4 * 10 + 10 (the output Dense); not aux's 1,160
    assert tr.total_params == 40 + 1450


@pytest.mark.slow
def test_static_counts_equal_keras_with_dead_layers_and_cells(write):
    from cnnbuild.builder import build_model, keras_summary

    for text in (DEAD, CELL):
        cfg, tr, _ = check_file(write(text))
        real = keras_summary(cfg, build_model(cfg, compile=False))
        static = tr.to_dict()
        assert real["total_params"] == static["total_params"]
        assert [row["name"] for row in real["layers"]] == [row["name"] for row in static["layers"]]


def test_not_a_regular_file_is_refused_before_reading(tmp_path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    for target in ("/dev/zero", str(fifo)):
        proc = subprocess.run(
            [sys.executable, "-m", "cnnbuild", "validate", target, "--format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=ENV,
        )
        assert proc.returncode == 1 and proc.stderr == ""
        (finding,) = json.loads(proc.stdout)
        assert finding["rule"] == "io" and "not a regular file" in finding["message"]


def test_a_large_file_is_refused_without_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# x\n" * 600_000)
    _, _, findings = check_file(path)
    assert [f.message for f in findings] == [
        "the file is 2400000 bytes; a model config is at most 2000000 bytes"
    ]


def test_help_imports_neither_pydantic_nor_the_layer_registry():
    code = (
        "import sys\nfrom cnnbuild.cli import main\nsys.argv = ['cnnbuild', '--help']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pydantic', 'yaml', 'tensorflow', 'keras') or m in "
        "('cnnbuild.catalog', 'cnnbuild.schema.layers', 'cnnbuild.config'))\n"
        "print(repr((code, heavy)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60
    )
    assert out.stdout.strip().splitlines()[-1] == "(0, [])"
    assert "Usage" in out.stdout


def test_import_cnnbuild_is_lazy_and_still_exports_its_api():
    code = (
        "import sys, cnnbuild\nbefore = 'pydantic' in sys.modules\n"
        "cfg = cnnbuild.load_config('configs/cifar10_tutorial.yaml')\n"
        "print(before, type(cfg).__name__, isinstance(cfg, cnnbuild.ModelConfig))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60
    )
    assert out.stdout.split() == ["False", "ModelConfig", "True"], out.stderr


# -- names built from parameters (issue 18.5) ------------------------------------------

MOBILE = """
    name: mobile
    input: [16, 16, 3]
    blocks:
      dw:
        params: [filters, id, {strides: 1}]
        layers:
          - DepthwiseConv2D:
              {kernel_size: 3, strides: $strides, padding: same, use_bias: false, name: conv_dw_$id}
          - BatchNormalization: {name: "conv_dw_${id}_bn"}
          - ReLU: {max_value: 6, name: "conv_dw_${id}_relu"}
          - Conv2D: {filters: $filters, kernel_size: 1, name: conv_pw_$id}
          - ReLU: {name: "conv_pw_${id}_relu"}
      stage:
        params: [stage, id]
        layers:
          - Conv2D: {filters: 8, kernel_size: 3, padding: same, name: "${stage}_${id}"}
          - Add: {inputs: [input, "${stage}_${id}"], name: "${stage}_add"}
    layers:
      - Conv2D: {filters: 8, kernel_size: 3, padding: same, activation: relu}
      - dw: {filters: 8, id: 1}
      - dw: {filters: 8, id: 2, strides: 2}
      - stage: {stage: s1, id: 7}
      - GlobalAveragePooling2D
      - Dense: {units: 10}
"""


def test_a_template_builds_keras_names_from_its_parameters(write):
    """``conv_dw_$id`` and ``${stage}_${id}`` are text in ``name`` (and in ``inputs``),
    used as written (no instance prefix), so a template keeps Keras' own layer names."""
    cfg, tr, findings = check_file(write(MOBILE))
    assert findings == []
    names = [n.name for n in cfg.nodes]
    assert names[2:7] == [
        "conv_dw_1",
        "conv_dw_1_bn",
        "conv_dw_1_relu",
        "conv_pw_1",
        "conv_pw_1_relu",
    ]
    assert "conv_dw_2" in names and "s1_7" in names and "s1_add" in names
    assert cfg.node("s1_add").inputs == ["conv_pw_2_relu", "s1_7"]
    assert tr.row("conv_dw_2").shape == (8, 8, 8)


def test_the_json_schema_takes_both_forms_and_no_text_in_numbers():
    import jsonschema
    import yaml

    from cnnbuild.schema.jsonschema import json_schema

    schema = json_schema()
    doc = yaml.safe_load(MOBILE.replace("\n    ", "\n"))
    assert list(jsonschema.Draft7Validator(schema).iter_errors(doc)) == []
    bad = yaml.safe_load(
        MOBILE.replace("\n    ", "\n").replace("strides: $strides", "strides: s$strides")
    )
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "name: conv_dw_$id}",
            "name: conv_dw_$idx}",
            "unknown template parameter $idx; did you mean 'id'?",
        ),
        (
            "filters: $filters, kernel_size: 1",
            "filters: f$filters, kernel_size: 1",
            "template arithmetic takes integers",
        ),
        ("name: conv_pw_$id}", "name: conv_pw_$}", "unexpected '$' in the name 'conv_pw_$'"),
        (
            "- dw: {filters: 8, id: 1}",
            "- dw: {filters: 8, id: [1]}",
            "$id is [1]; a name takes text or integer parameters",
        ),
    ],
    ids=["unknown", "text-in-a-number", "stray-dollar", "a-list"],
)
def test_template_name_errors(write, old, new, message):
    assert old in MOBILE
    _, _, findings = check_file(write(MOBILE.replace(old, new, 1)))
    assert any(message in f.message for f in findings), lines(findings)


def test_two_uses_that_build_the_same_name_are_duplicates(write):
    text = MOBILE.replace("- dw: {filters: 8, id: 2, strides: 2}", "- dw: {filters: 8, id: 1}")
    _, _, findings = check_file(write(text))
    assert {f.rule for f in findings if f.severity == "error"} == {"duplicate-name"}


# -- Python habits and unknown names (issue 18.9, 18.4) ----------------------------------


@pytest.mark.parametrize(
    ("layer", "arg", "hint"),
    [
        (
            "Conv2D: {filters: 4, kernel_size: (3, 3)}",
            "kernel_size",
            "write [3, 3]: YAML has no tuples",
        ),
        (
            "Conv2D: {filters: 4, kernel_size: (3,3), strides: (1, 2)}",
            "kernel_size",
            "write [3, 3]",
        ),
        ("Conv2D: {filters: 4, kernel_size: 3, activation: None}", "activation", "write null"),
        ("Rescaling: {scale: 1./255}", "scale", "write the number 0.00392156862745098"),
        ("Rescaling: {scale: 1/255}", "scale", "write the number 0.00392156862745098"),
        (
            "BatchNormalization: {epsilon: 1e-5}",
            "epsilon",
            "write 0.00001: YAML 1.1 reads 1e-5 as text",
        ),
    ],
)
def test_python_habits_get_one_finding_with_the_yaml_spelling(write, layer, arg, hint):
    path = write(f"""
        input: [8, 8, 3]
        layers:
          - {layer}
          - Flatten
    """)
    cfg, tr, findings = check_file(path)
    mine = [f for f in findings if f.path.endswith(f".{arg}")]
    assert len(mine) == 1 and hint in mine[0].hint, lines(findings)
    assert mine[0].message.startswith("YAML reads") and mine[0].severity == "error"
    others = [f for f in findings if f not in mine and f.severity == "error"]
    assert len(others) == layer.count("(1, 2)"), lines(findings)  # strides: (1, 2) too
    assert tr is not None and tr.complete  # read as meant: the rest is still checked


def test_block_style_tuples_get_the_same_hint(write):
    path = write("""
        input: [8, 8, 3]
        layers:
          - Conv2D:
              filters: 4
              kernel_size: (3, 3)
          - Flatten
    """)
    _, _, findings = check_file(path)
    assert [(f.line, f.column, f.hint) for f in findings] == [
        (5, 20, "write [3, 3]: YAML has no tuples")
    ]


@pytest.mark.parametrize(
    ("kind", "suggestion"),
    [
        ("GroupNormalizaton", "GroupNormalization"),
        ("Conv2d", "Conv2D"),
        ("MaxPool2d", "MaxPool2D"),
        ("GlobalAvgPooling2D", "GlobalAvgPool2D"),
        ("InstanceNormalization", None),
        ("SyncBatchNormalization", None),
    ],
)
def test_unknown_layer_suggestions_do_not_mislead(write, kind, suggestion):
    path = write(f"""
        input: [8, 8, 3]
        layers:
          - {kind}
          - Flatten
    """)
    _, _, findings = check_file(path)
    (found,) = [f for f in findings if f.rule == "unknown-layer"]
    if suggestion is None:  # never the preprocessing layer that only drops a word
        assert "'Normalization'" not in found.message, found.message
    else:
        assert f"did you mean {suggestion!r}?" in found.message


def test_a_model_that_ends_in_an_unknown_layer_is_one_error(write):
    path = write("""
        input: [8, 8, 3]
        layers:
          - Conv2D: {filters: 4, kernel_size: 3}
          - Flatten
          - Dens: {units: 10, activation: softmax}
        compile: {from_logits: true}
        train: {dataset: cifar10}
    """)
    _, _, findings = check_file(path)
    assert [f.rule for f in findings] == ["unknown-layer"]
    assert "did you mean 'Dense'?" in findings[0].message


def test_keras_positional_arguments_are_named_and_not_read_as_the_identity(write):
    # found by the stranger tests: keras.io writes Activation("relu"); `Activation: relu`
    # dropped the layer, so lint saw SeparableConv2D -> BN -> SeparableConv2D (linear-stack)
    path = write("""
        input: [16, 16, 3]
        layers:
          - SeparableConv2D: {filters: 8, kernel_size: 3, padding: same}
          - BatchNormalization
          - Activation: relu
          - SeparableConv2D: {filters: 8, kernel_size: 3, padding: same}
          - MaxPooling2D: 2
          - Conv2D: {filters: 8, kernel_size: 1}
          - GlobalAveragePooling2D
          - Dense: 10
    """)
    _, _, findings = check_file(path)
    assert [(f.line, f.rule, f.severity) for f in findings if f.severity != "info"] == [
        (5, "schema", "error"),
        (7, "schema", "error"),
        (10, "schema", "error"),
    ]
    messages = [f.message for f in findings if f.rule == "schema"]
    assert messages[0].endswith(
        "received 'relu' (YAML names each argument: write `Activation: {activation: relu}`)"
    )
    assert messages[1].endswith("(YAML names each argument: `MaxPooling2D: {argument: value}`)")
    assert messages[2].endswith("(YAML names each argument: write `Dense: {units: 10}`)")


def test_keras_ways_of_giving_the_input_point_at_the_top_level_input(write):
    # found by the stranger tests: Sequential's habits were a bare "unknown layer 'Input'"
    # and "unknown argument 'input_shape'", with no word on where the input goes
    path = write("""
        input: [28, 28, 1]
        layers:
          - InputLayer: {shape: [28, 28, 1]}
          - Conv2D: {filters: 8, kernel_size: 3, input_shape: [28, 28, 1]}
    """)
    _, _, findings = check_file(path)
    assert [(f.line, f.column, f.rule) for f in findings] == [
        (3, 5, "unknown-layer"),
        (4, 42, "schema"),
    ]
    top = "give it once, at the top: `input: [height, width, channels]`"
    assert findings[0].message == (
        f"unknown layer 'InputLayer'; a config's input is not a layer: {top}"
    )
    assert findings[1].message == f"input_shape is not a layer argument in a config: {top}"


def test_a_name_that_cannot_be_built_is_not_also_a_duplicate(write):
    # found by the stranger tests: two uses with float ids left the raw 'c_$id' twice,
    # which added a false duplicate-name error to the two real ones
    path = write("""
        input: [8, 8, 1]
        blocks:
          b:
            params: [id]
            layers:
              - Conv2D: {filters: 4, kernel_size: 3, padding: same, activation: relu, name: c_$id}
        layers:
          - b: {id: 1.5}
          - b: {id: 2.5}
          - GlobalAveragePooling2D
    """)
    _, _, findings = check_file(path)
    assert [f.rule for f in findings] == ["schema", "schema"]
    assert all("a name takes text or integer parameters" in f.message for f in findings)


def test_a_block_reading_a_layer_outside_it_says_how_to_pass_it_in(write):
    # found by the stranger tests: "unknown input 'stem': no earlier layer has that name"
    # for a layer that does exist, outside the block
    path = write("""
        input: [8, 8, 1]
        blocks:
          b:
            layers:
              - Conv2D: {filters: 4, kernel_size: 1, name: c}
              - Add: {inputs: [stem, c]}
        layers:
          - Conv2D: {filters: 4, kernel_size: 1, name: stem}
          - b
    """)
    _, _, findings = check_file(path)
    errors = [f for f in findings if f.severity == "error"]
    assert [(f.line, f.path) for f in errors] == [(6, "blocks.b.layers[1].Add.inputs[0]")]
    assert errors[0].message.startswith(
        "unknown input 'stem': a block reads only its own layers and its inputs (`input`, or "
        "the names in the block's `inputs:`); pass it in through `inputs:`"
    )
