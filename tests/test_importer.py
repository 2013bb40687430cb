"""`cnnbuild import`: saved Keras models as configs, checked against the originals.

Every round trip is checked the same way, against Keras alone: the imported YAML
validates; `summary --static --json` gives Keras' trainable and non-trainable counts;
the config built by cnnbuild, with the original's weights loaded layer by layer by
name, computes the original's outputs in inference mode. Each Keras model is built once
per module (keras.applications models cost seconds of CPU each).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from cnnbuild.importer import ImportRefused, import_config, to_yaml
from cnnbuild.validate import load_traced
from tests.conftest import CONFIGS, ROOT, run_cli

keras = pytest.importorskip("keras")
L = keras.layers

FAST = {  # family -> (application, input shape): cheap enough for every run
    "mobilenet_v3": ("MobileNetV3Small", (96, 96, 3)),
    "mobilenet_v2": ("MobileNetV2", (96, 96, 3)),
    "efficientnet": ("EfficientNetB0", (64, 64, 3)),
}
SLOW = {
    "densenet": ("DenseNet121", (32, 32, 3)),
    "resnet_v2": ("ResNet50V2", (32, 32, 3)),
    "xception": ("Xception", (71, 71, 3)),
    "nasnet": ("NASNetMobile", (32, 32, 3)),
    "vgg": ("VGG16", (32, 32, 3)),
    "mobilenet": ("MobileNet", (32, 32, 3)),
}


@functools.cache
def application(name: str, shape: tuple) -> object:
    """``keras.applications.NAME`` as a fresh process builds it: in float32, whatever
    policy an earlier test's training left global (train sets it; bf16 on this CPU), and
    with Keras' automatic names counted from zero."""
    from cnnbuild.builder import keras_module

    keras_module()
    keras.mixed_precision.set_global_policy("float32")
    keras.backend.clear_session(free_memory=False)  # automatic names (`add`), as when fresh
    return getattr(keras.applications, name)(weights=None, input_shape=shape)


def keras_counts(model) -> tuple[int, int]:
    def count(weights):
        return int(sum(np.prod(w.shape) for w in weights))

    return count(model.trainable_weights), count(model.non_trainable_weights)


def write_import(model, path):
    """The imported YAML of a live Keras model, written to ``path``."""
    path.write_text(to_yaml(import_config(keras.saving.serialize_keras_object(model))))
    return path


def rebuilt_with_weights(original, path):
    """The config at ``path`` built by cnnbuild, holding ``original``'s weights by name."""
    from cnnbuild.builder import build_model

    cfg, _ = load_traced(path)
    model = build_model(cfg, compile=False)
    copied = 0
    for layer in original.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
            copied += 1
    assert copied == sum(1 for layer in model.layers if layer.weights)
    return model


def assert_same_model(original, path, shape):
    result = run_cli("validate", path)
    assert result.exit_code == 0, result.output
    result = run_cli("summary", "--static", "--json", path)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["trainable_params"], data["non_trainable_params"]) == keras_counts(original)
    assert data["total_params"] == original.count_params()
    x = np.random.default_rng(0).uniform(0, 255, (2, *shape)).astype("float32")
    expected = np.asarray(original(x, training=False))
    model = rebuilt_with_weights(original, path)
    got = np.asarray(model(x, training=False))
    assert got.shape == expected.shape
    assert float(np.max(np.abs(got - expected))) < 1e-4
    return model


def _family(params):
    return [pytest.param(*spec, id=family) for family, spec in params.items()]


@pytest.mark.parametrize(("name", "shape"), _family(FAST))
def test_applications_import_exactly(name, shape, tmp_path):
    original = application(name, shape)
    path = write_import(original, tmp_path / "model.yaml")
    assert_same_model(original, path, shape)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "shape"), _family(SLOW))
def test_more_application_families_import_exactly(name, shape, tmp_path):
    original = application(name, shape)
    path = write_import(original, tmp_path / "model.yaml")
    assert_same_model(original, path, shape)


def test_blocks_are_written_where_exact(tmp_path):
    """MobileNetV3: residuals and squeeze-and-excitation (a Multiply with the block's
    input) become Residual blocks; `x + 3` and `x / 6` of hard-sigmoid become Rescaling."""
    original = application(*FAST["mobilenet_v3"])
    text = write_import(original, tmp_path / "m.yaml").read_text()
    assert text.count("- Residual:") == 15 and "inputs:" not in text
    assert "merge: Multiply" in text
    assert "- Rescaling: {scale: 1.0, offset: 3.0, name: add}" in text
    assert "data_format" not in text and "glorot_uniform" not in text  # Keras' defaults
    assert "input_scaling" not in text  # the model scales its own inputs
    cfg, _ = load_traced(tmp_path / "m.yaml")
    operations = {op.name for op in original.operations if not isinstance(op, L.InputLayer)}
    assert {n.name for n in cfg.nodes} == operations  # every name kept, keras.ops included


def test_cli_imports_an_application_and_convnext_is_refused_naming_layerscale(tmp_path):
    out = tmp_path / "m.yaml"
    result = run_cli(
        "import", "keras.applications.MobileNetV3Small", "--input-shape", "96,96,3", "-o", out
    )
    assert result.exit_code == 0, result.output
    assert "2,554,968 parameters" in result.stdout
    assert out.read_text().startswith("# imported from keras.applications.MobileNetV3Small")
    result = run_cli("import", "keras.applications.MobileNetV3Small", "-o", out)
    assert result.exit_code == 2 and "exists; give --force" in result.stderr
    result = run_cli(
        "import",
        "keras.applications.ConvNeXtTiny",
        "--input-shape",
        "32,32,3",
        "-o",
        tmp_path / "c",
    )
    assert result.exit_code == 1
    assert "LayerScale (keras.src.applications.convnext): 18 layers" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "c").exists()
    for bad in (["keras.applications.NoSuchNet"], ["x.keras"], ["--input-shape", "9,9", "x"]):
        result = run_cli("import", *bad)
        assert result.exit_code == 2 and "error:" in result.stderr, result.output


def augmenting_sequential():
    return keras.Sequential(
        [
            keras.Input((24, 24, 3)),
            L.RandomFlip("horizontal"),
            L.RandomRotation(0.1),
            L.RandomZoom(0.1),
            L.Rescaling(1 / 255),
            L.Conv2D(
                8,
                3,
                padding="same",
                kernel_initializer="he_normal",
                kernel_regularizer=keras.regularizers.L2(1e-3),
                kernel_constraint=keras.constraints.MaxNorm(3.0),
                name="conv",
            ),
            L.BatchNormalization(momentum=0.9),
            L.ReLU(),
            L.MaxPooling2D(),
            L.Flatten(),
            L.Dropout(0.3),
            L.Dense(5, activation="softmax", name="head"),
        ],
        name="augmenting",
    )


@pytest.fixture(scope="module")
def saved_sequential(tmp_path_factory):
    keras.backend.clear_session(free_memory=False)  # automatic names as in a fresh process
    model = augmenting_sequential()
    path = tmp_path_factory.mktemp("seq") / "seq.keras"
    model.save(path)
    return model, path


def test_a_saved_sequential_imports_with_its_arguments(saved_sequential, tmp_path):
    model, path = saved_sequential
    out = tmp_path / "seq.yaml"
    result = run_cli("import", path, "-o", out)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "inputs:" not in text and "input_scaling" not in text
    assert text.split("layers:\n", 1)[1].splitlines() == [
        "  - RandomFlip: {mode: horizontal}",
        "  - RandomRotation: {factor: [-0.1, 0.1]}",
        "  - RandomZoom: {height_factor: 0.1}",
        "  - Rescaling: {scale: 0.00392156862745098}",
        "  - Conv2D: {filters: 8, kernel_size: 3, padding: same, kernel_initializer: he_normal, "
        "kernel_regularizer: {l2: {l2: 0.001}}, kernel_constraint: {max_norm: {max_value: 3.0, "
        "axis: 0}}, name: conv}",
        "  - BatchNormalization: {momentum: 0.9}",
        "  - ReLU",
        "  - MaxPooling2D",
        "  - Flatten",
        "  - Dropout: {rate: 0.3}",
        "  - Dense: {units: 5, activation: softmax, name: head}",
    ]
    assert_same_model(model, out, (24, 24, 3))


def test_summary_and_trace_take_a_saved_model_or_run_directory(saved_sequential, tmp_path):
    model, path = saved_sequential
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(path.read_bytes())
    for target in (path, run):
        result = run_cli("summary", "--static", "--json", target)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["total_params"] == model.count_params()
        result = run_cli("trace", "--json", target)
        assert result.exit_code == 0, result.output
        names = [layer["name"] for layer in json.loads(result.stdout)["layers"]]
        assert names == [layer.name for layer in model.layers]


def test_summary_of_a_keras_file_needs_no_tensorflow(saved_sequential):
    _, path = saved_sequential
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from cnnbuild.cli import app\n"
        f"r = CliRunner().invoke(app, ['summary', '--static', {str(path)!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_a_model_without_scaling_imports_with_input_scaling_none(tmp_path):
    inputs = keras.Input((8, 8, 3), name="pixels")
    aug = keras.Sequential([L.RandomFlip(), L.RandomContrast(0.2)], name="augment")
    x = aug(inputs)
    x = L.Conv2D(4, 3, name="c1")(x)
    y = L.Conv2D(4, 1, name="c2")(x)
    merged = L.Concatenate(name="cat")([y, x])  # not [x, y]: a Parallel keeps the order
    out = L.GlobalAveragePooling2D(name="gap")(merged)
    model = keras.Model(inputs, out, name="nested")
    path = write_import(model, tmp_path / "n.yaml")
    text = path.read_text()
    assert "input_scaling: none" in text and "- Parallel:" in text
    cfg, _ = load_traced(path)
    flattened = [layer.name for layer in aug.layers]
    assert [n.name for n in cfg.nodes] == [*flattened, "c1", "c2", "cat", "gap"]
    assert cfg.node("c1").inputs == [flattened[-1]] and cfg.node("cat").inputs == ["c2", "c1"]
    assert "input_scaling" not in [n.name for n in cfg.nodes]
    assert_same_model(model, path, (8, 8, 3))


def test_shared_layers_and_custom_classes_are_refused_with_counts(tmp_path):
    inputs = keras.Input((8, 8, 3))
    conv = L.Conv2D(3, 1, name="shared")
    x = conv(conv(inputs))
    x = L.Lambda(lambda t: t * 2, name="code")(x)
    model = keras.Model(inputs, L.Flatten()(x))
    with pytest.raises(ImportRefused) as info:
        import_config(keras.saving.serialize_keras_object(model))
    message = str(info.value)
    assert "Conv2D: a layer called 2 times (shared weights): 1 layer" in message
    assert "Lambda: 1 layer" in message


def test_a_hostile_archive_is_refused_before_reading(tmp_path):
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", b" " * (65 * 2**20))
    result = run_cli("import", bomb)
    assert result.exit_code == 1 and "declares 68,157,440 bytes" in result.stderr
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    result = run_cli("summary", "--static", junk)
    assert result.exit_code == 1 and "not a .keras archive" in result.stderr


def _layer_configs(model) -> list:
    return [(type(layer).__name__, layer.get_config()) for layer in model.layers]


def _build_import_rebuild(path, tmp_path):
    from cnnbuild.builder import build_model

    cfg, _ = load_traced(path)
    original = build_model(cfg, compile=False)
    imported = write_import(original, tmp_path / "imported.yaml")
    again = build_model(load_traced(imported)[0], compile=False)
    assert _layer_configs(again) == _layer_configs(original)
    assert again.count_params() == original.count_params()
    return original, cfg


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_import_of_what_build_produced_builds_the_same_model(path, tmp_path):
    original, cfg = _build_import_rebuild(path, tmp_path)
    assert_same_model(original, tmp_path / "imported.yaml", cfg.input_shape)


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted((CONFIGS / "zoo").glob("*.yaml")), ids=lambda p: p.stem)
def test_import_of_each_zoo_build_gives_the_same_layers(path, tmp_path):
    _build_import_rebuild(path, tmp_path)


def test_the_import_guide_example_is_real_output(tmp_path):
    readme = (ROOT / "docs" / "guides" / "import.md").read_text()
    example = readme.split("$ cnnbuild import keras.applications.MobileNetV3Small", 1)[1]
    example = example.split("$ cnnbuild import keras.applications.ConvNeXtTiny", 1)[0]
    example, v2_part = example.split(
        "$ cnnbuild import keras.applications.MobileNetV2 -o v2.yaml\n"
    )
    yaml_part, summary_part = example.split("$ cnnbuild summary --static m.yaml\n")
    yaml_lines = yaml_part.split("$ head -22 m.yaml\n")[1].splitlines()
    out = tmp_path / "m.yaml"
    result = run_cli(
        "import", "keras.applications.MobileNetV3Small", "--input-shape", "224,224,3", "-o", out
    )
    assert result.exit_code == 0, result.output
    assert f"{result.stdout.strip()[:60]}" in yaml_part
    assert out.read_text().splitlines()[:22] == yaml_lines
    result = run_cli("summary", "--static", out)
    assert result.exit_code == 0, result.output
    shown = [line.rstrip() for line in result.stdout.splitlines()]
    head, tail = (part.strip("\n").splitlines() for part in summary_part.split("...\n"))
    assert shown[: len(head)] == head and shown[-len(tail) :] == tail
    said, v2_lines = v2_part.split("$ sed -n '5,9p;52,56p' v2.yaml\n")
    result = run_cli("import", "keras.applications.MobileNetV2", "-o", tmp_path / "v2.yaml")
    shown = result.stdout.replace(str(tmp_path) + "/", "")
    assert result.exit_code == 0 and shown.split() == said.split()  # the console wraps
    written = (tmp_path / "v2.yaml").read_text().splitlines()
    assert written[4:9] + written[51:56] == v2_lines.splitlines()


def _mutations(value, rng, depth=0):
    """``value`` with one random node replaced by a hostile value."""
    hostile = [None, 0, -1, "x", [], {}, [None], {"class_name": "__keras_tensor__"}, 1e308]
    if isinstance(value, dict) and value and depth < 40:
        key = list(value)[rng.integers(len(value))]
        if rng.random() < 0.3:
            return {**value, key: hostile[rng.integers(len(hostile))]}
        return {**value, key: _mutations(value[key], rng, depth + 1)}
    if isinstance(value, list) and value and depth < 40:
        i = int(rng.integers(len(value)))
        if rng.random() < 0.3:
            return [*value[:i], hostile[rng.integers(len(hostile))], *value[i + 1 :]]
        return [*value[:i], _mutations(value[i], rng, depth + 1), *value[i + 1 :]]
    return hostile[rng.integers(len(hostile))]


def test_a_mangled_config_is_refused_or_imported_never_a_traceback(saved_sequential, tmp_path):
    """Random damage to a real config.json: import refuses it (exit 1 or 2) or writes a
    config that validates; nothing else."""
    from cnnbuild.errors import CnnbuildError
    from cnnbuild.runs import saved_config

    _, path = saved_sequential
    serialized = saved_config(path)
    rng = np.random.default_rng(0)
    imported = 0
    for i in range(300):
        try:
            config = import_config(_mutations(serialized, rng))
        except CnnbuildError:
            continue
        out = tmp_path / f"m{i}.yaml"
        out.write_text(to_yaml(config))
        result = run_cli("validate", out)
        assert result.exit_code == 0, result.output
        imported += 1
    assert 0 < imported < 300


def _tensor(name):
    return {"class_name": "__keras_tensor__", "config": {"keras_history": [name, 0, 0]}}


def _relu(name, source):
    return {
        "module": "keras.layers",
        "class_name": "ReLU",
        "config": {"name": name},
        "name": name,
        "inbound_nodes": [{"args": [_tensor(source)], "kwargs": {}}],
    }


def test_a_cycle_or_an_unknown_source_is_refused_not_followed():
    inputs = {"class_name": "InputLayer", "config": {"batch_shape": [None, 8, 8, 3]}, "name": "x"}
    for layers, why in (
        ([_relu("a", "b"), _relu("b", "a")], "a cycle through 2 layers"),
        ([_relu("a", "ghost"), _relu("b", "a")], "ReLU: reads 'ghost', which is not in the model"),
    ):
        config = {"name": "m", "layers": [inputs, *layers], "input_layers": [["x", 0, 0]]}
        config["output_layers"] = [["b", 0, 0]]
        with pytest.raises(ImportRefused, match=why):
            import_config({"class_name": "Functional", "config": config})


def test_diff_compares_two_saved_models_and_a_saved_model_with_a_config(tmp_path):
    import keras

    def saved(filters: int, name: str):
        model = keras.Sequential(
            [keras.Input((8, 8, 1)), keras.layers.Conv2D(filters, 3), keras.layers.Flatten()]
        )
        model.save(tmp_path / name)
        return model

    old, new = saved(4, "a.keras"), saved(6, "b.keras")
    result = run_cli("diff", tmp_path / "a.keras", tmp_path / "b.keras", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["delta"]["total_params"] == new.count_params() - old.count_params()
    assert [row["change"] for row in report["layers"]] == ["changed", "changed"]
    config = tmp_path / "a.yaml"
    assert run_cli("import", tmp_path / "a.keras", "-o", config).exit_code == 0
    result = run_cli("diff", config, tmp_path / "a.keras", "--format", "json")
    assert result.exit_code == 0, result.output
    assert {row["change"] for row in json.loads(result.stdout)["layers"]} == {"unchanged"}
