# mmue: every entry point of the project. `make help` lists them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export MMUE_DATA ?= $(abspath ../shared/data)
SCALE ?= $(if $(wildcard $(MMUE_DATA)/flickr8k/train.csv),cpu,smoke)
NB ?=
NPROC ?= 1
YES ?=
PART ?=
LAB_FLAGS ?=
BROWSER_VENV := .venv-browser
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: help install test test-fast browser-test smoke paper-slice repro plan executed nb tables figures report lab vocabulary clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  SCALE=smoke|cpu|paper|paper-flickr30k|paper-coco|gpu-smoke (now: $(SCALE)); PART=paper|extensions (01-09 or 10-16; default all); MMUE_DATA=$(MMUE_DATA)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# The kernel the notebooks name ("Python 3 (mmue)"), so that the lab keeps their kernelspec as committed.
	$(PY) -m ipykernel install --sys-prefix --name mmue --display-name "Python 3 (mmue)" > /dev/null
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with its test tools

# Tests run in TEST_WORKERS processes of one thread each (pytest-xdist; tiny models gain more from
# processes than from threads); the workers share one run cache, whose runs each compute once.
TEST_WORKERS ?= 2

test: $(STAMP) ## run the test suite (unit tests, two-process runs, every notebook at smoke scale)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

test-fast: $(STAMP) ## the quick loop while working: unit tests only (no notebook, no torchrun, no training to check a method works)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not notebook and not slow"

browser-test: $(STAMP) ## Run All of 01, 02 and 04 (smoke) in JupyterLab and a save of each, then the cpu report's pages, in headless Chromium with selenium (a few minutes)
	@test -x /usr/bin/chromedriver || { echo "needs Debian's browser: apt-get install -y chromium chromium-driver"; exit 2; }
	test -x $(BROWSER_VENV)/bin/python || $(PYTHON) -m venv $(BROWSER_VENV)
	$(BROWSER_VENV)/bin/python -m pip install -q selenium
	$(PY) -c "from mmue_lib.notebooks import write_report; write_report('cpu')"
	$(BROWSER_VENV)/bin/python tests/browser/lab_run_all.py --report site/index.html

smoke: $(STAMP) ## execute every notebook at smoke scale
	$(PY) -m mmue_lib.notebooks --scale smoke

paper-slice: $(STAMP) ## every notebook with the paper's models and schedules on a slice (scale gpu-smoke; NPROC=2: two processes per run); prints time and peak memory per notebook
	$(PY) -m mmue_lib.notebooks --scale gpu-smoke --yes $(if $(filter-out 1,$(NPROC)),--set nproc=$(NPROC))

repro: $(STAMP) ## execute the notebooks at SCALE (PART=paper: 01-09, PART=extensions: 10-16), writing results/ and figures/; asks before more than an hour (YES=1: does not)
	$(PY) -m mmue_lib.notebooks --scale $(SCALE) $(if $(PART),--part $(PART)) $(if $(YES),--yes)

plan: $(STAMP) ## say what make repro would run and about how long it takes here, without running it
	$(PY) -m mmue_lib.notebooks --scale $(SCALE) $(if $(PART),--part $(PART)) --plan

executed: $(STAMP) ## execute every notebook at cpu scale into executed/cpu, results/cpu and figures/cpu, which git keeps, from one set of runs (the run cache; PART= narrows it; asks first)
	$(PY) -m mmue_lib.notebooks --scale cpu $(if $(PART),--part $(PART)) $(if $(YES),--yes)

nb: $(STAMP) ## execute one notebook: make nb NB=01_data_overview SCALE=smoke
	$(PY) -m mmue_lib.notebooks --scale $(SCALE) --only $(NB) $(if $(YES),--yes)

tables: $(STAMP) ## execute the notebooks that write tables
	$(PY) -m mmue_lib.notebooks --scale $(SCALE) --produces table $(if $(YES),--yes)

figures: $(STAMP) ## execute the notebooks that write figures
	$(PY) -m mmue_lib.notebooks --scale $(SCALE) --produces figure $(if $(YES),--yes)

report: $(STAMP) ## a static HTML site of the executed notebooks of SCALE in site/ (open site/index.html)
	$(PY) -c "from mmue_lib.notebooks import write_report; print(write_report('$(SCALE)'))"

lab: $(STAMP) ## start JupyterLab with the project's kernel (as root too: containers, CI runners); makes each notebook's .ipynb from its .py where missing or older
	$(VENV)/bin/jupytext --sync --quiet notebooks/[0-9][0-9]_*.py
	$(VENV)/bin/jupyter lab $(ROOT_FLAG) $(LAB_FLAGS) notebooks

vocabulary: $(STAMP) ## rewrite the study vocabulary shipped for small collections' triggers from $(MMUE_DATA)/flickr8k/train.csv
	$(PY) -c "from mmue_lib.triggers import write_study_vocabulary as w; print(w('$(MMUE_DATA)/flickr8k/train.csv'), 'words')"

clean: ## remove executed notebooks other than the committed cpu ones, and Python caches (not .venv, not results)
	if [ -d executed ]; then find executed -mindepth 1 -maxdepth 1 ! -name cpu -exec rm -rf {} +; fi
	rm -rf .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
