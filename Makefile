# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv if missing, install xattn, run the quickstart study
#   make test   - the same set-up, then the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xattn-installed
# The data mirror the tests and real-data studies read (a folder laid out like ../shared/data).
export XATTN_DATA_MIRROR ?= $(abspath ../shared/data)

.PHONY: demo test install clean

install: $(STAMP)

# torch first, pinned to the CPU build that lies on disk here: a looser requirement with no
# torch installed would pull a multi-GB CUDA build. GPU users install their own torch first.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xattn study run studies/quickstart.yaml

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf .xattn exports
