# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and (re)install only when pyproject.toml changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedguard-installed

# No telemetry, no runtime dependency installation by Flower (it could pull a multi-GB torch).
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing fedguard into $(VENV) (first time only) ..."
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned to the CPU build: any other version pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fedguard demo

test: $(STAMP)
	$(BIN)/ruff check federation clients server crypto simulations tests
	$(BIN)/mypy federation crypto clients server simulations
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check federation clients server crypto simulations tests
	$(BIN)/mypy federation crypto clients server simulations

bench: $(STAMP)
	$(BIN)/fedguard bench crypto --out runs/bench-crypto.json
	$(BIN)/fedguard bench dp --out runs/bench-dp.json

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache *.egg-info
