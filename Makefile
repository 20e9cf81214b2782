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

.PHONY: demo test test-slow bench-speed clean

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

clean:
	rm -rf $(VENV) reports .pytest_cache
