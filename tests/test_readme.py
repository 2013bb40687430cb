"""Keep the README a true front page: the two commands first, the case each timing measures,
how to run cnnbuild after ``make demo``, links that resolve, at most 400 lines; and the
configs the pages show are the shipped ones."""

from __future__ import annotations

import re

from tests.conftest import CONFIGS, ROOT
from tests.readme_examples import pages

README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```$", re.M | re.S)


def test_first_two_commands_are_demo_and_test():
    block = README.split("```", 2)[1].strip().splitlines()
    assert [line.split()[:2] for line in block[:2]] == [["make", "demo"], ["make", "test"]]


def test_the_readme_is_a_front_page():
    assert len(README.splitlines()) <= 400


def test_the_demo_timing_says_which_case_it_measures():
    demo_line = README.split("```", 2)[1].strip().splitlines()[0]
    assert "fresh clone" in demo_line and ".venv present" in demo_line, demo_line


def test_after_make_demo_the_pages_say_how_to_run_cnnbuild():
    for page in (README, (ROOT / "docs" / "getting-started.md").read_text()):
        assert "source .venv/bin/activate" in page
        assert ".venv/bin/cnnbuild --help" in page


def test_every_relative_link_of_the_readme_resolves():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if "://" not in link]
    assert local
    for link in local:
        assert (ROOT / link).exists(), link


def test_every_zoo_config_is_documented():
    zoo = (ROOT / "docs" / "guides" / "model-zoo.md").read_text()
    for path in (CONFIGS / "zoo").glob("*.yaml"):
        assert f"`{path.name}`" in zoo, path.name


def test_a_config_named_like_a_shipped_one_is_the_shipped_file():
    """A YAML block that names a config of configs/ is that file (or includes it)."""
    shipped = {p.stem: p.read_text() for p in CONFIGS.glob("*.yaml")}
    included = 0
    for page in pages():
        for lang, body in FENCE.findall(page.read_text()):
            name = re.search(r"^name: (\S+)", body, re.M)
            if lang.strip() == "yaml" and name and name.group(1) in shipped:
                assert body == shipped[name.group(1)], (page, name.group(1))
            included += '--8<-- "configs/cifar10_tutorial.yaml"' in body
    assert included, "the config format guide includes configs/cifar10_tutorial.yaml"
