# lth-runner developer commands. `make demo` and `make test` work on a fresh machine (they install first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint bench gpu-bundle gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/lth-run experiment=demo

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ''

lint: install
	$(BIN)/ruff check lth_runner tests scripts
	$(BIN)/ruff format --check lth_runner tests scripts

bench: install
	$(BIN)/python scripts/bench_core.py

# GPU check (docs/performance.md): `make gpu-bundle` here fills the git-ignored .gpu_bundle/ (wheels the bare, offline
# device machine lacks, and the CIFAR-10 archive); there, `make gpu-check` (or `bash scripts/gpu_check.sh`) measures.
# `make gpu-check GPU_CHECK_ARGS=--tiny`: the tiny CPU mode that CI runs (tests/test_gpu_check.py).
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_CHECK_ARGS ?=

gpu-bundle:
	PYTHON=$(PYTHON) bash scripts/gpu_bundle.sh

gpu-check:
	PYTHON=$(GPU_PYTHON) bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache outputs/runs outputs/sweeps
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
