# Two commands: `make run` (install, migrate, serve) and `make test` (install, run every test).
# `make test-services` runs the same suite on PostgreSQL and Redis (scale-out; they must be up).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ADDR ?= 127.0.0.1:8000

# Where test-services finds the services (tests make their own database and Redis prefix).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/voicechat
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: run test test-services install lint bench

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

test-services: install
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
		SECRET_KEY=test-services-only $(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

# Relay cost and capacity against the reference relays (docs/benchmarks.md); about 30 min.
# The command behind BENCHMARKS.md's summary table.
BENCH_ARGS ?= --targets direct,node,python,gw-runserver,gw-uvicorn --ns 100,200,300,400 \
	--duration 10 --repeat 5 --pin
bench: install
	$(PY) bench/run.py $(BENCH_ARGS)
