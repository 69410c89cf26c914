# Two entry points for a fresh clone: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The verified dataset copies beside a checkout in our workplace; elsewhere datasets download.
D2L_DATA_DIR ?= $(if $(wildcard ../shared/data/README.md),../shared/data,)
export D2L_DATA_DIR

.PHONY: install train test test-all lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

train: install  ## LeNet on Fashion-MNIST with the d2l recipe
	$(PY) train.py --model lenet --data fashion_mnist $(ARGS)

test: install  ## lint, then the default (fast, offline) test suite
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(ARGS)

test-all: install  ## including slow tests (real data, DDP, W&B)
	$(PY) -m pytest -q -m "" $(ARGS)

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
