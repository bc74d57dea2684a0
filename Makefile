# The README's two commands: `make dev` (run Hydrant with demo data) and `make test` (lint, types, tests).
# Both create the virtual environment themselves.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: dev test tools lint typecheck unit integration storm clean

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
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed
	$(BIN)/mypy

unit: $(VENV)/.installed
	$(BIN)/pytest tests/unit

integration: $(VENV)/.installed
	$(BIN)/pytest tests/integration

# The rebalance storm's long form (issue 31): 40,000 payments and 20 membership changes over ~90 s,
# 10 runs for each standby setting (standby replicas 0 and 1); CI runs the short form once.
storm: $(VENV)/.installed
	HYDRANT_STORM=long HYDRANT_STORM_REPEAT=10 $(BIN)/pytest tests/reliability/test_rebalance_storm.py -x

# Debian tools the deployment tests drive: a real Prometheus + promtool, docker-compose (parses the
# compose file without a daemon), chromium for the console test. Installed when root; otherwise those
# tests skip, saying so (in CI they fail instead).
DEBIAN_TOOLS := prometheus docker-compose chromium
tools:
	@if command -v promtool >/dev/null && command -v docker-compose >/dev/null && command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_TOOLS) >/dev/null; \
	else echo "note: sudo apt-get install $(DEBIAN_TOOLS) to run the deployment tests"; fi

test: tools lint typecheck
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .hydrant .pytest_cache .mypy_cache .ruff_cache
