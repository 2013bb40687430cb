"""``tune:``: space paths, the static check of a space, and real Optuna studies on tiny data."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cnnbuild.tune import PathError, assign, parse_path
from cnnbuild.validate import check_file, load_config
from tests.conftest import CONFIGS, ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}

TINY = """
name: tiny
input: [32, 32, 3]
layers:
  - Conv2D: {filters: 8, kernel_size: 3, strides: 2, padding: same, activation: relu}
  - MaxPooling2D: {pool_size: 2}
  - Conv2D: {filters: 8, kernel_size: 3, padding: same, activation: relu}
  - GlobalMaxPooling2D
  - Dense: {units: 10}
compile:
  optimizer: {adam: {learning_rate: 0.003}}
  from_logits: true
train:
  dataset: shapes
  epochs: 2
  batch_size: 32
  limit: 300
  seed: 1
tune:
  trials: 3
  space:
    compile.optimizer.adam.learning_rate: {float: [1.0e-3, 1.0e-2], log: true}
    layers[2].Conv2D.filters: {choice: [4, 8]}
"""


# -- paths ------------------------------------------------------------------------------

DATA = {
    "layers": [{"Conv2D": {"filters": 8}}, "BatchNormalization", {"ReLU": None}],
    "blocks": {"stage": {"params": ["filters", {"width": 16}], "layers": []}},
    "compile": {"optimizer": "adam"},
    "train": {"batch_size": 32},
}


@pytest.mark.parametrize(
    "path, value, where, expected",
    [
        ("layers[0].Conv2D.filters", 16, ("layers", 0), {"Conv2D": {"filters": 16}}),
        ("layers[0].Conv2D.strides", 2, ("layers", 0), {"Conv2D": {"filters": 8, "strides": 2}}),
        (
            "layers[1].BatchNormalization.momentum",
            0.9,
            ("layers", 1),
            {"BatchNormalization": {"momentum": 0.9}},
        ),
        ("layers[2].ReLU.max_value", 6.0, ("layers", 2), {"ReLU": {"max_value": 6.0}}),
        (
            "blocks.stage.params.width",
            32,
            ("blocks", "stage", "params"),
            ["filters", {"width": 32}],
        ),
        (
            "blocks.stage.params.filters",
            8,
            ("blocks", "stage", "params"),
            [{"filters": 8}, {"width": 16}],
        ),
        (
            "compile.optimizer.adam.learning_rate",
            0.01,
            ("compile", "optimizer"),
            {"adam": {"learning_rate": 0.01}},
        ),
        ("train.batch_size", 64, ("train",), {"batch_size": 64}),
        ("lint.max_dense_params_million", 1.0, ("lint",), {"max_dense_params_million": 1.0}),
    ],
)
def test_assign_writes_the_value_at_the_path_and_nothing_else(path, value, where, expected):
    out = assign(DATA, parse_path(path), value)
    node = out
    for step in where:
        node = node[step]
    assert node == expected
    assert DATA["layers"][0] == {"Conv2D": {"filters": 8}}  # the original is untouched


@pytest.mark.parametrize(
    "path, message",
    [
        ("layers[5].Conv2D.filters", "layers has 3 entries; index 5 is past its end"),
        ("layers[0].Conv2d.filters", "layers[0] has no key 'Conv2d'; did you mean 'Conv2D'?"),
        ("blocks.stage.params.depth", "blocks.stage.params has no entry 'depth'"),
        ("compile.optimiser.adam.learning_rate", "did you mean 'optimizer'?"),
        ("train.early_stopping.patience", "train.early_stopping is not written; write it first"),
        ("train.early_stoping.patience", "did you mean 'early_stopping'?"),
        ("train.batch_size.x", "train.batch_size is 32; .x cannot follow it"),
        ("model.depth", "the config has no key 'model'; its keys are layers, blocks"),
        ("depth", "the config has no 'depth' section"),
    ],
)
def test_paths_that_lead_nowhere_are_refused(path, message):
    with pytest.raises(PathError) as info:
        assign(DATA, parse_path(path), 1)
    assert message in str(info.value)


def test_parse_path_reads_the_finding_path_syntax():
    assert parse_path("layers[2].Residual.main[0].Conv2D.kernel_size") == (
        "layers",
        2,
        "Residual",
        "main",
        0,
        "Conv2D",
        "kernel_size",
    )
    for bad in ("layers..x", "[0].x", "layers[a]", "layers[0]Conv2D", ""):
        with pytest.raises(PathError):
            parse_path(bad)


# -- the static check -------------------------------------------------------------------

BAD_SPACE = """
name: bad_space
input: [16, 16, 3]
layers:
  - Conv2D: {filters: 8, kernel_size: 3, activation: relu}
  - MaxPooling2D: {pool_size: 2}
  - Conv2D: {filters: 8, kernel_size: 3, activation: relu}
  - GlobalAveragePooling2D
  - Dense: {units: 10}
compile:
  from_logits: true
tune:
  space:
    layers[7].Conv2D.filters: {choice: [8, 16]}
    layers[0].Conv2D.filters: {float: [4, 16]}
    layers[2].Conv2D.kernel_size: {choice: [3, 5, 9]}
    layers[0].Conv2D.filter: {int: [4, 16]}
    train.batch_size: {choice: [32, 64]}
"""


def _pos(text: str, line_text: str, token: str, nth: int = 0) -> tuple[int, int]:
    """1-based line and column of ``token`` on the line containing ``line_text``."""
    lines = text.splitlines()
    line = next(i for i, ln in enumerate(lines) if line_text in ln)
    col = -1
    for _ in range(nth + 1):
        col = lines[line].index(token, col + 1)
    return line + 1, col + 1


def test_validate_refuses_a_bad_space_at_the_offending_entry(cli, write):
    path = write(BAD_SPACE)
    text = path.read_text()
    result = cli("validate", path)
    assert result.exit_code == 1, result.output
    errors = [ln for ln in result.output.splitlines() if ": error: " in ln]
    expected = [
        (
            _pos(text, "layers[7].Conv2D.filters", "layers[7]"),
            "tune.space.layers[7].Conv2D.filters: unknown path: layers has 5 entries; "
            "index 7 is past its end",
        ),
        (
            _pos(text, "layers[0].Conv2D.filters:", "float"),
            "tune.space.layers[0].Conv2D.filters: a float range samples values such as 4.0, "
            "but layers[0].Conv2D.filters (line 4) takes an integer (use int: [4, 16])",
        ),
        (
            _pos(text, "layers[2].Conv2D.kernel_size", "9"),
            "tune.space.layers[2].Conv2D.kernel_size: choice 9 makes the model invalid: "
            "layers[2].Conv2D.kernel_size (line 6): layer 'conv2d_1' (Conv2D) cannot take "
            "input (7, 7, 8): output H would be -1",
        ),
        (
            _pos(text, "layers[0].Conv2D.filter:", "layers"),
            "tune.space.layers[0].Conv2D.filter: unknown path: unknown argument 'filter' "
            "for Conv2D; did you mean 'filters'?",
        ),
    ]
    assert len(errors) == len(expected), result.output
    for got, ((line, col), message) in zip(errors, expected, strict=True):
        assert got.startswith(f"{path}:{line}:{col}: error: {message}"), got
    assert "train.batch_size" not in result.output  # a sound entry says nothing


def test_a_corner_that_only_fails_in_combination_is_found(write):
    path = write(
        BAD_SPACE.split("tune:")[0]
        + textwrap.dedent(
            """
            tune:
              space:
                layers[0].Conv2D.kernel_size: {int: [3, 7]}
                layers[2].Conv2D.kernel_size: {int: [3, 6]}
            """
        )
    )
    findings = [f for f in check_file(path)[2] if f.severity == "error"]
    assert len(findings) == 1, [f.format() for f in findings]
    f = findings[0]
    assert f.path == "tune.space" and (f.line, f.column) == _pos(path.read_text(), "space:", "s")
    assert f.message.startswith(
        "the corner layers[0].Conv2D.kernel_size = 7, layers[2].Conv2D.kernel_size = 6 "
        "makes the model invalid: layers[2].Conv2D.kernel_size (line 6): layer 'conv2d_1'"
    )


@pytest.mark.parametrize(
    "entry, message",
    [
        ("{float: [1e-4, 1.0e-2]}", "received '1e-4' (YAML reads 1e-4 as text"),
        ("{int: [16, 60], step: 16}", "the largest value reached would be 48; set high to 48"),
        ("{float: [0.0, 1.0], log: true}", "a log scale needs low > 0; received low=0.0"),
        ("{choice: [1]}", "expected a list of at least 2 values"),
        ("{int: [4, 16], choice: [1, 2]}", "give exactly one of float"),
        ("{float: [0.1, 0.01]}", "expected low < high; received [0.1, 0.01]"),
    ],
)
def test_malformed_space_entries_are_schema_errors(write, entry, message):
    text = BAD_SPACE.split("tune:")[0] + f"tune:\n  space:\n    train.batch_size: {entry}\n"
    findings = [f for f in check_file(write(text))[2] if f.severity == "error"]
    assert len(findings) == 1 and message in findings[0].message, [f.format() for f in findings]
    assert findings[0].line == len(text.strip().splitlines())


def test_the_shipped_tune_config_validates_without_tensorflow_or_optuna():
    code = (
        "import sys, json\nfrom cnnbuild.validate import check_file\n"
        "f = check_file('configs/shapes_tune.yaml')[2]\n"
        "print(json.dumps([len(f), 'tensorflow' in sys.modules, 'optuna' in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [0, False, False], out.stderr
    assert load_config(CONFIGS / "shapes_tune.yaml").tune.space


# -- studies (TensorFlow and Optuna, tiny data) -----------------------------------------


def _study(storage: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=storage)


def _trials_csv(folder: Path) -> list[dict]:
    with (folder / "trials.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_study_writes_best_yaml_that_validates_and_trains(cli, write, tmp_path):
    config = write(TINY)
    folder = tmp_path / "study"
    result = cli("tune", config, "--out", folder)
    assert result.exit_code == 0, result.output
    for n in range(3):
        assert f"trial {n} start  learning_rate=" in result.output
    assert "3/3 done  ETA 0s" in result.output
    assert "study tiny: 3 trials, best first" in result.output
    rows = _trials_csv(folder)
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert all(r["state"] in ("complete", "pruned") for r in rows)
    for r in rows:
        run = Path(r["run_dir"])
        assert run.name == f"trial-{int(r['trial']):04d}" and (run / "history.json").is_file()
        # the run fills its folder alone; the trial's config and epoch lines lie beside it
        trial_cfg = load_config(run.with_suffix(".yaml"))
        assert trial_cfg.compile.optimizer["adam"]["learning_rate"] == float(
            r["compile.optimizer.adam.learning_rate"]
        )
        assert "val_accuracy" in run.with_suffix(".log").read_text()
    for png in ("history.png", "importance.png"):
        assert (folder / png).read_bytes()[:4] == b"\x89PNG"
    best = folder / "best.yaml"
    complete = [r for r in rows if r["state"] == "complete"]
    top = max(complete, key=lambda r: float(r["val_accuracy"]))
    cfg = load_config(best)
    assert cfg.tune is None
    assert cfg.compile.optimizer["adam"]["learning_rate"] == float(
        top["compile.optimizer.adam.learning_rate"]
    )
    assert cfg.node("conv2d_1").args.filters == int(top["layers[2].Conv2D.filters"])
    assert cli("validate", best).exit_code == 0
    trained = cli("train", best, "--epochs", 1, "--out", tmp_path / "best-run")
    assert trained.exit_code == 0, trained.output
    # the study is complete: running it again trains nothing and rewrites the outputs
    again = cli("tune", config, "--out", folder)
    assert again.exit_code == 0 and "start" not in again.output
    assert len(_trials_csv(folder)) == 3


@pytest.mark.slow
def test_pruning_and_a_diverged_trial_are_recorded_and_the_study_goes_on(write, tmp_path):
    import optuna

    from cnnbuild.tune import open_study, run_study

    text = TINY.replace("trials: 3", "trials: 3\n  metric: val_loss").replace(
        "    compile.optimizer.adam.learning_rate: {float: [1.0e-3, 1.0e-2], log: true}\n"
        "    layers[2].Conv2D.filters: {choice: [4, 8]}",
        "    compile.optimizer.adam.learning_rate: {choice: [0.003, 1.0e-9, 1.0e+30]}",
    )
    text = text.replace("space:", "pruning: {startup_trials: 1, warmup_epochs: 0}\n  space:")
    config = write(text)
    storage = f"sqlite:///{tmp_path / 'forced.db'}"
    study = optuna.create_study(study_name="forced", storage=storage, direction="minimize")
    key = "compile.optimizer.adam.learning_rate"
    for lr in (0.003, 1.0e-9, 1.0e30):  # a good one, one that cannot learn, one that diverges
        study.enqueue_trial({key: lr})
    s = open_study(config, study="forced", storage=storage, out=tmp_path / "forced")
    summary = run_study(s)
    trials = _study(storage, "forced").get_trials()
    states = [t.state for t in trials]
    assert states == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
    ]
    assert list(trials[1].intermediate_values) == [0]  # stopped after its first epoch
    history = json.loads((tmp_path / "forced/trial-0001/history.json").read_text())
    assert len(history) == 1 and s.cfg.train.epochs == 2
    assert "the loss became" in trials[2].user_attrs["reason"]
    rows = _trials_csv(tmp_path / "forced")
    assert [r["state"] for r in rows] == ["complete", "pruned", "failed"]
    assert "the loss became" in rows[2]["reason"]
    assert summary["best_trial"] == 0 and summary["params"] == {key: 0.003}


def _tune_process(config: Path, *args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnbuild", "tune", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=cwd,
    )


@pytest.mark.slow
def test_two_processes_on_one_storage_share_the_trials(write, tmp_path):
    import optuna

    config = write(TINY.replace("epochs: 2", "epochs: 1").replace("trials: 3", "trials: 4"))
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    args = ("--study", "shared", "--storage", storage)
    procs = [
        _tune_process(config, *args, "--out", str(tmp_path / f"w{i}"), cwd=tmp_path) for i in (0, 1)
    ]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, (out, err)
        assert "Traceback" not in err
    trials = [t for t in _study(storage, "shared").get_trials() if not t.user_attrs.get("surplus")]
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert len(trials) == 4 and all(t.state in finished for t in trials)
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == 4
    ran = [
        int(d.name[6:]) for w in (0, 1) for d in (tmp_path / f"w{w}").glob("trial-*") if d.is_dir()
    ]
    assert sorted(ran) == sorted(t.number for t in trials)  # each trial ran once, somewhere
    for w in (0, 1):  # both processes end with the whole study's outputs
        assert len(_trials_csv(tmp_path / f"w{w}")) == 4


@pytest.mark.slow
def test_a_stopped_or_killed_study_resumes_and_completes_the_remaining_trials(write, tmp_path):
    import optuna

    config = write(TINY.replace("epochs: 2", "epochs: 1"))
    folder = tmp_path / "runs" / "tune" / "tiny"
    storage = f"sqlite:///{folder / 'study.db'}"

    def start_then(signum: int, line: str) -> tuple[int, str]:
        proc = _tune_process(config, cwd=tmp_path)
        deadline = time.time() + 300
        for text in proc.stdout:
            if text.startswith(line) or time.time() > deadline:
                break
        time.sleep(1)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
        return proc.returncode, err

    # SIGTERM: the trial is recorded as lost and queued again, the resume command printed
    code, err = start_then(signal.SIGTERM, "trial 1 start")
    assert code == 130 and "Traceback" not in err, err
    assert "interrupted (SIGTERM); 1 of 3 trials are done" in err
    assert f"Resume with:\n  cnnbuild tune {config} --study tiny --storage {storage}" in err
    # SIGKILL (a crash) while the queued trial runs again: nothing is recorded
    code, _ = start_then(signal.SIGKILL, "trial 2 start")
    assert code == -signal.SIGKILL
    assert _study(storage, "tiny").get_trials()[2].state == optuna.trial.TrialState.RUNNING
    resumed = _tune_process(config, cwd=tmp_path)
    out, err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, (out, err)
    trials = _study(storage, "tiny").get_trials()
    lost = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.number for t in lost] == [1, 2]
    assert lost[0].user_attrs["lost"] == "interrupted by SIGTERM"
    assert lost[1].user_attrs["lost"].startswith("its process (pid ")
    for t in lost:  # each ran again with the same params
        retry = next(r for r in trials if r.user_attrs.get("retry_of") == t.number)
        assert retry.params == t.params
    done = [t for t in trials if t.state.is_finished() and t not in lost]
    assert len(done) == 3 and len(trials) == 5
    rows = _trials_csv(folder)
    assert [r["state"] for r in rows].count("lost") == 2
    assert "queued to run again" in rows[1]["reason"]
    assert (folder / "best.yaml").is_file()


def test_tune_needs_a_tune_section_and_a_sound_space(cli, write):
    plain = write(TINY.split("tune:")[0], "plain.yaml")
    result = cli("tune", plain)
    assert result.exit_code == 2 and "no tune: section; add one" in result.output
    bad = write(TINY.replace("choice: [4, 8]", "choice: [4, 8.5]"), "bad.yaml")
    result = cli("tune", bad)
    assert result.exit_code == 1
    assert "tune.space.layers[2].Conv2D.filters: choice 8.5 makes the model invalid" in (
        result.output
    )


def test_the_json_schema_knows_the_tune_section():
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    schema = json.loads((ROOT / "schema" / "cnnbuild.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    good = yaml.safe_load((CONFIGS / "shapes_tune.yaml").read_text())
    assert not list(validator.iter_errors(good))
    for space in (
        {"layers[0]..filters": {"choice": [8, 16]}},  # not a path
        {"train.batch_size": {"choice": [32, 64], "int": [1, 2]}},  # two kinds
        {"train.batch_size": {"range": [32, 64]}},  # an unknown kind
    ):
        bad = {**good, "tune": {**good["tune"], "space": space}}
        assert list(validator.iter_errors(bad)), space


def test_a_large_space_checks_a_seeded_sample_of_its_corners(write):
    from cnnbuild.tune import MAX_CORNERS, _combinations

    options = [[(i, v) for i, v in enumerate(range(5))] for _ in range(4)]  # 625 corners
    drawn = _combinations(options)
    assert 0 < len(drawn) <= MAX_CORNERS and drawn == _combinations(options)
    path = write(
        BAD_SPACE.split("tune:")[0]
        + "tune:\n  space:\n"
        + "".join(
            f"    layers[{i}].Conv2D.filters: {{choice: [4, 8, 12, 16, 20]}}\n" for i in (0, 2)
        )
        + "    layers[4].Dense.use_bias: {choice: [true, false]}\n"
        + "    train.batch_size: {choice: [8, 16, 32, 64, 128]}\n"
    )
    assert [f for f in check_file(path)[2] if f.severity == "error"] == []
