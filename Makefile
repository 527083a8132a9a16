# The README's commands. Each target installs what it needs itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench fuzz clean

$(STAMP): setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## make run: start the service on :4040 (SQLite, nothing else to start)
run: $(STAMP)
	$(BIN)/zipstream serve

## make test: lint, type-check, then the whole test suite against real services and zip readers
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check zipstream tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python tests/support/system_deps.py
	$(BIN)/pytest

## make fuzz: schemathesis against /openapi.json, 200 examples per operation (thousands of requests)
fuzz: $(STAMP)
	ZIPSTREAM_FUZZ_EXAMPLES=200 $(BIN)/pytest -q -s tests/test_fuzz.py

## make bench: the benchmarks of bench/ (minutes; results in bench/results/)
bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
