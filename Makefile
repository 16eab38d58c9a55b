# Entry points for developers and CI. `make test` is what CI runs (through .ci/run).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: help deps venv tools crds lint test test-unit test-integration test-e2e \
        test-docs cluster-up cluster-down operator-up demo bench image clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

deps: ## Debian packages the tests and the demo need (no-op when installed)
	bash tests/cluster/install-deps.sh

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	# A fresh venv's pip cannot parse some current packages' metadata: upgrade it first.
	$(PIP) install --quiet --upgrade 'pip>=24'
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $@

venv: $(STAMP) ## create .venv with the pinned (constraints.txt) dependencies

tools: ## build the pinned Go binaries (control plane, kubelet, containerd, CNI, CoreDNS, helm, ...) into the cache
	bash tests/cluster/build-tools.sh
	bash tests/cluster/build-node-tools.sh

image: ## the image (timesheet-backup-operator:dev) and test PostgreSQL 15/17/18 server images, offline (Docker)
	bash tests/cluster/build-images.sh

crds: $(STAMP) ## regenerate crds/, the chart's copy and docs/api.md from the API models
	$(PY) -m timesheet_backup.api.crds crds
	$(PY) -m timesheet_backup.api.crds charts/timesheet-backup-operator/crds
	$(PY) -m timesheet_backup.api.docs docs/api.md

lint: $(STAMP) ## ruff, mypy and hadolint
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile tests/cluster/pgserver/Dockerfile

# Both tiers measure the package's coverage, branches too, the agent processes the tests start
# included ([tool.coverage] in pyproject.toml), each tier into its own data file with its own
# table; test-integration then prints the two combined (each tier's latest run). Not named
# .coverage.<tier>: a plain `pytest --cov` erases .coverage.* (its own parallel files).
test-unit: $(STAMP) ## pure code, no services
	COVERAGE_FILE=.coverage-unit $(VENV)/bin/pytest -m unit tests/unit --cov --cov-report=term

test-integration: $(STAMP) tools image ## the agent against real PostgreSQL and S3 servers (and the image against servers 15/17/18)
	COVERAGE_FILE=.coverage-integration $(VENV)/bin/pytest -m integration tests/integration \
	    --cov --cov-report=term --durations=15
	$(VENV)/bin/coverage combine --keep --quiet --data-file=.coverage \
	    $(wildcard .coverage-unit) .coverage-integration
	@echo "Coverage of unit + integration:"
	$(VENV)/bin/coverage report --data-file=.coverage

test-e2e: $(STAMP) tools image ## the operator on the local cluster (started if not up), pods from the image
	$(VENV)/bin/pytest -m e2e tests/e2e --durations=25

test-docs: $(STAMP) tools image ## the docs: YAML blocks dry-run on the cluster, commands, fields, metrics, cited tests
	$(VENV)/bin/pytest -m docs tests/docs

test: deps lint test-unit test-integration test-e2e test-docs ## all tiers

cluster-up: $(STAMP) tools image ## start the local cluster (control plane, a real kubelet node), PostgreSQL and S3 server
	TOOLS_BIN=$$(bash tests/cluster/build-tools.sh | tail -1) bash tests/cluster/cluster-up.sh

operator-up: cluster-up ## the operator (via its chart) and the example app's namespace on the local cluster
	$(PY) -m tests.cluster.operator_up

demo: deps cluster-up ## a real backup and restore of sample timesheet data on the local cluster
	$(PY) -m tests.cluster.demo

# The full run takes the e2e lock for its whole duration (< 30 min): the operator part needs
# the shared cluster to itself, and timings taken while e2e tests run would measure them.
BENCH_SCALE ?= full
BENCH_LOCK ?= /tmp/tsb-e2e.lock
bench: deps $(STAMP) tools ## agent vs the manual guide, operator at scale (docs/benchmarks.md; BENCH_SCALE=small: minutes)
	flock $(BENCH_LOCK) $(PY) -m bench --scale $(BENCH_SCALE)

cluster-down: ## stop everything cluster-up started
	bash tests/cluster/cluster-down.sh

clean: cluster-down
	rm -rf $(VENV) .cluster .mypy_cache .ruff_cache .pytest_cache
