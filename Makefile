# Two commands for a fresh machine (see README):
#   make study   - set everything up, then run the default placement study
#   make test    - set everything up, then run the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: setup study smoke lint test bench long-studies clean

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

# The long studies behind docs/RESULTS.md, one after the other on Ray. Each resumes where it
# stopped, so the same command goes on in every session; the auto-placement studies copy their
# hand placements from the budget-curve study, so they come after it. Exit status 1 means a
# study finished with some runs failed and recorded (a diverged learning rate, say): the next
# study still runs. Any other failure stops here.
LONG := TQDM_DISABLE=1 $(VENV)/bin/loraplace study
long-studies: setup
	$(LONG) examples/budget-curves.yaml --executor ray --out runs/budget-curves || test $$? -eq 1
	$(LONG) examples/auto-placement.yaml --executor ray --out runs/auto-placement || test $$? -eq 1
	$(LONG) examples/auto-placement-r2.yaml --executor ray --out runs/auto-placement-r2 || test $$? -eq 1

clean:
	rm -rf $(VENV) runs .pytest_cache
