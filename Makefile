# densa's two front-door commands: `make run` (the seed tutorial's job) and `make test` (the whole suite).
# Both create .venv on first use. torch==2.13.0 is installed before densa, so densa's own `torch>=2.4`
# requirement is already met and pip installs no other torch. Which build of 2.13.0 comes is pip's
# choice of index: PyPI's Linux wheel is the CUDA one, with gigabytes of NVIDIA libraries; on a machine
# without an NVIDIA GPU use the CPU index: `make run TORCH_INDEX=https://download.pytorch.org/whl/cpu`.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
TORCH_INDEX ?=

# Offline machines keep the dataset files in ../shared/data beside the checkout; use that copy when it
# exists and nothing else was chosen. Elsewhere densa finds the files itself (cache, /usr/share/datasets,
# download). densa never looks at this path on its own: it only reads --data-dir / DENSA_DATA_DIR.
DENSA_DATA_DIR ?= $(firstword $(wildcard $(abspath ../shared/data)))
export DENSA_DATA_DIR

.PHONY: run test lint format bench bench-serve docs clean

# Trains the seed recipe, then prints the commands to go on with, naming the run folder it just wrote.
run: $(VENV)/.installed
	$(BIN)/densa train
	@run=$$(ls -td runs/*/ | head -n 1); run=$${run%/}; \
	echo; echo "Next (densa is in $(BIN); \`source $(BIN)/activate\` puts it on your PATH):"; \
	echo "  $(BIN)/densa evaluate $$run"; \
	echo "  $(BIN)/densa report $$run"; \
	echo "  xdg-open $$run/report/index.html    # macOS: open ..."; \
	echo "  $(BIN)/densa predict $$run --test-index 0"; \
	echo "  $(BIN)/densa train --preset cnn"

test: lint
	$(BIN)/python -m pytest

# ruff (style, imports, function size and complexity) and import-linter (layers, no cycles)
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks notebooks tools
	$(BIN)/ruff format --check src tests benchmarks notebooks tools
	$(BIN)/lint-imports

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests benchmarks notebooks tools
	$(BIN)/ruff check --fix src tests benchmarks notebooks tools

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_onnx.py

bench-serve: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_serve.py

# The documentation site (mkdocs.yml, docs/): strict build into site/, then no page may load anything
# from the network. It runs the tutorial notebooks and a short training run, so it needs the data.
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	$(BIN)/python tools/check_offline.py site

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	touch $@

# `make run` installs the report extra too, so the `densa report` it suggests works as printed.
$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install --quiet -e '.[report]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-docs: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site .cache
