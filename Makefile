# `make demo` and `make test` each build .venv from the pins in setup.cfg on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export DGL_IFLOW_DATA ?= $(abspath ../shared/data)
# The demos and tests move small tensors, where one thread beats two (benchmarks set their own).
export OMP_NUM_THREADS ?= 1

.PHONY: demo test venv

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/dgl-iflow demo expressiveness

test: $(STAMP)
	$(BIN)/python -m pytest
