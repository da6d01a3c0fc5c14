# mpnn book. `make test` and `make book` bootstrap everything they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= default
CHAPTER ?=
export MPNN_DATA_DIR ?= $(CURDIR)/data/mnist

JOBS ?=
JOBS_FLAG := $(if $(JOBS),--jobs $(JOBS),)

.PHONY: help setup test smoke unit unit-foreign lint chapters-smoke site site-test book figures lab bench timing clean

help:
	@echo "make test     unit tests, every chapter (default profile: every claim decided), site build, browser check"
	@echo "make smoke    the same with the smoke profile (fast iteration; many claims not tested)"
	@echo "make book     every chapter (default profile), site in _build/html"
	@echo "make lab      JupyterLab with the project's kernel"
	@echo "make figures  regenerate figure files (CHAPTER=name, PROFILE=default)"
	@echo "make bench    benchmark harness -> _build/bench/results.json, then the performance page"
	@echo "make timing   replay the recorded timing claims 5 times with one core kept busy"

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11-3.13 is needed (python3 on PATH)"; exit 1; }
	@# a venv that a failed `python3 -m venv` left behind has a python but no pip: start again
	@$(PY) -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV); $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "error: '$(PYTHON) -m venv' failed. On Debian/Ubuntu: apt-get install python3-venv"; exit 1; }; }
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name mpnn --display-name "Python 3 (mpnn)"
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# Headless Chromium for the site check (Debian's package; needs root or sudo).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi; }

setup: $(VENV)/.installed node_modules/.installed

# The unit tests a second time as a foreign machine: ATen, MKL and oneDNN held to AVX2, the compiled
# kernels built for x86-64-v3 instead of this CPU, one thread, and no skip because of the CPU.
BASELINE_MARCH := $(if $(filter x86_64,$(shell uname -m)),x86-64-v3,armv8-a)
FOREIGN := ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
	MPNN_MARCH=$(BASELINE_MARCH) MPNN_CACHE_DIR=$(CURDIR)/_build/cache-foreign OMP_NUM_THREADS=1

unit: setup
	$(PY) -m pytest tests --ignore=tests/test_site.py -q

# The foreign-machine pass leaves out the tests whose outcome cannot depend on the CPU (the folder
# tree, the prose, the project files, the runner's bookkeeping, the timing-claim replays).
CPU_FREE = --ignore=tests/test_site.py --ignore=tests/test_jupyterlab.py --ignore=tests/test_layout.py \
	--ignore=tests/test_prose.py --ignore=tests/test_project.py --ignore=tests/test_runner.py \
	--ignore=tests/test_timing.py
unit-foreign: setup
	$(FOREIGN) $(PY) -m pytest tests $(CPU_FREE) -q -p no:cacheprovider

chapters-smoke: setup
	$(PY) -m mpnn run --profile smoke --keep-going $(JOBS_FLAG)

site: setup
	$(PY) -m mpnn build

site-test: setup browser
	MPNN_REQUIRE_SITE=1 $(PY) -m pytest tests/test_site.py -q

# CI: the book exactly as `make book` publishes it (default profile), then the site and its browser check.
# The linter (rules in pyproject.toml) and the stripped-notebook check.
lint: setup
	$(PY) -m ruff check mpnn tests book
	$(PY) -m pytest tests/test_project.py -q -k stripped

test: setup browser lint
	$(PY) -m pytest tests --ignore=tests/test_site.py --ignore=tests/test_jupyterlab.py -q
	$(MAKE) --no-print-directory unit-foreign
	$(PY) -m mpnn run --profile default --keep-going $(JOBS_FLAG)
	$(PY) -m mpnn build
	MPNN_REQUIRE_SITE=1 $(PY) -m pytest tests/test_site.py -q
	MPNN_REQUIRE_LAB=1 $(PY) -m pytest tests/test_jupyterlab.py -q

# Fast iteration: the same steps on the smoke profile.
smoke: setup browser
	$(PY) -m pytest tests --ignore=tests/test_site.py -q
	$(PY) -m mpnn run --profile smoke --keep-going $(JOBS_FLAG)
	$(PY) -m mpnn build
	MPNN_REQUIRE_SITE=1 $(PY) -m pytest tests/test_site.py -q

book: setup
	$(PY) -m mpnn run --profile $(PROFILE) $(JOBS_FLAG)
	$(PY) -m mpnn build
	@echo "open _build/html/index.html"

figures: setup
	$(PY) -m mpnn run $(CHAPTER) --profile $(PROFILE)
	@echo "figure files: _build/figures/"

lab: setup
	MPNN_DATA_DIR=$(MPNN_DATA_DIR) $(VENV)/bin/jupyter lab --notebook-dir=book

# The harness runs once, alone, then the performance page shows its results.
bench: setup
	$(PY) -m mpnn run performance --profile $(PROFILE)

# Needs the chapters' recorded timing claims (_build/timing/, written by `make book` or `make test`).
timing: setup
	$(PY) -m mpnn timing --repeats 5 --load 1

clean:
	rm -rf _build
