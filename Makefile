# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench

setup:
	./scripts/bootstrap.sh

demo: setup
	$(BIN)/wetmarket demo

# Lint and type checks first (seconds), then the whole suite.
test: lint
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check edge model server firmware_bridge tests bench scripts
	$(BIN)/mypy edge model server firmware_bridge

bench: setup
	$(BIN)/python bench/run_all.py
