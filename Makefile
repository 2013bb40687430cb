# cnnbuild: `make demo` and `make test` each install what they need first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXPORT := $(VENV)/.installed-export
DOCS   := $(VENV)/.installed-docs
export NO_MKDOCS_2_WARNING := 1

.PHONY: install demo test lint format schema bench docs docs-serve clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

# the tests also export and verify models: tf2onnx, onnx, onnxruntime, ai-edge-litert
$(EXPORT): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[train,dev,export]'
	touch $(EXPORT)

# the documentation site: mkdocs and Material for MkDocs
$(DOCS): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS)

demo: install
	$(BIN)/cnnbuild validate configs/
	$(BIN)/cnnbuild train configs/shapes_demo.yaml

# tests/test_docs_site.py builds the site with --strict, so the tests (and CI) fail on a broken link
# the longest test files start first (tests/file_durations.py), not xdist's order by test count
test: $(EXPORT) $(DOCS)
	$(BIN)/ruff check cnnbuild tests benchmarks docs/hooks
	$(BIN)/ruff format --check cnnbuild tests benchmarks docs/hooks
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

# the site in site/; --strict: a broken link or a stale marker fails like a test
docs: $(DOCS)
	$(BIN)/mkdocs build --strict

docs-serve: $(DOCS)
	$(BIN)/mkdocs serve --strict

lint: install
	$(BIN)/ruff check cnnbuild tests benchmarks docs/hooks
	$(BIN)/ruff format --check cnnbuild tests benchmarks docs/hooks

format: install
	$(BIN)/ruff format cnnbuild tests benchmarks docs/hooks
	$(BIN)/ruff check --fix cnnbuild tests benchmarks docs/hooks

schema: install
	$(BIN)/cnnbuild schema -o schema/cnnbuild.schema.json

bench: install
	$(BIN)/python benchmarks/validate_speed.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/precision_accuracy.py
	$(BIN)/python benchmarks/gradient_flow_cost.py
	$(BIN)/python benchmarks/trace_grads_cost.py
	$(BIN)/python benchmarks/deep_model.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis site
