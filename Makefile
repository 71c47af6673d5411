# `make run` and `make test` set themselves up: a .venv with everything installed, refreshed only
# when pyproject.toml changes. torch is pinned to 2.13.0 only when the venv has no torch yet, so a
# user who installed their own build (CUDA, ROCm, MPS) keeps it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

# glibc returning large FFT buffers to the OS on every call is a measurable cost for the DSP.
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 4000000000

.PHONY: run test setup bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/jamserver serve $(ARGS)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_dsp.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
