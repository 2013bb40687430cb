"""Lint rules: each has a YAML that triggers it (at an exact line and column) and the
same YAML fixed, which does not. Plus ignoring, --strict, and the rules table."""

from __future__ import annotations

import pytest

from cnnbuild.catalog import LOSSES, loss_spec, one_hot_classes, resolved_compile
from cnnbuild.checks import RULES
from cnnbuild.validate import check_file
from tests.conftest import CONFIGS, ROOT, run_cli

LINT = ROOT / "tests" / "data" / "lint"

# rule -> (line, column, severity, the fix as (old, new) text replacements)
CASES = {
    "dense-on-4d": (5, 5, "warning", [("  - Dense", "  - Flatten\n  - Dense")]),
    "softmax-logits": (5, 24, "error", [("from_logits: true", "from_logits: false")]),
    "classes-mismatch": (5, 13, "error", [("units: 100", "units: 10")]),
    "collapse-1x1": (5, 5, "warning", [("kernel_size: 3, strides: 2", "kernel_size: 3")]),
    "window-exceeds-input": (4, 20, "warning", [("pool_size: 8", "pool_size: 2")]),
    "stride-exceeds-kernel": (4, 42, "warning", [("strides: 3", "strides: 2")]),
    "linear-stack": (4, 5, "warning", [("kernel_size: 3}", "kernel_size: 3, activation: relu}")]),
    "huge-dense": (
        6,
        5,
        "warning",
        [("max_dense_params_million: 1", "max_dense_params_million: 40")],
    ),
    "stacked-scaling": (
        5,
        17,
        "warning",
        [("  - Rescaling: {scale: 0.00392156862745098}\n  - Rescaling", "  - Rescaling")],
    ),
    "raw-pixels": (5, 5, "warning", [("input_scaling: none\n", "")]),
    "bias-before-bn": (4, 5, "info", [("kernel_size: 3}", "kernel_size: 3, use_bias: false}")]),
    "duplicate-name": (
        5,
        66,
        "error",
        [("relu, name: c}\n  - GlobalAverage", "relu, name: d}\n  - GlobalAverage")],
    ),
    "duplicate-key": (7, 1, "error", [("name: dup_keys_again\n", "")]),
    "budget": (9, 3, "error", [("params: 1.2K", "params: 1.5K")]),
}


def findings_of(path, rule):
    _, _, findings = check_file(path)
    return [f for f in findings if f.rule == rule]


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_triggers_at_the_exact_position(rule):
    line, column, severity, _ = CASES[rule]
    found = findings_of(LINT / f"{rule}.yaml", rule)
    assert [(f.line, f.column, f.severity) for f in found] == [(line, column, severity)]
    if RULES[rule].lint:  # core rules word their own hints
        assert found[0].hint == RULES[rule].hint
    assert found[0].format().endswith(f"[{rule}]")


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_does_not_trigger_on_the_fixed_config(rule, tmp_path):
    text = (LINT / f"{rule}.yaml").read_text()
    for old, new in CASES[rule][3]:
        assert old in text
        text = text.replace(old, new)
    fixed = tmp_path / f"{rule}.yaml"
    fixed.write_text(text)
    assert findings_of(fixed, rule) == []
    _, _, everything = check_file(fixed)
    assert not [f for f in everything if f.severity == "error"], everything


def test_every_lint_rule_has_a_case():
    assert {r.id for r in RULES.values() if r.lint} <= set(CASES)


def _loss_config(write, loss: str, units: int, extra: str = "") -> list:
    path = write(f"""
        name: loss_check
        input: [32, 32, 3]
        layers:
          - GlobalAveragePooling2D
          - Dense: {{units: {units}}}
        compile: {{loss: {loss}{extra}}}
        train: {{dataset: cifar10}}
    """)
    return findings_of(path, "classes-mismatch")


@pytest.mark.parametrize(
    ("loss", "units", "message"),
    [
        ("binary_crossentropy", 10, "binary_crossentropy is for one yes/no output"),
        ("hinge", 1, "hinge is for one yes/no output"),
        ("categorical_crossentropy", 100, "the last layer needs units: 10"),
        ("sparse_categorical_crossentropy", 9, "the last layer needs units: 10"),
    ],
)
def test_loss_that_does_not_fit_the_labels(write, loss, units, message):
    found = _loss_config(write, loss, units)
    assert [message in f.message for f in found] == [True], [f.message for f in found]


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_lint_agrees_with_the_trainers_label_form(write, loss):
    """A loss fits integer-labelled cifar10 exactly when its label form lets the
    trainer feed it: one-hot losses are one-hot encoded by the trainer, so no error."""
    found = _loss_config(write, loss, 10)
    assert bool(found) == (loss_spec(loss).labels == "binary"), [f.message for f in found]
    assert one_hot_classes(loss, 10) == (10 if loss_spec(loss).labels == "one_hot" else None)


@pytest.mark.parametrize(
    ("activation", "written", "error"),
    [
        ("softmax", None, False),
        (None, None, False),
        ("softmax", "true", True),
        ("sigmoid", "true", True),
        (None, "false", True),
        ("softmax", "false", False),
        (None, "true", False),
        ("log_softmax", "true", False),
    ],
)
def test_softmax_logits_fires_only_on_a_written_contradiction(write, activation, written, error):
    act = f", activation: {activation}" if activation else ""
    logits = f", from_logits: {written}" if written else ""
    path = write(f"""
        name: head
        input: [4, 4, 1]
        layers:
          - Flatten
          - Dense: {{units: 3{act}}}
        compile: {{loss: sparse_categorical_crossentropy{logits}}}
    """)
    assert bool(findings_of(path, "softmax-logits")) == error
    cfg, _, _ = check_file(path)
    resolved = resolved_compile(cfg)
    expected = {"true": True, "false": False}.get(written, activation not in ("softmax",))
    assert resolved["from_logits"] is expected
    assert resolved["loss"] == "sparse_categorical_crossentropy"


@pytest.mark.parametrize(
    ("layers", "fires"),
    [
        (["Rescaling: {scale: 0.00392156862745098}", "Normalization"], False),
        (["Rescaling: {scale: 0.00392156862745098}", "Rescaling: {scale: 2}"], True),
        (["Normalization", "Normalization"], True),
        (["Rescaling: {scale: 0.5}", "RandomFlip", "Rescaling: {scale: 0.5}"], True),
        (
            [
                "Rescaling: {scale: 0.5, name: input_scaling}",
                "Conv2D: {filters: 2, kernel_size: 1, activation: relu}",
                "Rescaling: {scale: [0.0039, 0.0039]}",
            ],
            True,
        ),
        (
            [
                "Rescaling: {scale: 0.5}",
                "Conv2D: {filters: 2, kernel_size: 1, activation: relu}",
                "Rescaling: {scale: 3}",
            ],
            False,
        ),
        (["Rescaling: {scale: [0.5, 0.25]}"], False),
        (  # EfficientNet with imagenet weights
            ["Rescaling: {scale: 0.00392156862745098}", "Normalization", "Rescaling: {scale: 2}"],
            False,
        ),
        (
            [
                "Rescaling: {scale: 2}",
                "Normalization",
                "Rescaling: {scale: 2}",
                "Rescaling: {scale: 0.5}",
            ],
            True,
        ),
    ],
)
def test_stacked_scaling(write, layers, fires):
    body = "\n".join(f"          - {layer}" for layer in layers)
    path = write(f"""
        name: scalings
        input: [4, 4, 2]
        layers:
{body}
          - Flatten
          - Dense: {{units: 3}}
    """)
    found = findings_of(path, "stacked-scaling")
    assert len(found) == int(fires), [f.format() for f in found]


@pytest.mark.parametrize(
    ("first", "fires"),
    [
        ("Conv2D: {filters: 4, kernel_size: 1}", True),  # no scaling at all
        ("BatchNormalization", False),  # it scales its own input
        ("Normalization", False),
        ("Rescaling: {scale: 0.00784313725490196, offset: -1}", False),
        ("RandomFlip", True),  # augmentation is no scaling
    ],
)
def test_raw_pixels_looks_for_scaling_before_the_first_weighted_layer(write, first, fires):
    path = write(f"""
        name: pixels
        input: [8, 8, 3]
        input_scaling: none
        layers:
          - {first}
          - Conv2D: {{filters: 4, kernel_size: 3, activation: relu}}
          - GlobalAveragePooling2D
          - Dense: {{units: 2, activation: softmax}}
    """)
    found = findings_of(path, "raw-pixels")
    assert len(found) == int(fires), [f.format() for f in found]


@pytest.mark.parametrize(
    ("filters", "fires"),
    [(8, False), (32, True)],  # a 1x1 projection to fewer channels is a linear bottleneck
)
def test_linear_stack_spares_a_linear_bottleneck(write, filters, fires):
    """MobileNetV2's block: a 1x1 projection with no activation, BatchNormalization, then
    the next block's 1x1 expansion."""
    path = write(f"""
        name: bottleneck
        input: [8, 8, 16]
        layers:
          - Conv2D: {{filters: {filters}, kernel_size: 1, use_bias: false, name: project}}
          - BatchNormalization
          - Conv2D: {{filters: 48, kernel_size: 1, activation: relu6, name: expand}}
          - GlobalAveragePooling2D
          - Dense: {{units: 2, activation: softmax}}
    """)
    found = findings_of(path, "linear-stack")
    assert ["feeds 'expand'" in f.message for f in found] == [True] * fires, found


def test_ignore_in_config_and_on_the_command_line(cli, write):
    text = (LINT / "linear-stack.yaml").read_text()
    quiet = write(text + "lint: {ignore: [linear-stack]}\n")
    assert findings_of(quiet, "linear-stack") == []
    loud = write(text, "loud.yaml")
    result = cli("validate", loud)
    assert result.exit_code == 0 and "[linear-stack]" in result.output
    result = cli("validate", loud, "--ignore", "linear-stack")
    assert result.exit_code == 0 and "[linear-stack]" not in result.output
    result = cli("validate", loud, "--strict")
    assert result.exit_code == 1
    result = cli("validate", loud, "--ignore", "no-such-rule")
    assert result.exit_code == 2 and "unknown rule id 'no-such-rule'" in result.output


def test_unknown_rule_in_config_is_reported(write):
    path = write((LINT / "linear-stack.yaml").read_text() + "lint: {ignore: [linear-stak]}\n")
    _, _, findings = check_file(path)
    assert [
        (f.line, f.column, f.severity)
        for f in findings
        if "did you mean 'linear-stack'" in f.message
    ] == [(9, 17, "error")]


def test_core_rules_cannot_be_ignored(cli):
    result = cli("validate", LINT / "duplicate-key.yaml", "--ignore", "duplicate-key")
    assert result.exit_code == 2


@pytest.mark.parametrize("rid", ["schema", "duplicate-key", "linear-stak", "no-such-rule"])
def test_cli_and_config_refuse_an_id_with_one_message(cli, write, rid):
    """What cannot be ignored (a core rule) or is unknown: `--ignore` exits 2 and
    `lint: {ignore: [...]}` is an error, and both say the same thing."""
    from cnnbuild.checks import ignore_problem

    problem = ignore_problem(rid)
    assert problem is not None
    text = (LINT / "linear-stack.yaml").read_text()
    result = cli("validate", write(text, "plain.yaml"), "--ignore", rid)
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == f"error: --ignore {rid}: {problem}"
    _, _, findings = check_file(write(text + f"lint: {{ignore: [{rid}]}}\n"))
    assert [(f.rule, f.severity, f.message) for f in findings if f.path == "lint.ignore[0]"] == [
        ("schema", "error", problem)
    ]


def test_every_rule_the_cli_reports_but_the_core_can_be_ignored(cli, write):
    """dead-layer included: the README says the first seven cannot be ignored."""
    from cnnbuild.checks import RULES, ignore_problem

    core = [r.id for r in RULES.values() if not r.ignorable]
    assert core == list(RULES)[:7]
    assert all(ignore_problem(r) is None for r in list(RULES)[7:])
    text = """
        name: dead
        input: [8, 8, 3]
        layers:
          - Conv2D: {filters: 2, kernel_size: 3, name: unused}
          - Conv2D: {filters: 2, kernel_size: 3, inputs: input, activation: relu}
    """
    dead = write(text, "dead.yaml")
    assert [f.rule for f in check_file(dead)[2]] == ["dead-layer"]
    result = cli("validate", dead, "--ignore", "dead-layer", "--strict")
    assert result.exit_code == 0, result.output
    quiet = write(text.rstrip(" ") + "        lint: {ignore: [dead-layer]}\n", "quiet.yaml")
    assert check_file(quiet)[2] == []


def test_a_decoder_lints_like_keras_models_are_written(write):
    """A transposed convolution wider than its 1x1 input is how decoders start (no
    window warning); a convolution feeding another through UpSampling2D with no
    activation is still one linear map."""
    path = write("""
        name: decoder
        input: [1, 1, 8]
        layers:
          - Conv2DTranspose: {filters: 8, kernel_size: 4, activation: relu}
          - Conv2D: {filters: 4, kernel_size: 1}
          - UpSampling2D
          - Conv2D: {filters: 2, kernel_size: 3, padding: same, activation: relu}
    """)
    _, tr, findings = check_file(path)
    assert tr.output_shape == (8, 8, 2)
    assert [(f.rule, f.line) for f in findings] == [("linear-stack", 5)]


RESNET_SHORTCUT = """
    name: resnet_down
    input: [32, 32, 16]
    layers:
      - Residual:
          main:
            - Conv2D: {filters: 32, kernel_size: 3, strides: 2, padding: same, use_bias: false}
            - BatchNormalization
            - ReLU
            - Conv2D: {filters: 32, kernel_size: 3, padding: same, use_bias: false}
            - BatchNormalization
          shortcut:
            - Conv2D: {filters: 32, kernel_size: 1, strides: 2, use_bias: false}
            - BatchNormalization
      - ReLU
      - GlobalAveragePooling2D
      - Dense: {units: 10}
"""

XCEPTION_SHORTCUT = """
    name: xception_entry
    input: [64, 64, 3]
    layers:
      - Conv2D: {filters: 32, kernel_size: 3, strides: 2, use_bias: false, name: b1c1}
      - BatchNormalization
      - Activation: {activation: relu, name: b1act}
      - Conv2D: {filters: 128, kernel_size: 1, strides: 2, padding: same, use_bias: false,
                 inputs: b1act}
      - BatchNormalization: {name: residual}
      - SeparableConv2D: {filters: 128, kernel_size: 3, padding: same, use_bias: false,
                          inputs: b1act}
      - BatchNormalization
      - Activation: {activation: relu}
      - SeparableConv2D: {filters: 128, kernel_size: 3, padding: same, use_bias: false}
      - BatchNormalization
      - MaxPooling2D: {pool_size: 3, strides: 2, padding: same, name: pooled}
      - Add: {inputs: [pooled, residual]}
      - GlobalAveragePooling2D
      - Dense: {units: 2}
"""


@pytest.mark.parametrize("text", [RESNET_SHORTCUT, XCEPTION_SHORTCUT], ids=["resnet", "xception"])
def test_a_projection_shortcut_passes_validate_strict(cli, write, text):
    path = write(text)
    assert findings_of(path, "stride-exceeds-kernel") == []
    result = cli("validate", path, "--strict")
    assert result.exit_code == 0, result.output


def test_the_resnet20_zoo_model_passes_strict_without_ignoring_the_shortcut(cli, write):
    text = (ROOT / "configs" / "zoo" / "resnet20.yaml").read_text()
    assert "ignore: [stride-exceeds-kernel]" in text
    path = write(text.replace("ignore: [stride-exceeds-kernel]", "ignore: []"))
    result = cli("validate", path, "--strict")
    assert result.exit_code == 0, result.output


SHORTCUT_CONV = "- Conv2D: {filters: 32, kernel_size: 1, strides: 2, use_bias: false}"


def test_a_wider_conv_with_a_larger_stride_still_fires(write):
    shortcut = "- Conv2D: {filters: 32, kernel_size: 2, strides: 3, padding: same}"
    text = RESNET_SHORTCUT.replace(SHORTCUT_CONV, shortcut).replace(
        "kernel_size: 3, strides: 2", "kernel_size: 3, strides: 3"
    )
    _, tr, findings = check_file(write(text))
    assert tr.complete, [f.format() for f in findings]
    assert [f.rule for f in findings if f.severity != "info"] == ["stride-exceeds-kernel"]


def test_a_1x1_pooling_shortcut_into_a_merge_passes_like_resnet_v2(write):
    """keras.applications.ResNet50V2 subsamples its identity shortcut with
    MaxPooling2D(1, strides=2): the main path sees every pixel."""
    text = RESNET_SHORTCUT.replace(SHORTCUT_CONV, "- MaxPooling2D: {pool_size: 1, strides: 2}")
    text = text.replace("input: [32, 32, 16]", "input: [32, 32, 32]")
    _, tr, findings = check_file(write(text))
    assert tr.complete, [f.format() for f in findings]
    assert [f.rule for f in findings if f.severity != "info"] == []


def test_a_strided_1x1_conv_on_the_main_path_still_fires(write):
    path = write("""
        name: plain
        input: [16, 16, 3]
        layers:
          - Conv2D: {filters: 8, kernel_size: 1, strides: 2, activation: relu}
          - GlobalAveragePooling2D
          - Dense: {units: 2}
    """)
    assert len(findings_of(path, "stride-exceeds-kernel")) == 1


def test_an_unknown_layer_stops_the_rules_that_would_reason_through_it(write):
    """An unknown layer is not the identity: no dense-on-4d for the Dense after an
    unknown pooling, no linear-stack across an unknown activation, no dead layers."""
    path = write("""
        name: unknown
        input: [16, 16, 3]
        layers:
          - Conv2D: {filters: 8, kernel_size: 3}
          - Swish
          - Conv2D: {filters: 8, kernel_size: 3, activation: relu}
          - GlobalAveragePool2D
          - Dense: {units: 2}
    """)
    _, _, findings = check_file(path)
    assert [(f.rule, f.line) for f in findings] == [("unknown-layer", 5), ("unknown-layer", 7)]


def test_lint_findings_name_their_layer_once(write):
    for rule in ("linear-stack", "bias-before-bn", "collapse-1x1", "dense-on-4d"):
        (found,) = findings_of(LINT / f"{rule}.yaml", rule)
        name = found.message.split(":", 1)[0]
        assert f"'{name}'" not in found.message.split(":", 1)[1], found.message
        assert "Dense" not in found.message, found.message


def test_a_folder_dataset_whose_class_count_differs_from_the_units_is_a_finding(
    tmp_path, monkeypatch
):
    """validate lists the class folders (hidden ones and links left out, as the loader
    does) without TensorFlow, and positions the finding at the last layer's units."""
    for name in ("a", "b", "c", "d", "e", ".thumbs"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
    (tmp_path / "imgs" / "link").symlink_to(tmp_path / "imgs" / "a")
    text = (CONFIGS / "shapes_demo.yaml").read_text()
    config = tmp_path / "net.yaml"
    config.write_text(text.replace("dataset: shapes", "dataset: {folder: imgs}"))
    monkeypatch.chdir(tmp_path)  # a relative folder is read from the working folder, as train does
    result = run_cli("validate", config)
    assert result.exit_code == 1
    line = next(n for n, t in enumerate(text.splitlines(), 1) if "units: 10" in t)
    assert f"net.yaml:{line}:13: error: layers[7].Dense.units" in result.output
    assert "folder:imgs (5 class folders)" in result.output
    assert "the last layer needs units: 5" in result.output
    config.write_text(
        text.replace("dataset: shapes", "dataset: {folder: imgs}").replace("units: 10", "units: 5")
    )
    assert run_cli("validate", config).exit_code == 0
