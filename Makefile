# Each target sets up what it needs: a virtual environment in .venv with the project and its
# test extra installed, rebuilt when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m agent.testing.demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check agent tests bench
	$(BIN)/ruff format --check agent tests bench

bench: $(STAMP)
	$(BIN)/python bench/bench_once.py
	$(BIN)/python bench/bench_writer.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
