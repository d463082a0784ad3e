# ham-bench: `make run` trains the default experiment, `make test` runs the test suite.
# Both set themselves up: a project venv (.venv), the package and its pinned-range
# dependencies, and Fashion-MNIST (Debian's dataset-fashion-mnist, else torchvision's download).

VENV       ?= .venv
PYTHON     ?= python3
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.ham-bench-installed
ARGS       ?=

.PHONY: setup data run test bench clean-outputs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

data: setup
	bash scripts/get_data.sh

run: setup data
	$(VENV)/bin/ham-bench $(ARGS)

test: setup data
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q $(ARGS)

bench: setup
	$(PY) scripts/bench_optim.py

clean-outputs:
	rm -rf outputs multirun
