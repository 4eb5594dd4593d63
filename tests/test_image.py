"""The operator image, proven here: the operator runs FROM the image's root filesystem and reaches Ready.

`make image` (hack/image.py) builds the root filesystem from Debian's packages
and the project's wheels, and packs it as an OCI image. No container engine
runs here, so the test emulates what a kubelet gives the container, for real:
a private mount namespace (unshare) in which the root filesystem is
bind-mounted read-only and chrooted into, /tmp is a tmpfs, the volume is
bind-mounted at /workspaces, and the process runs as uid/gid 10001 with no
capabilities (setpriv), in the host's network namespace so it reaches the
local control plane and the upstream on loopback.

The first build on a machine takes minutes (cached afterwards under
~/.cache/workspace-operator/image, keyed by its inputs).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import REPO, OperatorProcess, Workspaces, free_port, wait_for
from upstreams import SmartHTTP, StandardRepo

sys.path.insert(0, str(REPO / "hack"))
import image

# The first image build on a machine (minutes) happens in the first test that needs it.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]
UID = 10001

# Runs as root in a new mount namespace; "$@" is the command to run in the image.
_POD = r"""
set -eu
root=$1 rootfs=$2 volume=$3 config=$4; shift 4
mount --bind "$rootfs" "$root"
mount -o remount,bind,ro "$root"
mount -t tmpfs -o mode=1777,size=64m,nosuid,nodev tmpfs "$root/tmp"
mount --bind "$volume" "$root/workspaces"
mount --bind "$config" "$root/mnt"
mount -o remount,bind,ro "$root/mnt"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
exec chroot "$root" /usr/bin/setpriv --reuid=10001 --regid=10001 --clear-groups --no-new-privs \
    --inh-caps=-all --bounding-set=-all -- "$@"
"""


@pytest.fixture(scope="session")
def image_rootfs() -> Path:
    built = image.build()
    print(f"image: {built} {(built / 'build.json').read_text().strip()}")
    return built / "rootfs"


class Pod:
    """The image's root filesystem set up as a container would see it."""

    def __init__(self, rootfs: Path, scratch: Path, volume: Path, kubeconfig: Path) -> None:
        self.rootfs, self.volume = rootfs, volume
        self.mountpoint = scratch / "root"
        self.config = scratch / "config"
        for path in (self.mountpoint, self.config, volume):
            path.mkdir(parents=True, exist_ok=True)
        os.chown(volume, UID, UID)
        shutil.copy(kubeconfig, self.config / "kubeconfig")
        (self.config / "kubeconfig").chmod(0o644)

    def argv(self, *command: str) -> list[str]:
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            _POD,
            "pod",
            str(self.mountpoint),
            str(self.rootfs),
            str(self.volume),
            str(self.config),
            *command,
        ]

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*command),
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )


class ImageOperator(OperatorProcess):
    pod: Pod

    def start(self, timeout: float = 90) -> ImageOperator:
        argv = self.pod.argv(
            "/usr/bin/env",
            "-i",
            *(f"{k}={v}" for k, v in self.env.items()),
            "/opt/workspace-operator/bin/python",
            "-m",
            "workspace_operator",
        )
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )
        wait_for(self._ready, timeout=timeout, message=f"operator from the image ready (log: {self.log_path})")
        return self


@pytest.fixture
def pod(image_rootfs: Path, tmp_path: Path, kubeconfig: Path) -> Pod:
    return Pod(image_rootfs, tmp_path / "pod", tmp_path / "volume", kubeconfig)


@pytest.fixture
def image_operator(pod: Pod, namespace: str, crd: None, tmp_path: Path) -> Iterator[ImageOperator]:
    port = free_port()
    env = {
        "PATH": "/opt/workspace-operator/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "KUBECONFIG": "/mnt/kubeconfig",
        "WORKSPACE_ROOT": "/workspaces",
        "WORKSPACE_NAMESPACES": namespace,
        "WORKSPACE_LEASE_NAMESPACE": namespace,
        "WORKSPACE_ALLOWED_SCHEMES": "https,http",
        "WORKSPACE_ALLOW_PRIVATE_NETWORKS": "true",
        "WORKSPACE_METRICS_PORT": str(port),
        "WORKSPACE_GIT_TIMEOUT_SECONDS": "30s",
        "WORKSPACE_LEASE_SECONDS": "10s",
        "WORKSPACE_IDENTITY": "image",
    }
    operator = ImageOperator(pod.volume, tmp_path / "image-operator.log", port, env)
    operator.pod = pod
    operator.start()
    yield operator
    operator.stop()


def test_image_root_filesystem_is_read_only_and_unprivileged(pod: Pod) -> None:
    probe = pod.run(
        "/bin/sh",
        "-c",
        "id -u; id -g; touch /opt/probe 2>&1 || true; touch /tmp/probe && echo tmp-ok; grep CapEff /proc/self/status",
    )
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert lines[:2] == [str(UID), str(UID)]
    assert "Read-only file system" in lines[2]
    assert "tmp-ok" in lines and "CapEff:\t0000000000000000" in lines
    assert not (pod.rootfs / "opt" / "probe").exists()


def test_operator_from_the_image_materializes_a_workspace(
    image_operator: ImageOperator,
    workspaces: Workspaces,
    upstream_repo: StandardRepo,
    smart_http: SmartHTTP,
) -> None:
    workspaces.create("from-image", {"project": "img", "repository": smart_http.url("repo")})
    status = workspaces.wait_ready("from-image", timeout=120)
    assert status["commit"] == upstream_repo.main
    worktree = image_operator.root / status["path"]
    assert worktree.is_dir() and worktree.stat().st_uid == UID
    metrics = image_operator.metrics()
    assert 'workspace_operator_build_info{python="3.11' in metrics, metrics[:2000]
    assert 'workspace_operator_materializations_total{result="ready"} 1.0' in metrics
    image_operator.kill(signal.SIGTERM)


def test_oci_layout_describes_the_same_image(image_rootfs: Path) -> None:
    layout = image_rootfs.parent / "oci"
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":", 1)[1]
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == image.TAG
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest).read_text())
    config = json.loads((layout / "blobs" / "sha256" / manifest["config"]["digest"].split(":", 1)[1]).read_text())
    assert config["config"]["User"] == "10001:10001"
    assert config["config"]["Entrypoint"] == list(image.ENTRYPOINT)
    assert len(manifest["layers"]) == 1
