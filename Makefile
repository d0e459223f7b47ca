# `make demo` and `make test` each build .venv on first use: dgl_iflow with the exact, tested stack
# of constraints.txt (setup.cfg only declares the supported ranges).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export DGL_IFLOW_DATA ?= $(abspath ../shared/data)
# The demos and tests move small tensors, where one thread beats two (benchmarks set their own).
export OMP_NUM_THREADS ?= 1

.PHONY: demo test venv

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/dgl-iflow demo expressiveness

test: $(STAMP)
	$(BIN)/python -m pytest
