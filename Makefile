# Two commands: `make run` (install, migrate, serve) and `make test` (install, run every test).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ADDR ?= 127.0.0.1:8000

.PHONY: run test install lint bench

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py first_run
	$(PY) manage.py runserver $(ADDR)

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

# Relay cost and capacity against the reference relays (docs/benchmarks.md); about 20-25 min.
bench: install
	$(PY) bench/run.py
