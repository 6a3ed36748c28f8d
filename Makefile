# densa's two front-door commands: `make run` (the seed tutorial's job) and `make test` (the whole suite).
# Both create .venv on first use. torch==2.13.0 (the CPU wheel) is installed before densa, so densa's
# own `torch>=2.4` requirement is already met and never pulls a multi-GB CUDA build.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0

# Offline machines keep the dataset files in ../shared/data beside the checkout; use that copy when it
# exists and nothing else was chosen. Elsewhere densa finds the files itself (cache, /usr/share/datasets,
# download). densa never looks at this path on its own: it only reads --data-dir / DENSA_DATA_DIR.
DENSA_DATA_DIR ?= $(firstword $(wildcard $(abspath ../shared/data)))
export DENSA_DATA_DIR

.PHONY: run test lint format bench bench-serve clean

run: $(VENV)/.installed
	$(BIN)/densa train

test: lint
	$(BIN)/python -m pytest

# ruff (style, imports, function size and complexity) and import-linter (layers, no cycles)
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks notebooks
	$(BIN)/ruff format --check src tests benchmarks notebooks
	$(BIN)/lint-imports

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests benchmarks notebooks
	$(BIN)/ruff check --fix src tests benchmarks notebooks

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_onnx.py

bench-serve: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_serve.py

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
