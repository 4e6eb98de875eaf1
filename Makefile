# mmue: every entry point of the project. `make help` lists them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export MMUE_DATA ?= $(abspath ../shared/data)
SCALE ?= $(if $(wildcard $(MMUE_DATA)/flickr8k/train.csv),cpu,smoke)
NB ?=

.PHONY: help install test smoke repro nb tables figures lab clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'
	@echo "  SCALE=smoke|cpu|paper (now: $(SCALE)); MMUE_DATA=$(MMUE_DATA)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with its test tools

test: $(STAMP) ## run the test suite (unit tests + every notebook at smoke scale)
	$(PY) -m pytest -q

smoke: $(STAMP) ## execute every notebook at smoke scale
	$(PY) -m mmue_lib.notebooks --scale smoke

repro: $(STAMP) ## execute every notebook at SCALE, writing results/SCALE and figures/SCALE
	$(PY) -m mmue_lib.notebooks --scale $(SCALE)

nb: $(STAMP) ## execute one notebook: make nb NB=01_data_overview SCALE=smoke
	$(PY) -m mmue_lib.notebooks --scale $(SCALE) --only $(NB)

tables: $(STAMP) ## execute the notebooks that write tables
	$(PY) -m mmue_lib.notebooks --scale $(SCALE) --produces table

figures: $(STAMP) ## execute the notebooks that write figures
	$(PY) -m mmue_lib.notebooks --scale $(SCALE) --produces figure

lab: $(STAMP) ## start JupyterLab with the project's kernel
	$(VENV)/bin/jupyter lab notebooks

clean: ## remove executed notebooks and Python caches (not .venv, not results)
	rm -rf executed .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
