# lth-runner developer commands. `make demo` and `make test` work on a fresh machine (they install first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint bench clean

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

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache outputs/runs outputs/sweeps
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
