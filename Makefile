# kafka-mesh developer commands. `make test` is the one test command (README, .ci/run).
PYTHON ?= python3
BUILD = $(PYTHON) -m pip install -q --no-build-isolation -e .

.PHONY: setup build build-debug test test-unit lint proto bench

setup:        ## install system packages, the Python package and the Kafka jars
	bash scripts/setup.sh

build:        ## release build of the native core, in place
	$(BUILD)

build-debug:  ## debug build: counts C handles; the tests assert none leaks
	KAFKA_MESH_DEBUG=1 $(BUILD)

test:         ## lint, unit tests on the debug build, then every test on the release build
	$(MAKE) lint
	$(MAKE) build-debug
	$(PYTHON) -m pytest -m unit
	$(MAKE) build
	$(PYTHON) -m pytest

lint:         ## ruff, and mypy --strict on the control plane
	$(PYTHON) -m ruff check sidecar csrc tests scripts benchmarks examples
	$(PYTHON) -m mypy sidecar

test-unit:
	$(PYTHON) -m pytest -m unit

proto:        ## regenerate sidecar/api from proto/
	$(PYTHON) scripts/gen_proto.py

bench:
	$(PYTHON) -m pytest benchmarks --benchmark-only
