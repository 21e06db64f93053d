# The few commands a person needs. Every target is idempotent on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export NO_MKDOCS_2_WARNING := 1

.PHONY: serve test docs docs-build lint typecheck chromium screenshots bench bench-quality default-bundle digits-bundle digits-gan-bundle smoke clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[serve]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $@ $(VENV)/.serve-installed

## serve: set up (once) and run the service on the committed bundles at http://$(HOST):$(PORT);
## fit jobs spool to $(JOBS)/, and with the train extra installed (TensorFlow importable) a
## trainer runs beside the service (it writes new models into artifacts/), else it says how
JOBS ?= jobs
serve: $(VENV)/.serve-installed
	@mkdir -p $(JOBS); \
	if $(BIN)/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('tensorflow') is None)"; then \
		echo "make serve: a fit-job trainer runs beside the service (python -m training worker)"; \
		$(BIN)/python -m training worker --jobs $(JOBS) --artifacts artifacts & trainer=$$!; \
		trap 'kill $$trainer 2>/dev/null' EXIT INT TERM; \
	else \
		echo "make serve: no fit-job trainer (TensorFlow is not installed): fit jobs wait in $(JOBS)/."; \
		echo "  To fit models from the page or POST /v1/fits: $(BIN)/pip install -e '.[train]' and"; \
		echo "  run make serve again, or run a trainer elsewhere on this folder:"; \
		echo "  python -m training worker --jobs $(JOBS) --artifacts artifacts"; \
	fi; \
	AUSCULT_ARTIFACTS_DIR=artifacts AUSCULT_DEFAULT_MODEL=gearbox AUSCULT_JOBS_DIR=$(JOBS) \
		$(BIN)/python -m service --host $(HOST) --port $(PORT)

## test: set up (once), lint, type-check, build the docs site (--strict) and run the whole test suite
test: $(VENV)/.dev-installed chromium docs-build
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

## docs: serve the documentation site (docs/, mkdocs.yml) at http://$(HOST):$(DOCS_PORT), rebuilt on edits
DOCS_PORT ?= 8001
docs: $(VENV)/.dev-installed
	$(BIN)/mkdocs serve --dev-addr $(HOST):$(DOCS_PORT)

## docs-build: build the site into site/ (ignored by git); a broken link or anchor fails it
docs-build: $(VENV)/.dev-installed
	$(BIN)/mkdocs build --strict --quiet --site-dir site

## chromium: Debian's chromium for the browser tests (tests/web/), installed with apt
## when it is missing; AUSCULT_CHROMIUM names another executable. Without one the browser
## tests skip with the reason; under CI (CI=true) a failed install fails the run.
chromium:
	@if [ -n "$$AUSCULT_CHROMIUM" ] || [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		sudo=; [ "$$(id -u)" = 0 ] || sudo="sudo -n"; \
		echo "installing chromium for the browser tests (apt-get)"; \
		{ $$sudo apt-get update -q >/dev/null && \
		  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends \
			chromium fonts-dejavu-core >/dev/null; } || \
		{ echo "could not install chromium: the browser tests will skip" >&2; [ -z "$$CI" ] || exit 1; }; \
	else \
		echo "no chromium and no apt-get: the browser tests will skip (set AUSCULT_CHROMIUM)" >&2; \
	fi

## screenshots: retake the page's screenshots in docs/ (the browser tests write them)
screenshots: $(VENV)/.dev-installed chromium
	AUSCULT_SCREENSHOTS=docs/screenshots $(BIN)/pytest -q tests/web

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

## default-bundle: rebuild the committed anomaly bundle artifacts/gearbox from synthetic 10-s recordings
## (40 source-domain and, as DCASE 2022 and later give, 10 target-domain healthy training clips)
default-bundle: $(VENV)/.dev-installed
	rm -rf data/gearbox-synth
	$(BIN)/python -m training synth --out data/gearbox-synth --seed 0 --seconds 10 --train-target 10
	$(BIN)/python -m training fit --data data/gearbox-synth --out artifacts/gearbox --seed 0 --force

## digits-bundle: rebuild the committed spoken-digit classifier from ../shared/data/fsdd, with
## its leave-one-speaker-out accuracy (5 extra fits; docs/archive/experiments.md says how it was chosen)
digits-bundle: $(VENV)/.dev-installed
	$(BIN)/python -m training fit-classifier --data ../shared/data/fsdd \
		--label-pattern '^(?P<label>\d)_(?P<speaker>[a-z]+)_' --test-pattern '_[0-4]\.wav$$' \
		--loso speaker --arch tc --filters 32,48,64,96 --normalise max --epochs 30 \
		--n-fft 128 --hop-length 64 --n-mels 24 --copies 4 --speed 0.2 --tempo 0.15 \
		--gain-db 20 --noise-snr-db 10 --freq-masks 2 --time-masks 2 --warp 0.1 \
		--onset-margin 0.1 \
		--out artifacts/digits

## digits-gan-bundle: rebuild the committed spoken-digit generator (a class-conditional GAN) from
## ../shared/data/fsdd; speaker yweweler is left out so bench/generator.py can measure whether
## generated clips help a classifier on a voice the generator never heard
digits-gan-bundle: $(VENV)/.dev-installed
	$(BIN)/python -m training fit-generator --data ../shared/data/fsdd \
		--label-pattern '^(?P<label>\d)_' --include-pattern '_(george|jackson|lucas|nicolas)_' \
		--epochs 60 --class-weight 3 --grid-every 5 --seed 0 --out artifacts/digits-gan

## bench: the serving benchmark (full mode; BENCH_ARGS=--quick for the short one)
bench: $(VENV)/.dev-installed
	$(BIN)/python bench/serving.py $(BENCH_ARGS)

bench-quality: $(VENV)/.dev-installed
	$(BIN)/python bench/quality.py $(BENCH_ARGS)

## smoke: build the container image and score a clip through docker compose (podman here);
## where podman is missing it says why and exits 0 (a skip, not a failure)
smoke:
	@bash docker/smoke.sh; rc=$$?; \
	if [ $$rc -eq 77 ]; then echo "make smoke: skipped (reason above)"; exit 0; fi; exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
