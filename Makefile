# Every target creates the virtual environment on first use, so each works on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/digits.toml
MODEL ?= digits
REPO ?= models

.PHONY: venv train serve test test-fast bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# One resolver run: tritonclient and onnx disagree on ml_dtypes unless solved together.
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $(STAMP)

venv: $(STAMP)

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
	rm -rf $(VENV) build *.egg-info .pytest_cache

## Rewrite the generated sections of README.md, BENCHMARKS.md and docs/ from their sources
## (`make results CHECK=1` compares only, and fails naming each stale section).
.PHONY: results
results: venv
	$(BIN)/python tools/results.py $(if $(CHECK),--check)
