# Two entry points for a fresh clone: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The verified dataset copies beside a checkout in our workplace; elsewhere datasets download.
D2L_DATA_DIR ?= $(if $(wildcard ../shared/data/README.md),../shared/data,)
export D2L_DATA_DIR

.PHONY: install train test test-all lint mutation reproduce clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

train: install  ## LeNet on Fashion-MNIST with the d2l recipe
	$(PY) train.py --model lenet --data fashion_mnist $(ARGS)

# Two test processes (pytest-xdist) for the 2-core CI machine's cores; an idle one takes tests
# from the other's queue (worksteal: 325 s here where a file per worker took 334-352 s).
test: install  ## lint, then the default (fast, offline) test suite
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 --dist worksteal $(ARGS)

test-all: install  ## including slow tests (real data, DDP, W&B)
	$(PY) -m pytest -q -m "" $(ARGS)

lint: install
	$(PY) -m ruff check .

# Not in CI: hours on a CPU, minutes on a GPU. Runs the rows of bench/rows.py for this hardware
# (the gpu profile when CUDA is there) and regenerates the tables of docs/ from their results;
# ARGS: --only PATTERN, --budget-s N (skip rows that do not fit), --smoke, --plan.
reproduce: install  ## reproduce the results tables (docs/records/, docs/*.md)
	$(PY) -m bench.reproduce $(ARGS)

# Not in CI: minutes per target. ARGS picks targets (python tools/mutation.py --list) or
# --changed (those holding a module this branch changed against main); survivors are written
# to build/mutation/TARGET/survivors.md, see docs/testing.md.
mutation: install  ## mutation testing (mutmut) of the code behind the numbers in docs/
	$(PY) -m pip install --quiet "mutmut==3.8.1"
	$(PY) tools/mutation.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache build/mutation
