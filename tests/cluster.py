"""pytest plugin: the real local control plane, API clients, namespaces, the operator.

The control plane (hack/devcluster.py: real kube-apiserver + etcd + controller
manager) starts once per session and is stopped at the end even on failure.
Each test gets a fresh namespace; operator instances watch only that namespace,
so tests never see each other's objects.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import kubernetes
import pytest
import yaml
from kubernetes.client import (
    ApiClient,
    AuthenticationV1TokenRequest,
    CoreV1Api,
    CustomObjectsApi,
    V1Lease,
    V1LeaseSpec,
    V1Namespace,
    V1ObjectMeta,
    V1TokenRequestSpec,
)
from kubernetes.client.exceptions import ApiException

import devcluster  # hack/, on pytest's pythonpath
from testsupport.net import free_port
from testsupport.operator import OperatorProcess, operator_env
from testsupport.upstreams import SmartHTTP, StandardRepo
from testsupport.wait import wait_for

__all__ = [
    "KUBECTL",
    "REPO",
    "OperatorProcess",
    "Scene",
    "StartOperator",
    "Workspaces",
    "dump",
    "free_port",
    "lease_spec",
    "load_yaml",
    "new_api_client",
    "new_namespace",
    "service_account_token",
    "token_kubeconfig",
    "wait_for",
]

REPO = Path(__file__).resolve().parent.parent
KUBECTL = str(Path(sys.executable).parent / "kubectl")


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


def new_api_client(kubeconfig: Path) -> ApiClient:
    client: ApiClient = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    return client


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> Iterator[ApiClient]:
    client = new_api_client(kubeconfig)
    yield client
    client.close()  # type: ignore[no-untyped-call]


def service_account_token(core: CoreV1Api, name: str, namespace: str, seconds: int = 600) -> str:
    """A bound token of the ServiceAccount (TokenRequest API)."""
    request = AuthenticationV1TokenRequest(spec=V1TokenRequestSpec(audiences=[], expiration_seconds=seconds))
    status = core.create_namespaced_service_account_token(name, namespace, request).status
    assert status is not None and status.token
    return str(status.token)


def lease_spec(lease: V1Lease) -> V1LeaseSpec:
    assert lease.spec is not None, lease
    return lease.spec


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
def kubectl(
    kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(
        *args: str, input: str | None = None, check: bool = True, timeout: float = 60, token: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        config = kubeconfig
        if token:
            config = token_kubeconfig(kubeconfig, token, tmp_path_factory.mktemp("token") / "kubeconfig")
        result = subprocess.run(
            [KUBECTL, "--kubeconfig", str(config), *args], input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    return run


def wait_events(
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    namespace: str,
    name: str,
    reason: str,
    *,
    timeout: float = 30,
) -> list[dict[str, Any]]:
    """The Events with `reason` on object `name`, once there is one: the operator posts
    them in the background, after the write a test waits for (Ready, gone)."""

    def listed() -> list[dict[str, Any]] | None:
        selector = f"involvedObject.name={name},reason={reason}"
        out = kubectl("get", "events", "-n", namespace, "--field-selector", selector, "-o", "json").stdout
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items or None

    return wait_for(listed, timeout=timeout, message=f"a {reason} Event on {namespace}/{name}")


@pytest.fixture(scope="session")
def crd(kubectl: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "workspace.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/workspaces.crafting.dev", "--timeout=60s")


@contextlib.contextmanager
def new_namespace(api_client: ApiClient, prefix: str = "t") -> Iterator[str]:
    """A fresh namespace for the block, deleted at its end."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    core = CoreV1Api(api_client)
    core.create_namespace(V1Namespace(metadata=V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        with contextlib.suppress(ApiException):
            core.delete_namespace(name)


@pytest.fixture
def namespace(api_client: ApiClient) -> Iterator[str]:
    with new_namespace(api_client) as name:
        yield name


@dataclass
class Workspaces:
    """Small helper over the Workspace API for tests."""

    api: CustomObjectsApi
    namespace: str

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": "crafting.dev/v1",
            "kind": "Workspace",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        }
        created = self.api.create_namespaced_custom_object("crafting.dev", "v1", self.namespace, "workspaces", body)
        return cast(dict[str, Any], created)

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            found = self.api.get_namespaced_custom_object("crafting.dev", "v1", self.namespace, "workspaces", name)
            return cast(dict[str, Any], found)
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
        def ready() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status.get("phase") == "Ready" else None

        return wait_for(ready, timeout=timeout, message=f"workspace {name} Ready (status: {self.status(name)})")

    def wait_reason(self, name: str, reason: str, timeout: float = 60) -> dict[str, Any]:
        def with_reason() -> dict[str, Any] | None:
            condition = self.ready_condition(name)
            return condition if condition and condition.get("reason") == reason else None

        return wait_for(
            with_reason,
            timeout=timeout,
            message=f"workspace {name} Ready reason {reason} (status: {self.status(name)})",
        )

    def wait_gone(self, name: str, timeout: float = 60) -> None:
        wait_for(lambda: self.get(name) is None, timeout=timeout, message=f"workspace {name} deleted")


@pytest.fixture
def workspaces(api_client: ApiClient, namespace: str, crd: None) -> Workspaces:
    return Workspaces(CustomObjectsApi(api_client), namespace)


@pytest.fixture
def operator_factory(
    kubeconfig: Path, namespace: str, crd: None, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start operator subprocesses watching the test namespace; all stopped at teardown."""
    started: list[OperatorProcess] = []
    root = tmp_path / "volume"

    def start(
        *, env: dict[str, str] | None = None, root_dir: Path | None = None, args: list[str] | None = None
    ) -> OperatorProcess:
        port = free_port()
        overrides = {
            # Test upstreams listen on loopback and live in the test's temp dir: allow both explicitly.
            "WORKSPACE_ALLOW_PRIVATE_NETWORKS": "true",
            "WORKSPACE_FILE_ROOTS": str(tmp_path),
            "WORKSPACE_GIT_TIMEOUT_SECONDS": "30",
            "WORKSPACE_LEASE_SECONDS": "10",
            "WORKSPACE_RETRY_BASE_SECONDS": "0.5",
            "WORKSPACE_RETRY_MAX_SECONDS": "4",
            "WORKSPACE_IDENTITY": f"op{len(started)}",
            "TMPDIR": str(tmp_path),
            **(env or {}),
        }
        full_env = operator_env(
            kubeconfig=kubeconfig, root=root_dir or root, metrics_port=port, namespace=namespace, overrides=overrides
        )
        process = OperatorProcess(
            Path(full_env["WORKSPACE_ROOT"]),
            tmp_path / f"operator-{len(started)}.log",
            port,
            full_env,
            extra_args=args or [],
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


StartOperator = Callable[..., OperatorProcess]


@dataclass(frozen=True)
class Scene:
    """What most operator tests start from: their namespace and its Workspaces, a way to
    start operators watching it, and the standard repository served over smart HTTP."""

    namespace: str
    workspaces: Workspaces
    start: StartOperator
    repo: StandardRepo
    http: SmartHTTP

    @property
    def url(self) -> str:
        return self.http.url(self.repo.name)

    def spec(self, project: str = "p", **fields: Any) -> dict[str, Any]:
        """A Workspace spec for the standard repository; `fields` are added as they are."""
        return {"project": project, "repository": self.url, **fields}


@pytest.fixture
def scene(
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    smart_http: SmartHTTP,
) -> Scene:
    return Scene(namespace, workspaces, operator_factory, upstream_repo, smart_http)


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
