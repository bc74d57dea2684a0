# The README's two commands: `make dev` (run Hydrant with demo data) and `make test` (lint, types, tests).
# Both create the virtual environment themselves.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: dev test lint typecheck unit integration clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

dev: $(VENV)/.installed
	$(BIN)/hydrant dev

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

unit: $(VENV)/.installed
	$(BIN)/pytest tests/unit

integration: $(VENV)/.installed
	$(BIN)/pytest tests/integration

test: lint typecheck
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .hydrant .pytest_cache .mypy_cache .ruff_cache
