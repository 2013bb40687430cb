"""Fuzzing validate: 300+ mutated configs (deleted keys, wrong types, random strings, huge
numbers, deep nesting, binary junk, alias bombs, expansion bombs). Never a traceback, never a
hang, always exit 0 or 1; every mutant either gets an error finding or is a complete, traced
config. The corpus is generated from a fixed seed, so a failure reproduces."""

from __future__ import annotations

import copy
import os
import random
import subprocess
import sys

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnbuild.validate import check_file
from tests.conftest import CONFIGS, ROOT

BASES = sorted(CONFIGS.rglob("*.yaml")) + [ROOT / "tests" / "data" / "canonical.yaml"]
WEIRD = [
    "",
    "x" * 500,
    "Conv2D",
    "same",
    "$filters",
    -1,
    0,
    10**30,
    -(10**30),
    1e308,
    float("inf"),
    float("nan"),
    None,
    True,
    [],
    {},
    [[[[[]]]]],
    {"a": {"b": {"c": 1}}},
    "\x00\x01",
    "ünïcödé ☃",
    3.5,
    [1, 2, 3, 4, 5],
    {"Conv2D": None},
]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _set(data, path, value=None, delete=False):
    node = data
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value


def mutants(seed: int = 0) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    for base in BASES:
        text = base.read_text()
        data = yaml.safe_load(text)
        paths = [p for p in _paths(data) if p]
        for i in range(18):
            mutated = copy.deepcopy(data)
            path = rng.choice(paths)
            try:
                _set(mutated, path, delete=(i % 3 == 0))
                if i % 3:
                    _set(mutated, path, rng.choice(WEIRD))
            except (KeyError, IndexError, TypeError):
                continue
            out.append((f"{base.stem}-tree{i}", yaml.safe_dump(mutated).encode()))
        for i in range(8):
            pos = rng.randrange(len(text))
            junk = rng.choice(
                [
                    ":",
                    "[",
                    "]",
                    "{",
                    "- ",
                    "\t",
                    "&a ",
                    "*a",
                    "!!binary ",
                    "\n  ",
                    "'",
                    '"',
                    "#",
                    "%YAML 9.9\n",
                    "? ",
                ]
            )
            out.append((f"{base.stem}-text{i}", (text[:pos] + junk + text[pos:]).encode()))
        out.append((f"{base.stem}-cut", text[: rng.randrange(len(text))].encode()))
        out.append((f"{base.stem}-bytes", bytes(rng.randrange(256) for _ in range(300))))
    bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 12):
        p, c = chr(96 + i), chr(97 + i)
        bomb.append(f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]")
    out += [
        ("alias-bomb", ("\n".join(bomb) + "\n").encode()),
        ("deep-list", ("layers: " + "[" * 5000 + "]" * 5000 + "\n").encode()),
        ("deep-map", ("layers:\n" + "".join(" " * i + "a:\n" for i in range(1, 400))).encode()),
        ("binary", rng.randbytes(2048)),
        ("empty", b""),
        ("nul", b"name: x\x00\ninput: [1, 1, 1]\n"),
        ("bom", "\ufeffname: bom\ninput: [8, 8, 1]\nlayers: [Flatten]\n".encode()),
        ("latin1", "name: caf\xe9\n".encode("latin-1")),
        ("python-tag", b"name: !!python/object/apply:os.system ['true']\n"),
        ("self-alias", b"layers: &a [*a]\n"),
        ("huge", b"name: x\n" + b"# padding\n" * 400_000),
        ("list-top", b"- Conv2D\n- Dense\n"),
        ("scalar-top", b"42\n"),
        (
            "huge-numbers",
            b"name: n\ninput: [99999999999, 99999999999, 3]\nlayers:\n"
            b"  - Conv2D: {filters: 99999999999, kernel_size: 3}\n"
            b"  - Flatten\n  - Dense: {units: 10}\n",
        ),
        (
            "repeat-bomb",
            b"name: r\ninput: [8, 8, 1]\nblocks:\n  b:\n    layers:\n"
            b"      - Conv2D: {filters: 1, kernel_size: 1, repeat: 1000}\n"
            b"layers:\n  - b: {repeat: 1000}\n",
        ),
        (
            "nested-empty-repeat",
            b"name: e\ninput: [8, 8, 1]\nblocks:\n  a:\n    layers: []\n"
            b"  b:\n    layers: [{a: {repeat: 1000}}]\n  c:\n    layers: [{b: {repeat: 1000}}]\n"
            b"  d:\n    layers: [{c: {repeat: 1000}}]\nlayers:\n  - d: {repeat: 1000}\n",
        ),
        (
            "big-int",
            b"name: b\ninput: [8, 8, 1]\nlayers:\n  - Dense: {units: " + b"9" * 5000 + b"}\n",
        ),
        (
            "template-chain",
            b"name: t\ninput: [8, 8, 1]\nblocks:\n"
            + b"".join(f"  t{i}:\n    layers: [t{i + 1}]\n".encode() for i in range(300))
            + b"  t300:\n    layers: [Flatten]\nlayers: [t0]\n",
        ),
        (
            "bad-arithmetic",
            b"name: a\ninput: [8, 8, 1]\nblocks:\n  b:\n    params: [f]\n    layers:\n"
            b"      - Conv2D: {filters: $f * (2, kernel_size: $f // 0}\nlayers: [{b: {f: 2}}]\n",
        ),
        (
            "self-template",
            b"name: s\ninput: [8, 8, 1]\nblocks:\n  b:\n    layers: [b]\nlayers: [b]\n",
        ),
    ]
    return out


CORPUS = mutants()


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 300


def test_the_corpus_is_the_same_on_every_run():
    assert mutants(0) == CORPUS
    assert mutants(1) != CORPUS


def test_every_mutant_gives_an_error_or_a_clean_config(tmp_path):
    clean = 0
    for name, blob in CORPUS:
        path = tmp_path / f"{name}.yaml"
        path.write_bytes(blob)
        cfg, tr, findings = check_file(path)  # must not raise
        errors = [f for f in findings if f.severity == "error"]
        if not errors:
            # no error means a config the builder can take: every layer traced to a shape
            assert cfg is not None and tr is not None, name
            assert cfg.nodes and tr.complete and tr.output_shape is not None, name
            clean += 1
        for f in findings:
            assert f.line >= 0 and f.column >= 0 and f.message, (name, f)
            assert f.file == str(path) and f.rule, (name, f)
    assert 0 < clean < len(CORPUS)


def test_validate_cli_over_the_whole_corpus(tmp_path):
    for name, blob in CORPUS:
        (tmp_path / f"{name}.yaml").write_bytes(blob)
    proc = subprocess.run(
        [sys.executable, "-m", "cnnbuild", "validate", str(tmp_path), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr == ""
    import json

    findings = json.loads(proc.stdout)
    assert {os.path.basename(f["file"]) for f in findings if f["severity"] == "error"} >= {
        "alias-bomb.yaml",
        "deep-list.yaml",
        "binary.yaml",
        "python-tag.yaml",
        "huge.yaml",
        "self-template.yaml",
        "repeat-bomb.yaml",
        "nested-empty-repeat.yaml",
        "big-int.yaml",
        "template-chain.yaml",
        "bad-arithmetic.yaml",
    }


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.text(max_size=400) | st.binary(max_size=400).map(lambda b: b.decode("latin-1")))
def test_random_text_never_crashes(text):
    from cnnbuild.config import from_document
    from cnnbuild.source import parse_text
    from cnnbuild.trace import trace

    doc = parse_text(text, "random.yaml")
    cfg = from_document(doc)
    if cfg is None:
        assert doc.findings
        return
    if cfg.input_shape[2] is None:
        assert not cfg.ok  # `input:` is required
        return
    tr = trace(cfg)
    assert not cfg.ok or tr.findings or tr.complete
