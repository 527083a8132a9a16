# The README's commands. Each target installs what it needs itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `make run` serves on loopback only: with HTTP_ALLOW_PRIVATE=true a LAN-wide listener would fetch
# intranet URLs for anyone who can reach it. `make run HOST=0.0.0.0` to serve others on purpose.
HOST ?= 127.0.0.1
# `make bench` writes to an untracked directory; `make bench BENCH_OUT=bench/results` to update the
# committed tables. ARGS go to `python -m bench` (see `make bench ARGS=--help`).
BENCH_OUT ?= bench/results/local
ARGS ?=
# pytest-xdist: two processes (CI has 2 cores), each running whole test files (their servers and
# databases stay per file). `make unit PYTEST_PARALLEL=` runs the suite in one process.
PYTEST_PARALLEL ?= -n 2 --dist loadfile
# Two stamps: serving needs the package and its dependencies only; the test tools (moto, mypy,
# schemathesis, selenium, ...) are installed by the targets that use them.
SERVE_STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint typecheck unit bench fuzz clean

$(BIN)/pip:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(SERVE_STAMP): setup.cfg setup.py | $(BIN)/pip
	$(BIN)/pip install --quiet -e .
	touch $(SERVE_STAMP)

$(TEST_STAMP): setup.cfg setup.py | $(BIN)/pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(TEST_STAMP) $(SERVE_STAMP)

## make run: start the service on http://127.0.0.1:4040 (SQLite, nothing else to start; HOST=, PORT= to change)
run: $(SERVE_STAMP)
	$(BIN)/zipstream serve --host '$(HOST)'

## make test: lint, type-check, then the whole test suite against real services and zip readers
test: lint typecheck unit

lint: $(TEST_STAMP)
	$(BIN)/ruff check zipstream tests bench

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

unit: $(TEST_STAMP)
	$(BIN)/python tests/support/system_deps.py
	$(BIN)/pytest $(PYTEST_PARALLEL)

## make fuzz: schemathesis against /openapi.json, 200 examples per operation (thousands of requests)
fuzz: $(TEST_STAMP)
	ZIPSTREAM_FUZZ_EXAMPLES=200 $(BIN)/pytest -q -s tests/test_fuzz.py

## make bench: the benchmarks of bench/ (minutes); tables in $(BENCH_OUT)/, options in ARGS="..."
bench: $(TEST_STAMP)
	$(BIN)/python -m bench --results '$(BENCH_OUT)' $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
