# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv and install tiltlm into it on first use.
# TORCH_SPEC pins the torch build installed *before* tiltlm, so pip never resolves a bare `torch`
# (which on Linux pulls a multi-GB CUDA build). Elsewhere: `make demo TORCH_SPEC=torch`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tiltlm-installed

.PHONY: demo test lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,report]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tiltlm quickstart

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs
