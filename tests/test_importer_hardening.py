"""`cnnbuild import` against hostile files and paths.

Each test reproduces one probe of issue 26 from its description: output paths that are
not regular files, line breaks in a source path, names YAML reads as something else,
sub-objects from other packages, a graph too large to walk, Keras' recorded `training`
default, and refusals that must stay one line each. Saved models are real: written by
Keras, or (for the hostile ones) a zip whose `config.json` the test writes itself.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from cnnbuild.catalog import REGISTRY
from cnnbuild.expand import MAX_NODES
from cnnbuild.importer import ImportRefused, import_config, to_yaml
from cnnbuild.runs import saved_config
from tests.conftest import ROOT, run_cli
from tests.test_importer import assert_same_model

keras = pytest.importorskip("keras")
L = keras.layers

TINY = {  # what the tiny model below imports as, read back with yaml.safe_load
    "name": "tiny",
    "input": [8, 8, 3],
    "input_scaling": "none",
    "layers": [{"Conv2D": {"filters": 4, "kernel_size": 3, "name": "conv"}}, "Flatten"],
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small Sequential saved by Keras, and its serialized config."""
    keras.backend.clear_session(free_memory=False)  # automatic names as in a fresh process
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="conv"), L.Flatten()], name="tiny"
    )
    path = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    model.save(path)
    return path


def write_keras(path, config: dict):
    """A ``.keras`` archive holding only ``config.json``: all that import reads."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", json.dumps(config))
    return path


def _nodes(path) -> tuple:
    info = os.lstat(path)
    return stat.S_IFMT(info.st_mode), info.st_rdev, info.st_ino


# -- -o writes only a regular file or a new path -------------------------------------------


def _device(tmp_path):
    """A character device to point -o at: a copy of /dev/full made in tmp_path when we may
    (as root), so a failure cannot replace the machine's own; else /dev/full itself."""
    full = os.stat("/dev/full").st_rdev
    node = tmp_path / "full"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, full)
    except PermissionError:
        return "/dev/full"
    return node


def _fifo(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    return tmp_path / "fifo"


def _socket(tmp_path):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock"))
    server.close()  # the socket file stays
    return tmp_path / "sock"


def _folder(tmp_path):
    (tmp_path / "folder").mkdir()
    return tmp_path / "folder"


def _link_to_device(tmp_path):
    (tmp_path / "link").symlink_to(_device(tmp_path))
    return tmp_path / "link"


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (_device, "a character device"),
        (_fifo, "a FIFO (named pipe)"),
        (_socket, "a socket"),
        (_folder, "a folder"),
        (_link_to_device, "a character device"),
    ],
    ids=["device", "fifo", "socket", "folder", "link-to-device"],
)
def test_import_writes_only_a_regular_file_or_a_new_path(tiny, tmp_path, make, what):
    target = make(tmp_path)
    before = _nodes(target), _nodes(os.path.realpath(target))
    for force in ([], ["--force"]):
        result = run_cli("import", tiny, "-o", target, *force)
        assert result.exit_code == 2, result.output
        assert f"{target}: it is {what}; --output writes only a regular file" in result.stderr
        assert "Traceback" not in result.output
    assert (_nodes(target), _nodes(os.path.realpath(target))) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_import_overwrites_a_regular_file_only_with_force(tiny, tmp_path):
    out = tmp_path / "m.yaml"
    out.write_text("old\n")
    result = run_cli("import", tiny, "-o", out)
    assert result.exit_code == 2 and f"{out} exists; give --force" in result.stderr
    assert out.read_text() == "old\n"
    result = run_cli("import", tiny, "-o", out, "--force")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(out.read_text()) == TINY


# -- no user text outside a scalar ----------------------------------------------------------


def _no_tags(text: str) -> bool:
    return not any(isinstance(t, (yaml.TagToken, yaml.DirectiveToken)) for t in yaml.scan(text))


@pytest.mark.parametrize("brk", ["\n", "\r", "\x85", "\u2028"], ids=["LF", "CR", "NEL", "LS"])
def test_a_line_break_in_the_source_path_stays_inside_the_comment(tiny, tmp_path, brk):
    """The path goes into the `# imported from` comment; YAML ends a comment at any of
    these breaks, so the rest of the path would be a line of YAML: a live tag."""
    folder = tmp_path / f"x{brk}!!python"
    (folder / "object").mkdir(parents=True)
    source = folder / "object" / f"apply:os.system [touch, pwned]{brk}m.keras"
    source.write_bytes(tiny.read_bytes())
    out = tmp_path / "m.yaml"
    result = run_cli("import", source, "-o", out)
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    lines = text.split("\n")
    assert lines[0].startswith("# imported from ") and lines[1] == "name: tiny"
    assert not any(b in text for b in "\r\x85\u2028\u2029") and _no_tags(text)
    assert yaml.safe_load(text) == TINY


def test_every_string_is_one_quoted_line_of_yaml():
    """Strings the emitter would fold over lines (a line break, U+2028, a lone surrogate)
    are double-quoted with escapes, so each layer stays one line; all read back as given."""
    hostile = ["a\nb", "x\u2028!!python/object/apply:os.system [id]", "\x85", "yes", "#c", "\udcff"]
    config = {"name": "m", "input": [8, 8, 3]}
    config["layers"] = [{"Dense": {"units": 1, "name": name}} for name in hostile]
    text = to_yaml(config, source="m\r\nkeras")
    assert len(text.split("\n")) == 2 + 2 + len(hostile) + 1  # comment, name, input, layers
    assert _no_tags(text) and yaml.safe_load(text) == config


def test_the_written_message_escapes_the_output_path(tiny, tmp_path):
    (tmp_path / "a[").mkdir()
    for name, shown in (("a[/b].yaml", "a[/b].yaml"), ("q\x1b[31mred.yaml", "q\\x1b[31mred.yaml")):
        result = run_cli("import", tiny, "-o", tmp_path / name)
        assert result.exit_code == 0, result.output
        shown_line = " ".join(result.stdout.split())  # the console wraps at spaces
        assert f"to {tmp_path}/{shown} (written with" in shown_line
        assert yaml.safe_load((tmp_path / name).read_text()) == TINY


def _saved_and_imported(model, folder) -> Path:
    """Save ``model`` as ``NAME.keras`` in ``folder`` and ``cnnbuild import`` it; the config."""
    source, out = folder / f"{model.name}.keras", folder / f"{model.name}.yaml"
    model.save(source)
    result = run_cli("import", source, "-o", out)
    assert result.exit_code == 0, result.output
    return out


def _block(prefix: str, x):
    x = L.Conv2D(4, 3, padding="same", name=f"{prefix}_conv")(x)
    x = L.BatchNormalization(name=f"{prefix}_bn")(x)
    x = L.ReLU(name=f"{prefix}_relu")(x)
    return L.Dropout(0.1, name=f"{prefix}_drop")(x)


def test_names_yaml_reads_as_other_values_stay_strings(tmp_path):
    """Layer names and the template named after them (`yes`, `null`, `on`): written as
    keys or values, each must read back as the same string."""
    inputs = keras.Input((8, 8, 3))
    x = _block("yes_1", inputs)
    x = _block("yes_2", x)
    x = L.ReLU(name="null")(x)
    x = L.GlobalAveragePooling2D(name="on")(x)
    model = keras.Model(inputs, L.Dense(2, name="True")(x), name="names")
    out = _saved_and_imported(model, tmp_path)
    text = out.read_text()
    assert _no_tags(text)
    data = yaml.safe_load(text)
    assert list(data["blocks"]) == ["yes"]
    assert [next(iter(item)) for item in data["layers"][:2]] == ["yes", "yes"]
    assert [item[next(iter(item))]["name"] for item in data["layers"][2:]] == [
        "null",
        "on",
        "True",
    ]
    rebuilt = assert_same_model(model, out, (8, 8, 3))
    assert [layer.name for layer in rebuilt.layers[1:]] == [
        layer.name for layer in model.layers[1:]
    ]


# -- sub-objects and model classes come from Keras ------------------------------------------


def _serialized_with_sub_objects():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(
        4,
        3,
        kernel_initializer=keras.initializers.HeNormal(seed=1),
        kernel_regularizer=keras.regularizers.L2(1e-3),
        kernel_constraint=keras.constraints.MaxNorm(2.0),
        dtype="mixed_bfloat16",
        name="conv",
    )(inputs)
    model = keras.Model(inputs, L.Flatten(name="flat")(x), name="subs")
    return keras.saving.serialize_keras_object(model)


def _conv(serialized):
    return next(e for e in serialized["config"]["layers"] if e["class_name"] == "Conv2D")


@pytest.mark.parametrize(
    ("where", "shown"),
    [
        ("kernel_initializer", "Conv2D: kernel_initializer HeNormal from module 'evil.x'"),
        ("kernel_regularizer", "Conv2D: kernel_regularizer L2 from module 'evil.x'"),
        ("kernel_constraint", "Conv2D: kernel_constraint MaxNorm from module 'evil.x'"),
        ("dtype", "Conv2D: dtype DTypePolicy from module 'evil.x'"),
        ("model", "Functional: a model class from module 'evil.x'"),
    ],
)
def test_sub_objects_from_another_package_are_refused_by_name(where, shown):
    serialized = _serialized_with_sub_objects()
    import_config(serialized)  # as Keras wrote it: imports
    target = serialized if where == "model" else _conv(serialized)["config"][where]
    target["module"] = "evil.x"
    with pytest.raises(ImportRefused) as info:
        import_config(serialized)
    assert f"  {shown}, not Keras: 1 layer" in str(info.value).split("\n")


def test_a_keras_class_registered_under_another_name_is_refused():
    serialized = _serialized_with_sub_objects()
    _conv(serialized)["config"]["kernel_regularizer"]["registered_name"] = "evil>L2"
    _conv(serialized)["registered_name"] = "evil>Conv2D"
    with pytest.raises(ImportRefused) as info:
        import_config(serialized)
    assert str(info.value).split("\n")[1:] == ["  Conv2D (registered as 'evil>Conv2D'): 1 layer"]
    _conv(serialized)["registered_name"] = None
    with pytest.raises(ImportRefused, match="kernel_regularizer L2 registered as 'evil>L2'"):
        import_config(serialized)


# -- the number of layers is bounded before the graph is walked -----------------------------


def _unnamed_relus(n: int) -> dict:
    """A Sequential of ``n`` ReLUs without names (so every one is named ``None``): walking
    it would refuse the name used ``n`` times; the bound must answer first."""
    relus = [{"module": "keras.layers", "class_name": "ReLU", "config": {}}] * n
    config = {"name": "deep", "layers": relus, "build_input_shape": [None, 8, 8, 3]}
    return {"module": "keras", "class_name": "Sequential", "config": config}


def test_a_model_with_too_many_layers_is_refused_before_its_graph_is_walked(tmp_path):
    source = write_keras(tmp_path / "deep.keras", _unnamed_relus(100_000))
    result = run_cli("import", source, "-o", tmp_path / "deep.yaml")
    assert result.exit_code == 1
    assert result.stderr.strip().split("\n") == [
        f"error: cannot import the model: it has 100,000 layers, more than the {MAX_NODES:,} a "
        "cnnbuild config may expand to"
    ]
    assert not (tmp_path / "deep.yaml").exists()


def test_a_model_at_the_bound_imports_into_a_config_that_validates(tmp_path):
    """MAX_NODES layers in runs that factor as templates: each use of a template counts one
    more layer for `validate`, so the import writes the layers without templates."""
    layers = [
        {"module": "keras.layers", "class_name": "ReLU", "config": {"name": f"blk{i // 4}_{i % 4}"}}
        for i in range(MAX_NODES)
    ]
    config = {"name": "runs", "layers": layers, "build_input_shape": [None, 8, 8, 3]}
    source = write_keras(
        tmp_path / "runs.keras", {"module": "keras", "class_name": "Sequential", "config": config}
    )
    out = tmp_path / "runs.yaml"
    result = run_cli("import", source, "-o", out)
    assert result.exit_code == 0, result.output
    assert f"imported runs: {MAX_NODES} layers" in result.stdout
    assert "blocks:" not in out.read_text()
    result = run_cli("validate", out)
    assert result.exit_code == 0, result.output


# -- Keras' recorded `training` default ------------------------------------------------------


def test_the_catalog_training_default_is_keras_call_signature():
    """Keras records `training` at each symbolic call with its `call`'s default; the
    catalog holds that default so the import needs no TensorFlow to read it."""
    for name, spec in REGISTRY.items():
        parameter = inspect.signature(getattr(L, name).call).parameters.get("training")
        default = None if parameter is None else parameter.default
        assert spec.training == default, name


def test_resizing_and_center_crop_in_a_functional_model_import_exactly(tmp_path):
    inputs = keras.Input((20, 20, 3))
    x = L.Resizing(12, 12, name="resize")(inputs)
    x = L.CenterCrop(8, 8, name="crop")(x)
    x = L.Rescaling(1 / 255, name="scale")(x)
    x = L.Conv2D(4, 3, name="conv")(x)
    x = L.Dropout(0.2, name="drop")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, L.Dense(3, name="head")(x), name="crops")
    assert_same_model(model, _saved_and_imported(model, tmp_path), (20, 20, 3))


def test_a_call_with_training_other_than_the_default_is_refused():
    """BatchNormalization called with training=False stays in inference mode when the
    model trains; cnnbuild's builder cannot write that call."""
    inputs = keras.Input((8, 8, 3))
    x = L.BatchNormalization(name="frozen")(inputs, training=False)
    model = keras.Model(inputs, L.Flatten()(x))
    with pytest.raises(ImportRefused) as info:
        import_config(keras.saving.serialize_keras_object(model))
    assert str(info.value).split("\n")[1:] == [
        "  BatchNormalization: a call with arguments (training): 1 layer"
    ]


# -- refusals: one line each, naming the thing -----------------------------------------------


@keras.saving.register_keras_serializable(package="evil")
def wobble(x):
    return x * 2


def _refusal_lines(model) -> list[str]:
    with pytest.raises(ImportRefused) as info:
        import_config(keras.saving.serialize_keras_object(model))
    head, *lines = str(info.value).split("\n")
    assert head.startswith("cannot import model")
    return lines


def test_refusals_name_the_thing_and_carry_no_extra_lines():
    inputs = keras.Input((8, 8, 3))
    x = L.Flatten()(inputs)
    model = keras.Model(inputs, L.Dense(2, activation=wobble)(x))
    assert _refusal_lines(model) == [
        "  Dense: activation 'evil>wobble' (a custom function, not one of Keras' "
        "activations): 1 layer"
    ]
    first, second = keras.Input((8, 8, 3)), keras.Input((5,))
    model = keras.Model([first, second], L.Concatenate()([L.Flatten()(first), second]))
    assert _refusal_lines(model) == [
        "  Functional: a model with 2 inputs and 1 outputs (cnnbuild models have one of "
        "each): 1 layer"
    ]
    x = L.ReLU(name="1e3")(inputs)
    assert _refusal_lines(keras.Model(inputs, x)) == [
        "  ReLU: name: a layer name is letters, digits, '_', '.', '-', starting with a letter "
        "or '_'; received '1e3': 1 layer"
    ]


def test_file_text_in_a_refusal_cannot_forge_a_line(tiny, tmp_path):
    serialized = saved_config(tiny)
    serialized["config"]["layers"][1]["class_name"] = "Evil\nForged: 0 layers"
    with pytest.raises(ImportRefused) as info:
        import_config(serialized)
    assert str(info.value).split("\n")[1:] == ["  Evil\\x0aForged: 0 layers: 1 layer"]
    result = run_cli("import", tmp_path / "a\nerror: forged.keras")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: {tmp_path}/a\\x0aerror: forged.keras: no such file"
    ]
    subclassed = {"module": "keras.src.models.model", "class_name": "Model", "config": {}}
    with pytest.raises(ImportRefused) as info:  # no "an input of shape None" besides
        import_config(subclassed)
    assert str(info.value).split("\n")[1:] == [
        "  Model: a model without a saved graph (subclassed?): 1 layer"
    ]


# -- the guide ---------------------------------------------------------------------------------

GUIDE = ROOT / "docs" / "guides" / "import-safety.md"


def _guide_sessions() -> list[tuple[str, list[str]]]:
    """Each ``$ command`` of the guide's code blocks with the lines it shows."""
    sessions: list[tuple[str, list[str]]] = []
    for block in GUIDE.read_text(encoding="utf-8").split("```\n")[1::2]:
        for line in block.splitlines():
            if line.startswith("$ "):
                sessions.append((line[2:], []))
            else:
                sessions[-1][1].append(line)
    return sessions


def test_the_import_safety_guide_is_real_output(tiny, tmp_path):
    """Every command of docs/guides/import-safety.md, run by bash in a folder holding the
    files it names, prints what the guide shows. `-o /dev/full` is left out: a fault there
    would replace the machine's device (the device case is tested above on a copy)."""
    (tmp_path / "tiny.keras").write_bytes(tiny.read_bytes())
    evil = saved_config(tiny)
    evil["config"]["layers"][1]["config"]["kernel_regularizer"] = {
        "module": "evil.regularizers",
        "class_name": "L2",
        "config": {"l2": 0.01},
        "registered_name": None,
    }
    write_keras(tmp_path / "evil.keras", evil)
    write_keras(tmp_path / "deep.keras", _unnamed_relus(100_000))
    inputs = keras.Input((20, 20, 3))
    x = L.CenterCrop(8, 8, name="crop")(L.Resizing(12, 12, name="resize")(inputs))
    x = L.GlobalAveragePooling2D(name="gap")(L.Conv2D(4, 3, name="conv")(x))
    keras.Model(inputs, L.Dense(3, name="head")(x), name="crops").save(tmp_path / "crops.keras")
    env = {**os.environ, "COLUMNS": "1000", "NO_COLOR": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    sessions = [s for s in _guide_sessions() if "/dev/full" not in s[0]]
    assert len(sessions) == 11
    for command, shown in sessions:
        done = subprocess.run(
            ["bash", "-c", f"{command} 2>&1"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.stdout.splitlines() == shown, command
