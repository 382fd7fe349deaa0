# kafka-mesh developer commands. `make test` is the one test command (README, .ci/run).
PYTHON ?= python3
BUILD = $(PYTHON) -m pip install -q --no-build-isolation -e .

# The AddressSanitizer runtime must be loaded before Python itself: the interpreter is not built with it.
ASAN_RUNTIME = $(shell gcc -print-file-name=libasan.so)
# Leak checking stays off: CPython keeps much of its memory until exit. The debug build's handle counts catch leaks.
ASAN_ENV = LD_PRELOAD=$(ASAN_RUNTIME) ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:halt_on_error=1
ASAN_TESTS = tests/unit tests/integration/test_produce_*.py tests/integration/test_core_router.py

.PHONY: setup build build-debug build-asan test test-unit test-asan lint proto bench

setup:        ## install system packages, the Python package and the Kafka jars
	bash scripts/setup.sh

build:        ## release build of the native core, in place
	$(BUILD)

build-debug:  ## debug build: counts C handles; the tests assert none leaks
	KAFKA_MESH_DEBUG=1 $(BUILD)

build-asan:   ## debug build under AddressSanitizer (run it with `make test-asan`, which preloads the runtime)
	KAFKA_MESH_DEBUG=1 KAFKA_MESH_ASAN=1 $(BUILD)

test:         ## lint, unit and produce tests on the AddressSanitizer debug build, then every test on the release build
	$(MAKE) lint
	$(MAKE) test-asan
	$(MAKE) build
	$(PYTHON) -m pytest

test-asan:    ## unit tests and the produce integration tests on the debug build under AddressSanitizer
	$(MAKE) build-asan
	$(ASAN_ENV) $(PYTHON) -m pytest $(ASAN_TESTS)

BUF ?= .tools/node_modules/.bin/buf

lint:         ## ruff, mypy --strict on the control plane, buf lint on the API (proto/, buf.yaml)
	$(PYTHON) -m ruff check sidecar csrc tests scripts benchmarks examples clients
	$(PYTHON) -m mypy sidecar
	$(BUF) lint

test-unit:
	$(PYTHON) -m pytest -m unit

proto:        ## regenerate sidecar/api from proto/
	$(PYTHON) scripts/gen_proto.py

bench:
	$(PYTHON) -m pytest benchmarks --benchmark-only
