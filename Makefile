# Two commands on a fresh clone:  `make quickstart`  and  `make test`.
# Both create .venv, install torch==2.13.0 (CPU wheel) FIRST so nothing pulls a CUDA build,
# then the project with its dev extra.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install quickstart test test-min lint clean

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

# The declared minimum of every direct dependency (pyproject's `>=` floors as `==` pins, torch's CPU
# wheel first) in a second venv, then the smoke tests (pytest marker `smoke`; only their files are
# collected, so the dev extras are not needed).
MIN_VENV ?= .venv-min
MIN_PY := $(MIN_VENV)/bin/python
MIN_STAMP := $(MIN_VENV)/.installed

$(MIN_STAMP): pyproject.toml setup.py
	python3 -m venv $(MIN_VENV)
	$(MIN_PY) -m pip install -q --upgrade pip
	$(MIN_PY) -m pip install -q torch==2.13.0
	$(MIN_PY) -m pip install -q $$(sed -n '/^dependencies = \[/,/^\]/p' pyproject.toml \
		| grep -o '"[^"]*>=[^"]*"' | tr -d '"' | sed 's/>=/==/' | grep -v '^torch==') pytest
	$(MIN_PY) -m pip install -q --no-deps -e .
	touch $(MIN_STAMP)

test-min: $(MIN_STAMP)
	$(MIN_PY) -m pip list 2>/dev/null | grep -iE '^(torch|transformers|trl|peft|accelerate|datasets) '
	$(MIN_PY) -m pytest -m smoke $$(grep -rl --include='test_*.py' 'pytest.mark.smoke' tests)

lint: $(STAMP)
	$(VENV)/bin/ruff check sft data_prep tests benchmarks
	$(VENV)/bin/ruff format --check sft data_prep tests benchmarks

clean:
	rm -rf $(VENV) $(MIN_VENV) runs
