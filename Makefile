# The two commands of the README:  `make demo`  (the main job)  and  `make test`.
# Each creates .venv if missing and installs the project through its own files.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt
OUT    ?= out

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps re-run the install whenever the dependency files change.
$(VENV)/.run-deps: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e .
	$(BIN)/python scripts/check_torch.py
	touch $@

$(VENV)/.dev-deps: pyproject.toml constraints.txt $(VENV)/.run-deps
	$(PIP) -e '.[dev]'
	# torchattacks requires torchvision on paper but not in practice; --no-deps keeps the CPU torch
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps 'torchattacks==3.5.1'
	# manify 0.1 pins scikit-learn 1.5.1 and its package __init__ imports data loaders (anndata,
	# basemap) we never call; hyperdt pulls geomstats only for toy data. The tests import the
	# predictor modules directly (tests/curved_models/oracles.py).
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps 'manify==0.1' 'hyperdt==0.0.3'
	$(BIN)/python scripts/check_torch.py
	touch $@

demo: $(VENV)/.run-deps
	$(BIN)/moescope lab --profile quick --out $(OUT)/lab

test: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
