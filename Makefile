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
	@test -x $(BIN)/python || { echo "[1/4] creating the virtual environment $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "[2/4] updating pip inside $(VENV)"
	@$(BIN)/python -m pip install -q --upgrade pip
	@# torch first, pinned to the CPU build: any other version pulls a multi-GB CUDA build.
	@echo "[3/4] installing torch 2.13.0 (CPU build; the largest download, a few minutes the first time)"
	@$(BIN)/python -m pip install -q torch==2.13.0
	@echo "[4/4] installing fedguard and its dependencies (Flower, Opacus, TenSEAL, test tools)"
	@$(BIN)/python -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	@touch $(STAMP)
	@echo "installed; later runs skip this step until pyproject.toml changes"

demo: $(STAMP)
	@echo "running the demo: three federations (attack-free, attacked, attacked + encrypted filter), a few minutes"
	@$(BIN)/fedguard demo

test: $(STAMP)
	@echo "lint (ruff), types (mypy), then the test suite"
	$(BIN)/ruff check federation clients server crypto simulations examples tests
	$(BIN)/mypy federation crypto clients server simulations examples
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check federation clients server crypto simulations examples tests
	$(BIN)/mypy federation crypto clients server simulations examples

bench: $(STAMP)
	$(BIN)/fedguard bench crypto --out runs/bench-crypto.json
	$(BIN)/fedguard bench dp --out runs/bench-dp.json

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache *.egg-info
