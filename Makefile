# workspace-operator — developer and CI entry points (SPEC §11).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint unit deps controlplane helm image cluster-up cluster-down dev bench bench-quick clean

# Everything a fresh machine lacks: Debian tools the tests use, the venv, the control plane.
deps: $(STAMP) controlplane
	@command -v sshd >/dev/null || test -x /usr/sbin/sshd || { \
	  echo "installing openssh-server (sshd for the SSH transport tests)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null); }

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

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
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: deps lint
	$(PY) -m pytest $(PYTEST_ARGS)

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
