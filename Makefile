# Two commands on a fresh machine with only Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: run test worker sandbox migrate lint format typecheck check bench stop-db clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -U pip setuptools wheel

# Re-install when pyproject.toml changes; the stamps remember which extras are in.
$(VENV)/.stamp-base: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	@touch $@

$(VENV)/.stamp-dev: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev]'
	@touch $@ $(VENV)/.stamp-base

$(VENV)/.stamp-bench: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev,bench]'
	@touch $@ $(VENV)/.stamp-dev $(VENV)/.stamp-base

run: $(VENV)/.stamp-base  ## the service with its worker (embedded Postgres + sandbox by default)
	$(BIN)/audience-sync serve

# One pytest worker a CPU (pytest-xdist); PYTEST_WORKERS=0 runs the suite in one process.
PYTEST_WORKERS ?= auto

test: $(VENV)/.stamp-dev  ## the whole suite (TEST_DATABASE_URL, else an embedded Postgres)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

worker: $(VENV)/.stamp-base
	$(BIN)/audience-sync worker

sandbox: $(VENV)/.stamp-base
	$(BIN)/audience-sync sandbox mailchimp --port 8025

migrate: $(VENV)/.stamp-base
	$(BIN)/audience-sync migrate

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(VENV)/.stamp-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(VENV)/.stamp-dev
	$(BIN)/mypy

check: lint typecheck  ## static checks CI runs besides the tests

bench: $(VENV)/.stamp-bench
	@echo "see docs/benchmarks.md for the commands of each benchmark"

stop-db: $(VENV)/.stamp-base  ## stop the embedded PostgreSQL that `make run` left running
	$(BIN)/python -c "from pathlib import Path; from app.db import stop_embedded_postgres; stop_embedded_postgres(Path('.data'))"

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
