# kubenova — the two commands of the quickstart are `make up` and `make test`.
# Everything runs from the project's own virtual environment (made by hack/setup.sh from
# pyproject.toml alone), never from the machine's site-packages.
VENV ?= $(CURDIR)/.venv
export KUBENOVA_VENV := $(VENV)
# The venv's programs (kubenova, ruff, ...) come first for everything make runs, tests included.
export PATH := $(VENV)/bin:$(PATH)
PYTHON := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTEST_ARGS ?=
PYTEST := $(PYTHON) -m pytest -p no:cacheprovider

.PHONY: setup setup-up up test lint unit integration e2e crds bench clean

setup:            ## install what is missing and build the test bed's binaries (idempotent)
	bash hack/setup.sh test

setup-up:         ## what `make up` needs: the venv, etcd, kube-apiserver, kubectl, the guest
	bash hack/setup.sh up

up: setup-up      ## local control plane + controller + agent + libvirtd, boot the example
	$(BIN)/kubenova up $(UP_ARGS)

test: setup lint  ## everything CI runs: linters, then unit, integration and e2e tests
	@# The slowest tests are listed at the end: the cold suite must stay under 60 minutes.
	$(PYTEST) --durations=30 $(PYTEST_ARGS)

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	@# Product code against [project] dependencies (unused, missing, dev-only imports) ...
	$(BIN)/deptry .
	@# ... then every file, tests and benchmarks included, for imports nothing declares.
	$(BIN)/deptry . --exclude '\.venv|build|\.git' --ignore DEP002,DEP004
	$(BIN)/kubenova crds --check
	$(BIN)/hadolint Dockerfile
	@# helm lint, and the rendered chart and examples/ against the Kubernetes and CRD schemas.
	$(PYTHON) -m kubenova_devenv.chartcheck

unit:
	$(PYTEST) tests/unit $(PYTEST_ARGS)

integration:
	$(PYTEST) tests/integration $(PYTEST_ARGS)

e2e:
	$(PYTEST) tests/e2e $(PYTEST_ARGS)

crds:             ## regenerate deploy/crds/ (and the chart's copies) from the API models
	$(BIN)/kubenova crds

bench: setup      ## apply->ACTIVE against plain virsh on the same host
	$(PYTHON) bench/bench_boot.py

clean:            ## remove the virtual environment (the binary cache outside the clone stays)
	rm -rf $(VENV)
