# Everything a fresh machine needs: `make demo` and `make test` do their own set-up.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.raflora-installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test test-fast lint bench results clean

setup: $(STAMP) data

# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build. requirements-pinned.txt
# includes the flower extra (flwr[simulation]==1.41.0, ray==2.55.1), so the Flower runtime is tested too.
$(STAMP): pyproject.toml requirements-pinned.txt requirements-assets.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements-pinned.txt
	$(PIP) install -q --no-deps -r requirements-assets.txt
	$(PIP) install -q --no-deps -e .
	touch $@

# From Debian, installed once (one apt-get update for all): Fashion-MNIST for the vision task, and
# Chromium with its WebDriver for the test that opens report.html in a real browser. A failure here
# only warns: the vision task will not run and the browser test fails, saying what is missing.
data:
	@missing=""; \
	test -d $(FMNIST) || missing="dataset-fashion-mnist"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	test -z "$$missing" || (apt-get update -qq && apt-get install -y -qq $$missing) \
		|| echo "warning: could not install$$missing; the vision task or the report's browser test will not run"

# ends with the commands to type next: the raflora command lives in the venv
demo: setup
	$(PY) -m raflora.cli demo
	@echo
	@echo "next: . $(VENV)/bin/activate    # puts raflora on your PATH (or type $(VENV)/bin/raflora)"
	@echo "      raflora --help; raflora export runs/demo; raflora compare configs/synthetic.toml"

test: setup lint
	$(PY) -m pytest -q

# ruff (lint and format) on the whole tree, mypy on raflora/lora.py and raflora/aggregation; config in
# pyproject.toml
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m benchmarks.run_all

# docs/results.md from the experiments kept under results/ (nothing is rerun; see docs/results.md
# for each experiment's command, run through scripts/run_experiment.py).
results: setup
	$(PY) scripts/results.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
