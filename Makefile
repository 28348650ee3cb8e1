# kubenova — the two commands of the quickstart are `make up` and `make test`.
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: setup up test lint unit integration e2e crds bench clean

setup:            ## install what is missing and build the control plane (idempotent)
	bash hack/setup.sh

up: setup         ## local control plane + controller + agent + libvirtd, boot the example
	kubenova up

test: setup lint  ## everything CI runs: linters, then unit, integration and e2e tests
	$(PYTHON) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

lint:
	ruff check .
	ruff format --check .
	mypy
	lint-imports
	kubenova crds --check

unit:
	$(PYTHON) -m pytest -p no:cacheprovider tests/unit $(PYTEST_ARGS)

integration:
	$(PYTHON) -m pytest -p no:cacheprovider tests/integration $(PYTEST_ARGS)

e2e:
	$(PYTHON) -m pytest -p no:cacheprovider tests/e2e $(PYTEST_ARGS)

crds:             ## regenerate deploy/crds/ from the API models
	kubenova crds

bench: setup      ## apply->ACTIVE against plain virsh on the same host
	$(PYTHON) bench/bench_boot.py
