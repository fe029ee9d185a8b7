# Two commands set everything up from nothing: `make run` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SCENARIO ?= scenarios/default.yaml

.PHONY: run test test-fast smoke lint clean paper paper-reduced async-results

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fleetsim run $(SCENARIO)

smoke: $(STAMP)
	$(BIN)/fleetsim run scenarios/smoke.yaml --no-live

test: $(STAMP)
	$(BIN)/pytest -q

# the fast subset: no end-to-end runs, no Ray
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow and not ray"

paper: $(STAMP)
	$(BIN)/fleetsim paper

paper-reduced: $(STAMP)
	$(BIN)/fleetsim paper --reduced

# synchronous against asynchronous (FedBuff) rounds: docs/results-async.md
async-results: $(STAMP)
	$(BIN)/python -m fleetsim.suite.asynchrony

lint: $(STAMP)
	$(BIN)/ruff check fleetsim policies tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .test-cache
