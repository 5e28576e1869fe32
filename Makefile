# Quick start: `make demo` (synthetic cohort through the pipeline) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# ACES (es-aces), the MEDS task extractor users run before ehr-ssl, for the test of
# pipelines/aces (tests/data/test_aces.py): its own environment, since it needs polars < 2.
ACES_VENV := .venv-aces
ACES_STAMP := $(ACES_VENV)/.installed
ACES_VERSION := 0.7.3

.PHONY: install demo test lint bench schemas clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

$(ACES_STAMP):
	test -x $(ACES_VENV)/bin/python || $(PYTHON) -m venv $(ACES_VENV)
	$(ACES_VENV)/bin/python -m pip install --quiet "es-aces==$(ACES_VERSION)"
	touch $(ACES_STAMP)

demo: $(STAMP)
	$(BIN)/ehr-ssl demo --out runs/demo

# The README's test command (and CI's): lint and format check, then the whole suite.
test: lint $(ACES_STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check ehr_ssl tests benchmarks
	$(BIN)/ruff format --check ehr_ssl tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_synth.py --visits 100000
	$(BIN)/python benchmarks/bench_tokenize.py --visits 100000

# Regenerate data_schemas/*.json from ehr_ssl/data/schema.py (a test checks they agree).
schemas: $(STAMP)
	$(BIN)/python -m ehr_ssl.data.schema data_schemas

clean:
	rm -rf $(VENV) $(ACES_VENV) runs .pytest_cache
