# Two tested stacks, each in its own virtual environment, built on first use:
#   .venv          the DGL stack of constraints.txt (dgl 2.1.0, torch 2.2.1, NumPy 1, PyG): `make demo`, `make test`
#   .venv-current  the current stack of constraints-current.txt (torch 2.13, NumPy 2, PyG, no DGL):
#                  `make demo-current`, `make test-current`
# setup.cfg only declares the supported ranges.
PYTHON ?= python3
export DGL_IFLOW_DATA ?= $(abspath ../shared/data)
# The demos and tests move small tensors, where one thread beats two (benchmarks set their own).
export OMP_NUM_THREADS ?= 1
PIP_INSTALL = -m pip install --disable-pip-version-check -q

.PHONY: demo test venv demo-current test-current venv-current test-all

venv: .venv/.installed-stamp
venv-current: .venv-current/.installed-stamp

.venv/.installed-stamp: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv .venv
	.venv/bin/python $(PIP_INSTALL) -c constraints.txt -e '.[dgl,pyg,test]'
	touch $@

.venv-current/.installed-stamp: setup.cfg pyproject.toml constraints-current.txt
	$(PYTHON) -m venv .venv-current
	.venv-current/bin/python $(PIP_INSTALL) -c constraints-current.txt -e '.[pyg,test]'
	touch $@

demo: venv
	.venv/bin/dgl-iflow demo expressiveness

test: venv
	.venv/bin/python -m pytest

demo-current: venv-current
	.venv-current/bin/dgl-iflow demo expressiveness --out runs/expressiveness-current

test-current: venv-current
	.venv-current/bin/python -m pytest

test-all: test test-current
