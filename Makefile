# cnnbuild: `make demo` and `make test` each install what they need first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXPORT := $(VENV)/.installed-export

.PHONY: install demo test lint format schema bench clean

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

demo: install
	$(BIN)/cnnbuild validate configs/
	$(BIN)/cnnbuild train configs/shapes_demo.yaml

test: $(EXPORT)
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
	$(BIN)/python benchmarks/precision_accuracy.py
	$(BIN)/python benchmarks/gradient_flow_cost.py
	$(BIN)/python benchmarks/trace_grads_cost.py
	$(BIN)/python benchmarks/deep_model.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
