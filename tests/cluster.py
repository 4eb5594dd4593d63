"""pytest plugin: the real local control plane, API clients, namespaces, the operator.

The control plane (hack/devcluster.py: real kube-apiserver + etcd + controller
manager) starts once per session and is stopped at the end even on failure.
Each test gets a fresh namespace; operator instances watch only that namespace,
so tests never see each other's objects.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "hack"))
import devcluster  # noqa: E402

KUBECTL = str(Path(sys.executable).parent / "kubectl")
T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], *, timeout: float = 30.0, interval: float = 0.1,
             message: str = "condition") -> T:
    """Poll until predicate returns a truthy value; fail the test with `message` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - surfaced at the deadline
            last_error = error
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}"
                                 + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devcluster.Cluster]:
    state = tmp_path_factory.mktemp("control-plane")
    cluster = devcluster.start(state, controllers=True, no_fsync=True)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kubeconfig(control_plane: devcluster.Cluster) -> Path:
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> Iterator[ApiClient]:
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    yield client
    client.close()


def token_kubeconfig(admin_kubeconfig: Path, token: str, path: Path) -> Path:
    """A kubeconfig for the same cluster that authenticates with a bearer token only."""
    config = json.loads(admin_kubeconfig.read_text())
    config["users"] = [{"name": "token", "user": {"token": token}}]
    config["contexts"] = [{"name": "token", "context": {"cluster": "kube-local", "user": "token"}}]
    config["current-context"] = "token"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str, input: str | None = None, check: bool = True, timeout: float = 60,
            token: str | None = None) -> subprocess.CompletedProcess[str]:
        config = kubeconfig
        if token:
            config = token_kubeconfig(kubeconfig, token, tmp_path_factory.mktemp("token") / "kubeconfig")
        result = subprocess.run([KUBECTL, "--kubeconfig", str(config), *args], input=input,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result
    return run


@pytest.fixture(scope="session")
def crd(kubectl: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "workspace.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/workspaces.crafting.dev", "--timeout=60s")


@pytest.fixture
def namespace(api_client: ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    try:
        core.delete_namespace(name)
    except ApiException:
        pass


@dataclass
class Workspaces:
    """Small helper over the Workspace API for tests."""

    api: CustomObjectsApi
    namespace: str

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "crafting.dev/v1", "kind": "Workspace",
                "metadata": {"name": name, "namespace": self.namespace}, "spec": spec}
        return dict(self.api.create_namespaced_custom_object("crafting.dev", "v1", self.namespace,
                                                             "workspaces", body))

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.api.get_namespaced_custom_object("crafting.dev", "v1", self.namespace,
                                                              "workspaces", name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def delete(self, name: str) -> None:
        self.api.delete_namespaced_custom_object("crafting.dev", "v1", self.namespace, "workspaces", name)

    def status(self, name: str) -> dict[str, Any]:
        obj = self.get(name)
        return dict((obj or {}).get("status") or {})

    def ready_condition(self, name: str) -> dict[str, Any] | None:
        for condition in self.status(name).get("conditions") or []:
            if condition.get("type") == "Ready":
                return dict(condition)
        return None

    def wait_ready(self, name: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(lambda: (s := self.status(name)).get("phase") == "Ready" and s,
                        timeout=timeout, message=f"workspace {name} Ready (status: {self.status(name)})")

    def wait_reason(self, name: str, reason: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(lambda: (c := self.ready_condition(name)) and c.get("reason") == reason and c,
                        timeout=timeout, message=f"workspace {name} Ready reason {reason} "
                        f"(status: {self.status(name)})")

    def wait_gone(self, name: str, timeout: float = 60) -> None:
        wait_for(lambda: self.get(name) is None, timeout=timeout, message=f"workspace {name} deleted")


@pytest.fixture
def workspaces(api_client: ApiClient, namespace: str, crd: None) -> Workspaces:
    return Workspaces(CustomObjectsApi(api_client), namespace)


@dataclass
class OperatorProcess:
    root: Path
    log_path: Path
    metrics_port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    def start(self) -> OperatorProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "workspace_operator", *self.extra_args],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        wait_for(self._ready, timeout=60, message=f"operator ready (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        import urllib.request

        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited {self.proc.returncode}: {self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


@pytest.fixture
def operator_factory(kubeconfig: Path, namespace: str, crd: None, tmp_path: Path
                     ) -> Iterator[Callable[..., OperatorProcess]]:
    """Start operator subprocesses watching the test namespace; all stopped at teardown."""
    started: list[OperatorProcess] = []
    root = tmp_path / "volume"

    def start(*, env: dict[str, str] | None = None, root_dir: Path | None = None,
              args: list[str] | None = None) -> OperatorProcess:
        port = free_port()
        full_env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "WORKSPACE_ROOT": str(root_dir or root),
            "WORKSPACE_NAMESPACES": namespace,
            "WORKSPACE_LEASE_NAMESPACE": namespace,
            "WORKSPACE_ALLOWED_SCHEMES": "https,ssh,http,git,file",
            # Test upstreams listen on loopback and live in the test's temp dir: allow both explicitly.
            "WORKSPACE_ALLOW_PRIVATE_NETWORKS": "true",
            "WORKSPACE_FILE_ROOTS": str(tmp_path),
            "WORKSPACE_METRICS_PORT": str(port),
            "WORKSPACE_GIT_TIMEOUT_SECONDS": "30",
            "WORKSPACE_LEASE_SECONDS": "10",
            "WORKSPACE_RETRY_BASE_SECONDS": "0.5",
            "WORKSPACE_RETRY_MAX_SECONDS": "4",
            "WORKSPACE_IDENTITY": f"op{len(started)}",
            "TMPDIR": str(tmp_path),
            **(env or {}),
        }
        process = OperatorProcess(Path(full_env["WORKSPACE_ROOT"]), tmp_path / f"operator-{len(started)}.log",
                                  port, full_env, extra_args=args or [])
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
