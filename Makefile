# Quick start: `make demo` (build the demo index and serve it), `make test` (run the suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_INDEX ?= demo.duckdb
HOST ?= 127.0.0.1
PORT ?= 8000

# Nothing in tests or the demo may wait on the (unreachable) Hugging Face Hub.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE := disabled
export TOKENIZERS_PARALLELISM := false

.PHONY: install lint typecheck test demo bench clean

# Heavy dependencies are installed once per pyproject change; torch first, pinned,
# so no other requirement can pull a CUDA build.
# (The front-end files first: installing the extras builds the package, which ships them.)
$(BIN)/.deps-stamp: pyproject.toml static/vendor/htmx.min.js
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q ".[test]"
	touch $@

# Front-end files come from the npm registry, never from the repository.
static/vendor/htmx.min.js: package.json package-lock.json
	npm ci --silent --no-audit --no-fund
	mkdir -p static/vendor
	cp node_modules/swagger-ui-dist/swagger-ui-bundle.js node_modules/swagger-ui-dist/swagger-ui.css static/vendor/
	cp node_modules/htmx.org/dist/htmx.min.js static/vendor/htmx.min.js

# Our own code is installed as a regular (non-editable) package so tests exercise
# exactly what a user gets, including package data.
install: $(BIN)/.deps-stamp static/vendor/htmx.min.js
	rm -rf build  # a stale build/ would ship modules that no longer exist
	$(BIN)/pip install -q --no-deps --no-build-isolation --force-reinstall .

lint: $(BIN)/.deps-stamp
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The package is checked as installed: its folders only form `actscope` once installed
# (see pyproject's package-dir), so mypy runs outside the checkout.
typecheck: install
	cd $(VENV) && bin/mypy --config-file $(CURDIR)/pyproject.toml --cache-dir $(CURDIR)/$(VENV)/.mypy_cache -p actscope

test: lint typecheck
	bash tests/ensure_chromium.sh
	$(BIN)/pytest -q

demo: install
	$(BIN)/actscope demo --out $(DEMO_INDEX) --host $(HOST) --port $(PORT)

bench: install
	$(BIN)/python bench/index_overhead.py
	$(BIN)/python bench/accumulator_overhead.py
	$(BIN)/python bench/index_memory.py
	$(BIN)/python bench/server.py

clean:
	rm -rf $(VENV) node_modules static/vendor build *.egg-info
