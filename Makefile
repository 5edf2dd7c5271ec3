# Two commands for a fresh machine (see README):
#   make study   - set everything up, then run the default placement study
#   make test    - set everything up, then run the test suite
VENV ?= .venv
EXPORT_FLAGS ?=
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: setup study smoke lint test bench long-studies results clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-embedded.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,ray,mlflow,tensorboard,pandas,lmeval]'
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
	$(VENV)/bin/pytest -q --durations=15

bench: setup
	$(PY) bench/bench.py

# The long studies behind docs/RESULTS.md, one after the other on Ray. Each resumes where it
# stopped, so the same command goes on in every session; the auto-placement studies copy their
# hand placements from the budget-curve study, so they come after it, and the longer-training
# study (the budget-curve placements at rank 8, trained twice as long) comes last. Exit status 1 means a
# study finished with some runs failed and recorded (a diverged learning rate, say): the next
# study still runs. Any other failure stops here.
#
# On a machine without runs/NAME (a fresh clone), a study goes on from its committed records in
# docs/results/NAME: finished runs count as done; runs that were in progress are trained again,
# and so are final runs that would have been adopted from a selection run, whose weights are
# not committed (docs/STUDIES.md, "Moving a study"). `make results` commits nothing: it copies
# each study's records (not its weights) to docs/results/NAME and writes its report there.
# `make results EXPORT_FLAGS=--states` also copies the saved training states of runs in
# progress, so that a fresh machine goes on from them rather than starting those runs over.
LONG := TQDM_DISABLE=1 $(VENV)/bin/loraplace study
STUDIES := budget-curves auto-placement auto-placement-r2 longer-training
restore = { test -d runs/$(1) || test ! -f docs/results/$(1)/study.yaml \
	|| { mkdir -p runs && cp -a docs/results/$(1) runs/$(1); }; }
long-studies: setup
	$(foreach s,$(STUDIES),$(call restore,$(s)) && \
	{ $(LONG) examples/$(s).yaml --executor ray --out runs/$(s) || test $$? -eq 1; } && ) true

results: setup
	$(foreach s,$(STUDIES),{ test ! -d runs/$(s) || { $(VENV)/bin/loraplace export runs/$(s) \
	docs/results/$(s) $(EXPORT_FLAGS) && $(VENV)/bin/loraplace report docs/results/$(s); }; } && ) true

clean:
	rm -rf $(VENV) runs .pytest_cache
