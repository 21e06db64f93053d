# The few commands a person needs. Every target is idempotent on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: serve test lint typecheck bench bench-quality default-bundle digits-bundle smoke clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[serve]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $@ $(VENV)/.serve-installed

## serve: set up (once) and run the service on the committed bundles at http://$(HOST):$(PORT)
serve: $(VENV)/.serve-installed
	AUSCULT_ARTIFACTS_DIR=artifacts AUSCULT_DEFAULT_MODEL=gearbox \
		$(BIN)/python -m service --host $(HOST) --port $(PORT)

## test: set up (once), lint, type-check and run the whole test suite
test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

## default-bundle: rebuild the committed anomaly bundle artifacts/gearbox from synthetic 10-s recordings
default-bundle: $(VENV)/.dev-installed
	$(BIN)/python -m training synth --out data/gearbox-synth --seed 0 --seconds 10
	$(BIN)/python -m training fit --data data/gearbox-synth --out artifacts/gearbox --seed 0

## digits-bundle: rebuild the committed spoken-digit classifier from ../shared/data/fsdd
digits-bundle: $(VENV)/.dev-installed
	$(BIN)/python -m training fit-classifier --data ../shared/data/fsdd \
		--label-pattern '^(?P<label>\d)_(?P<speaker>[a-z]+)_' --test-pattern '_[0-4]\.wav$$' \
		--out artifacts/digits

## bench: the serving benchmark (full mode; BENCH_ARGS=--quick for the short one)
bench: $(VENV)/.dev-installed
	$(BIN)/python bench/serving.py $(BENCH_ARGS)

bench-quality: $(VENV)/.dev-installed
	$(BIN)/python bench/quality.py $(BENCH_ARGS)

## smoke: build the container image and score a clip through docker compose (podman here)
smoke:
	bash docker/smoke.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
