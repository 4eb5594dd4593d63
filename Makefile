# workspace-operator — developer and CI entry points.
#   make unit   fast tier: no control plane, no build, no network (seconds)
#   make lint   ruff, mypy strict (operator, tests, bench, hack, testsupport), import contracts
#   make test   everything: lint, then the whole suite against the real local control plane
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
UNIT := not cluster and not upstreams
# `make test` runs test files in parallel processes, each with its own control plane
# (most of a cluster test's time is waiting on the operator, git and the API server).
TEST_WORKERS ?= 3
PYTHON_SOURCES := operator tests bench hack testsupport

.PHONY: test lint fmt unit deps deps-py tools controlplane helm image cluster-up cluster-down dev bench bench-quick clean

# Everything a fresh machine lacks: Debian tools the tests use, the venv, the control plane.
deps: deps-py tools controlplane

# The venv with the package and its dev tools: all `make unit` and `make lint` need.
deps-py: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Debian tools the upstream tests use (sshd for the SSH transport).
tools:
	@command -v sshd >/dev/null || test -x /usr/sbin/sshd || { \
	  echo "installing openssh-server (sshd for the SSH transport tests)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null); }

controlplane: $(STAMP)
	$(PY) hack/devcluster.py build

# helm from its Go module, pinned (hack/helm.py), cached per machine.
helm: $(STAMP)
	$(PY) hack/helm.py build

# The operator image from Debian's packages and the project's wheel, no registry or
# container engine (hack/image.py; installs mmdebstrap and umoci if missing). Prints
# the cache directory holding rootfs/ and oci/ (an OCI image layout, tag = version).
image: $(STAMP)
	$(PY) hack/image.py build

lint: $(STAMP)
	$(VENV)/bin/ruff check $(PYTHON_SOURCES)
	$(VENV)/bin/ruff format --check $(PYTHON_SOURCES)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix $(PYTHON_SOURCES)
	$(VENV)/bin/ruff format $(PYTHON_SOURCES)

unit: $(STAMP)
	$(PY) -m pytest -m "$(UNIT)" $(PYTEST_ARGS)

test: deps lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

cluster-up: deps
	$(PY) hack/devcluster.py up

cluster-down:
	@test -x $(PY) && $(PY) hack/devcluster.py down || $(PYTHON) hack/devcluster.py down

dev: deps
	$(PY) hack/dev.py

bench: deps
	$(PY) -m bench $(BENCH_ARGS)

bench-quick: deps
	$(PY) -m bench --quick

clean: cluster-down
	rm -rf $(VENV) .devcluster .workspaces
