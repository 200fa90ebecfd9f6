# Every target creates the virtual environment on first use, so each works on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every install reads uv.lock through uv, itself pinned by hash in tools/uv-requirements.txt.
UV_DIR := .uv
UV := $(UV_DIR)/bin/uv
# Which torch build: `cpu` where its wheel lies in /opt/wheels (the build machines), else
# `cuda`, PyPI's build (several GB). `make venv TORCH=cuda` chooses.
TORCH ?= $(if $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl),cpu,cuda)
EXTRAS := --extra train --extra $(TORCH) --extra dev
export UV_PYTHON_DOWNLOADS := never
CONFIG ?= configs/digits.toml
MODEL ?= digits
REPO ?= models

.PHONY: venv lock train serve test test-fast bench lint clean

$(UV): tools/uv-requirements.txt
	$(PYTHON) -m venv $(UV_DIR)
	$(UV_DIR)/bin/pip install -q --disable-pip-version-check --require-hashes --no-deps -r tools/uv-requirements.txt
	touch $(UV)

## Exactly the lock: --locked refuses a uv.lock that no longer matches pyproject.toml.
$(STAMP): pyproject.toml uv.lock $(UV)
	$(UV) sync --locked --python $(PYTHON) $(EXTRAS)
	echo "$(EXTRAS)" > $(STAMP)

venv: $(STAMP)

## Re-solve uv.lock after a change to the dependencies in pyproject.toml.
lock: $(UV)
	$(UV) lock

## Train and publish a new version of the default model (progress on stderr).
train: venv
	$(BIN)/hydra-train run --config $(CONFIG) --repository $(REPO)

## Serve every model in the repository; trains the default model first if none is there.
serve: venv
	@if ! ls $(REPO)/$(MODEL)/*/model.onnx >/dev/null 2>&1; then \
		echo "No model under $(REPO)/$(MODEL): training the default model first (a few minutes)."; \
		$(BIN)/hydra-train run --config $(CONFIG) --repository $(REPO) || exit 1; \
	fi
	HYDRA_REPOSITORY=$(REPO) $(BIN)/hydra-serve

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

bench: venv
	$(BIN)/python benchmarks/bench_onnx.py
	$(BIN)/python benchmarks/bench_service.py

clean:
	rm -rf $(VENV) $(UV_DIR) build *.egg-info .pytest_cache

## Rewrite the generated sections of README.md, BENCHMARKS.md and docs/ from their sources
## (`make results CHECK=1` compares only, and fails naming each stale section).
.PHONY: results
results: venv
	$(BIN)/python tools/results.py $(if $(CHECK),--check)
