# Two entry points: `make demo` (the main job on the embedded default corpus)
# and `make test` (`make test-fast` leaves out the end-to-end tests marked `slow`).
# All create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH_CPU_VERSION ?= 2.13.0
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev

.PHONY: venv dev test test-fast demo lint format bench clean

venv: $(STAMP)
dev: $(DEV)

# On a machine without a CUDA GPU, install the pinned CPU torch wheel first so
# that the unpinned `torch` requirement resolves to it instead of pulling CUDA.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	if ! $(BIN)/python -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/python -m pip install -q torch; \
	  else $(BIN)/python -m pip install -q torch==$(TORCH_CPU_VERSION); fi; \
	fi
	$(BIN)/python -m pip install -q -e .
	touch $(STAMP)

# the tests' and linters' extras (pytest, ruff, tiktoken, datasets); `make demo` needs none
$(DEV): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(DEV)

test: dev
	$(BIN)/python -m pytest -q tests

test-fast: dev
	$(BIN)/python -m pytest -q -m "not slow" tests

demo: venv
	$(BIN)/dind demo

lint: dev
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: dev
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

bench: venv
	$(BIN)/dind bench train

clean:
	rm -rf $(VENV) .pytest_cache
