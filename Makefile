# cnnbuild: `make demo` and `make test` each install what they need first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint format schema bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/cnnbuild validate configs/
	$(BIN)/cnnbuild train configs/shapes_demo.yaml

test: install
	$(BIN)/ruff check cnnbuild tests benchmarks
	$(BIN)/ruff format --check cnnbuild tests benchmarks
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check cnnbuild tests benchmarks
	$(BIN)/ruff format --check cnnbuild tests benchmarks

format: install
	$(BIN)/ruff format cnnbuild tests benchmarks
	$(BIN)/ruff check --fix cnnbuild tests benchmarks

schema: install
	$(BIN)/cnnbuild schema -o schema/cnnbuild.schema.json

bench: install
	$(BIN)/python benchmarks/validate_speed.py
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
