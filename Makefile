# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv if missing, install xattn, run the quickstart study
#   make test   - the same set-up, then the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xattn-installed
# The data mirror the tests and real-data studies read (a folder laid out like ../shared/data).
export XATTN_DATA_MIRROR ?= $(abspath ../shared/data)

.PHONY: demo test lint format install clean postgres chromium

install: $(STAMP) chromium

# Figures are rendered to PNG, and the report is tested, in Debian's Chromium (and its driver).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=none; fi; \
		if [ "$$SUDO" != none ]; then $$SUDO apt-get update -q >/dev/null && \
			DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null; \
		else echo "install Debian's chromium (apt-get install chromium) for PNG figures and the report tests"; fi; }

# torch first, pinned to the CPU build that lies on disk here: a looser requirement with no
# torch installed would pull a multi-GB CUDA build. GPU users install their own torch first.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/xattn study run studies/quickstart.yaml

# Test files run on $(TEST_WORKERS) processes (pytest-xdist), each file whole on one, so a
# module's shared study runs once: 10 min instead of 20 on 2 cores. TEST_WORKERS=0 runs them in one.
TEST_WORKERS ?= 2

test: install postgres lint
	$(PY) -m pytest -q --durations=25 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# The code's shape, before any test runs: ruff's format and lint, and the layers contract
# (import-linter, [tool.importlinter] in pyproject.toml: a module imports only from layers below it).
lint: install
	$(VENV)/bin/ruff format --check --quiet xattn benchmarks tests
	$(VENV)/bin/ruff check --quiet xattn benchmarks tests
	$(VENV)/bin/lint-imports --no-cache

format: install
	$(VENV)/bin/ruff format --quiet xattn benchmarks tests
	$(VENV)/bin/ruff check --fix --quiet xattn benchmarks tests

# The service tests need PostgreSQL on 127.0.0.1:5432; start the machine's cluster if it is
# installed but stopped (best effort: without one those tests skip, or fail in CI).
postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || { command -v pg_ctlcluster >/dev/null 2>&1 && \
		pg_lsclusters -h | awk '$$3 == 5432 {print $$1, $$2}' | while read version cluster; do \
		pg_ctlcluster "$$version" "$$cluster" start; done; } || echo "PostgreSQL is not running on 127.0.0.1:5432"

clean:
	rm -rf .xattn exports
