# Each target sets up what it needs: a virtual environment in .venv with the project and its
# test extra installed, rebuilt when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean postgresql

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m agent.testing.demo

test: $(STAMP) postgresql
	$(BIN)/python -m pytest

# The lease tests run a throwaway PostgreSQL cluster with Debian's initdb and pg_ctl; install
# the package when it is missing (as root, or through sudo).
postgresql:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "installing Debian's postgresql package for the lease tests"; \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check agent tests bench
	$(BIN)/ruff format --check agent tests bench

bench: $(STAMP)
	$(BIN)/python bench/bench_once.py
	$(BIN)/python bench/bench_writer.py
	$(BIN)/python bench/bench_run_rss.py
	$(BIN)/python bench/bench_controller.py
	$(BIN)/python bench/bench_ssm.py --runs 2

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
