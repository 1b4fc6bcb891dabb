# Every target sets itself up: a fresh machine needs only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DOCS_STAMP := $(VENV)/.docs-installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test check bench docs dist clean setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/quantum-partitioner demo

# The suite runs in TEST_WORKERS processes (pytest-xdist); `make test TEST_WORKERS=0` runs it
# in one. loadgroup keeps the tests of a module-scoped fixture (a Dask cluster, a built
# wheel) on one worker, so each is set up once; the other tests go to whichever is free.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

check: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy --strict src tests/typing

bench: $(STAMP)
	$(BIN)/python bench/run.py

# A wheel and an sdist in dist/, checked as PyPI checks them (metadata, README rendering).
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

# The documentation site, into site/; warnings (a broken link, a missing page) fail it.
# NO_MKDOCS_2_WARNING silences the banner mkdocs-material >= 9.7 prints about its future.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	rm -f $(VENV)/.docs-installed-*
	touch $(DOCS_STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis site dist
