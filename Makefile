# chatledger: set up and run on a fresh machine (SPEC section 8).
#
#   make run     create .venv if needed, install, start the service on the embedded default
#   make test    create .venv if needed, install, check lint, run the whole test suite
#   make test-reliability   the long suite of tests/reliability/ (a stream of 2,000 events
#                under faults, a checkout race, two instances): its own embedded servers
#   make lint    ruff
#   make bench   the touchpoint benchmark
#   make clean   remove .venv and var/ (the embedded servers' data: stop `make run` first)
#
# The install step runs only when pyproject.toml is newer than the stamp .venv/.installed,
# so day-to-day `make run` / `make test` start at once. Extra pytest arguments:
#   make test PYTEST_ARGS='-k refunds -x'

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := run
.PHONY: run test test-reliability lint bench clean install

$(PY):
	$(PYTHON) -m venv $(VENV)

# The stamp is touched only after a successful install: a failed one is retried next time.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[test]'
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/chatledger run

# Lint first: the rules carry design decisions (commerce/ never imports flask, app or
# webhooks). pytest's own exit status reaches the caller through make (as "Error N", make
# exits 2); that includes 5, "no tests collected", which counts as a failure.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

# Not part of `make test` (pyproject.toml ignores tests/reliability/ by default): it runs for
# minutes and starts, restarts, stops and kills PostgreSQL, Redis and Celery workers of its
# own (no URLs needed). -s shows each test's report (answers, faults, timings).
test-reliability: $(STAMP)
	$(PY) -m pytest -s tests/reliability $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) bench/run_touchpoints.py

clean:
	rm -rf $(VENV) var
