# relaybox: `make run` starts the relay on this host, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all setup run test lint format bench clean

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/relaybox run $(RUN_ARGS)

test: $(STAMP)
	$(BIN)/ruff format --check firmware boards host_tools tests bench
	$(BIN)/ruff check firmware boards host_tools tests bench
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff format firmware boards host_tools tests bench
	$(BIN)/ruff check --fix firmware boards host_tools tests bench

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf build .pytest_cache
