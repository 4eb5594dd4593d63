#!/bin/sh
# Runs as root INSIDE the image's root filesystem, after the Debian packages of
# debian-packages.txt are installed: by the Containerfile and by hack/image.py,
# so that both images are made by the same steps.
#
#   install.sh WHEELS   WHEELS: a directory holding the workspace-operator
#                       wheel and the wheels of all its dependencies
#
# Installs offline from that directory only (the wheels were resolved before),
# into a venv at /opt/workspace-operator; creates the runtime user and the
# volume's mount point.
set -eu
wheels=$1
# Only the given wheels: no index, and no pip settings from the build host.
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL
export PIP_CONFIG_FILE=/dev/null

python3 -m venv /opt/workspace-operator
# pip byte-compiles what it installs: the running operator never writes .pyc
# files (read-only root filesystem, PYTHONDONTWRITEBYTECODE in the image).
/opt/workspace-operator/bin/pip install --no-cache-dir --disable-pip-version-check --no-index \
    --find-links "$wheels" workspace-operator
/opt/workspace-operator/bin/pip uninstall -y --disable-pip-version-check pip >/dev/null
# Both entry points start (the job-side `kubectl-workspace` too).
/opt/workspace-operator/bin/kubectl-workspace --help >/dev/null
/opt/workspace-operator/bin/python -m workspace_operator --help >/dev/null

# The runtime user. It must exist in /etc/passwd: ssh refuses to run for a uid
# without an entry ("No user exists for uid ..."). Its home is /tmp, the one
# writable place besides the volume (an emptyDir in the Deployment).
groupadd --system --gid 10001 workspace-operator
useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
    --shell /usr/sbin/nologin workspace-operator
mkdir -p /workspaces
chown 10001:10001 /workspaces

# Nothing of the package manager's state is needed at run time.
rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/*.log
