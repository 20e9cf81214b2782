# Two commands do all the set-up on a fresh machine:
#   make demo   train on scikit-learn's bundled digits and write a report folder
#   make test   run the test suite (fast checks; `make test-slow` adds the slow ones)
# Each creates .venv, installs the pinned CPU build of torch first (an unpinned
# torch would pull a multi-GB CUDA build), then this package with its extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
DEMO_OUT ?= reports/demo
DOCS_JOBS ?= auto

.PHONY: demo test test-slow bench-speed docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_PIN)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/pvae demo --out $(DEMO_OUT)

test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q

bench-speed: $(VENV)/.installed
	$(PY) benchmarks/train_speed.py --data-dir ../shared/data/mnist

# API reference + tutorials (run in smoke mode, with their figures) -> docs/_build/html;
# the test suite builds a fast variant (PVAE_DOCS_FAST=1: tutorials not run), see tests/test_docs.py
docs: $(VENV)/.installed
	$(PY) -m sphinx -j $(DOCS_JOBS) -W --keep-going -b html -d docs/_build/doctrees docs docs/_build/html
	@echo "open docs/_build/html/index.html"

clean:
	rm -rf $(VENV) reports .pytest_cache docs/_build docs/tutorials
