# Two commands on a fresh clone:  `make quickstart`  and  `make test`.
# Both create .venv, install torch==2.13.0 (CPU wheel) FIRST so nothing pulls a CUDA build,
# then the project with its dev extra.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install quickstart test lint clean

$(STAMP): pyproject.toml setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/dlm-sft quickstart

test: $(STAMP)
	$(PY) -m pytest tests

lint: $(STAMP)
	$(VENV)/bin/ruff check sft data_prep tests benchmarks
	$(VENV)/bin/ruff format --check sft data_prep tests benchmarks

clean:
	rm -rf $(VENV) runs
