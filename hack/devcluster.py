#!/usr/bin/env python3
"""The local Kubernetes control plane: build once, start on loopback, stop by pid.

    python3 hack/devcluster.py build            # compile kube-local once per version
    python3 hack/devcluster.py up [--dir D]     # start in the background (idempotent)
    python3 hack/devcluster.py down [--dir D]   # stop what `up` started
    python3 hack/devcluster.py status [--dir D]

The binary (controlplane/, real kube-apiserver + embedded etcd + kube-controller-manager)
is cached under ~/.cache/workspace-operator/controlplane/<version>-<source hash>/, so
only the first run on a machine pays for the build. The state directory (default
.devcluster/) holds the PKI, etcd data, logs, pids and `kubeconfig`.

Tests import this module and use `start()`/`Cluster.stop()` directly.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toolcache

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "controlplane"
DEFAULT_STATE = REPO / ".devcluster"
CONTROLLERS = "garbagecollector,namespace,serviceaccount"


def _versions() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (SOURCE / "versions.env").read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    return {k.strip(): v.strip() for k, v in pairs}


def cache_root() -> Path:
    return toolcache.cache_root("controlplane")


def binary_path() -> Path:
    """Where kube-local for exactly this source lives: keyed by version and source hash."""
    sources = [p for p in SOURCE.iterdir() if p.suffix in {".go", ".mod", ".sum", ".env"}]
    key = f"{_versions()['KUBERNETES_VERSION']}-{toolcache.digest_files(sources, base=SOURCE)}"
    return cache_root() / key / "kube-local"


def build(*, quiet: bool = False) -> Path:
    """Compile kube-local unless this exact source is already built (file-locked)."""
    version = _versions()["KUBERNETES_VERSION"]
    major, minor = version.lstrip("v").split(".")[:2]
    pkg = "k8s.io/component-base/version"
    ldflags = (
        f"-s -w -X {pkg}.gitVersion={version} -X {pkg}.gitMajor={major} "
        f"-X {pkg}.gitMinor={minor} -X {pkg}.gitTreeState=clean"
    )
    return toolcache.cached(
        binary_path(),
        lambda partial: toolcache.go_build(SOURCE, partial, ldflags=ldflags),
        what=f"kube-local {version}",
        quiet=quiet,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_port_pair() -> int:
    """A port p with p+1 also free (etcd client and peer)."""
    for _ in range(50):
        port = _free_port()
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair on 127.0.0.1")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still "exists"; reap it if so.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _stop_pid(pid: int, timeout: float = 20.0) -> None:
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    while _alive(pid):
        time.sleep(0.05)


@dataclass
class Cluster:
    state_dir: str
    server: str
    apiserver_pid: int
    controller_manager_pid: int | None

    @property
    def kubeconfig(self) -> Path:
        return Path(self.state_dir) / "kubeconfig"

    @property
    def pki(self) -> Path:
        return Path(self.state_dir) / "pki"

    def ready(self, timeout: float = 2.0) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        try:
            with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=timeout) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.controller_manager_pid:
            _stop_pid(self.controller_manager_pid)
        _stop_pid(self.apiserver_pid)
        (Path(self.state_dir) / "cluster.json").unlink(missing_ok=True)


def _load(state_dir: Path) -> Cluster | None:
    try:
        return Cluster(**json.loads((state_dir / "cluster.json").read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def _write_kubeconfig(state_dir: Path, server: str) -> None:
    pki = state_dir / "pki"

    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "kube-local", "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")}}
        ],
        "users": [
            {
                "name": "admin",
                "user": {"client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")},
            }
        ],
        "contexts": [{"name": "kube-local", "context": {"cluster": "kube-local", "user": "admin"}}],
        "current-context": "kube-local",
    }
    path = state_dir / "kubeconfig"
    path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    path.chmod(0o600)


def start(
    state_dir: Path = DEFAULT_STATE,
    *,
    controllers: bool = True,
    no_fsync: bool = False,
    timeout: float = 120.0,
) -> Cluster:
    """Start (or find running) a control plane whose state lives in state_dir."""
    state_dir = state_dir.resolve()
    existing = _load(state_dir)
    if existing and _alive(existing.apiserver_pid) and existing.ready():
        return existing
    if existing:
        existing.stop()

    binary = build()
    state_dir.mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    subprocess.run([str(binary), "pki", "--dir", str(state_dir / "pki")], check=True)

    port, etcd_port = _free_port(), _free_port_pair()
    server = f"https://127.0.0.1:{port}"
    args = [str(binary), "apiserver", "--dir", str(state_dir), f"--port={port}", f"--etcd-port={etcd_port}"]
    if no_fsync:
        args.append("--unsafe-no-fsync")
    with open(logs / "apiserver.log", "ab") as log:
        apiserver = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    cluster = Cluster(str(state_dir), server, apiserver.pid, None)
    _write_kubeconfig(state_dir, server)
    deadline = time.monotonic() + timeout
    while not cluster.ready():
        if apiserver.poll() is not None:
            raise RuntimeError(f"kube-apiserver exited with {apiserver.returncode}; see {logs / 'apiserver.log'}")
        if time.monotonic() > deadline:
            cluster.stop()
            raise TimeoutError(f"kube-apiserver not ready within {timeout}s; see {logs / 'apiserver.log'}")
        time.sleep(0.2)

    if controllers:
        with open(logs / "controller-manager.log", "ab") as log:
            kcm = subprocess.Popen(
                [
                    str(binary),
                    "controller-manager",
                    f"--kubeconfig={state_dir / 'kubeconfig'}",
                    f"--controllers={CONTROLLERS}",
                    "--leader-elect=false",
                    "--secure-port=0",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        cluster.controller_manager_pid = kcm.pid
    (state_dir / "cluster.json").write_text(json.dumps(asdict(cluster)))
    return cluster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build", "up", "down", "status"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_STATE, help="state directory (default .devcluster)")
    parser.add_argument("--no-controllers", action="store_true", help="skip kube-controller-manager")
    opts = parser.parse_args()
    if opts.command == "build":
        print(build())
        return 0
    if opts.command == "up":
        started = time.monotonic()
        running = start(opts.dir, controllers=not opts.no_controllers)
        print(f"control plane ready at {running.server} ({time.monotonic() - started:.1f}s)")
        print(f"export KUBECONFIG={running.kubeconfig}")
        return 0
    cluster = _load(opts.dir.resolve())
    if opts.command == "down":
        if cluster:
            cluster.stop()
        print("control plane stopped")
        return 0
    if cluster and _alive(cluster.apiserver_pid) and cluster.ready():
        print(f"running at {cluster.server}; KUBECONFIG={cluster.kubeconfig}")
        return 0
    print("not running")
    return 1


if __name__ == "__main__":
    sys.exit(main())
