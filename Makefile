# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
export VENV

.PHONY: setup setup-runtime demo test lint bench audit

# What the demo and a stall need: runtime dependencies only (no torch, no training extras).
setup-runtime:
	./scripts/bootstrap.sh runtime

# What the tests, lint and benchmarks need: the runtime plus Chromium, PostgreSQL's
# binaries where no server answers on 127.0.0.1:5432, and the dev and train extras.
setup:
	./scripts/bootstrap.sh test

demo: setup-runtime
	$(BIN)/wetmarket demo

# Lint and type checks first (seconds), then the whole suite on three pytest-xdist workers, a test
# file at a time each: many tests wait on servers, browsers and subprocesses, so three share two
# cores; each worker's numeric libraries get a thread (tests/conftest.py) and its own PostgreSQL
# database (tests/pg.py). Two workers took 15 min 11 s on an AMD EPYC's 2 cores, over the suite's
# 15 minutes (three: 12 min 37 s); the two timing races that three workers once lost are mended
# (docs/benchmarks.md, "The test suite's own time"). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 3
test: lint
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

lint: setup
	$(BIN)/ruff check edge model server firmware_bridge tests bench scripts
	$(BIN)/mypy edge model server firmware_bridge bench

bench: setup
	$(BIN)/python bench/run_all.py

# pip-audit of the installed dependencies (scripts/audit_deps.sh): fails on a known
# vulnerability, and also (exit 3, saying why) when the advisory data cannot be reached.
audit: setup
	./scripts/audit_deps.sh
