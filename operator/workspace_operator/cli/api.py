"""The Workspace API as a job sees it: create, get, wait (watch), delete.

Needs only `get`, `watch`, `create` and `delete` on workspaces in its namespace
(examples/job-rbac.yaml): waiting reads the object, then watches it by name;
nothing is ever listed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import urllib3
from kubernetes.client import ApiClient, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from workspace_operator.cli.errors import CliError, Exit
from workspace_operator.spec import GROUP, PLURAL, VERSION

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def connect(kubeconfig: str | None, namespace: str | None) -> tuple[ApiClient, str]:
    """The pod's ServiceAccount in a pod, else a kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config)."""
    config_file = kubeconfig or os.environ.get("KUBECONFIG") or None
    in_cluster = not config_file and "KUBERNETES_SERVICE_HOST" in os.environ
    try:
        if in_cluster:
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            client = ApiClient(configuration)
            default_ns = _read(SERVICE_ACCOUNT_NAMESPACE) or "default"
        else:
            client = kubernetes.config.new_client_from_config(config_file=config_file)  # type: ignore[no-untyped-call]
            _, active = kubernetes.config.list_kube_config_contexts(config_file=config_file)  # type: ignore[no-untyped-call]
            default_ns = str((active or {}).get("context", {}).get("namespace") or "default")
    except (kubernetes.config.ConfigException, OSError) as error:
        raise CliError(
            Exit.FORBIDDEN,
            f"no Kubernetes credentials: {error} (in a pod, mount the "
            "ServiceAccount token; elsewhere, pass --kubeconfig or set KUBECONFIG)",
        ) from None
    return client, namespace or default_ns


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class Verdict:
    ready: bool
    failed: bool
    reason: str
    message: str


def judge(obj: Mapping[str, Any]) -> Verdict:
    """Ready, failed for good, or neither yet. Failed: phase Failed or condition Stalled=True."""
    status = obj.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, Mapping)}
    ready, stalled = conditions.get("Ready") or {}, conditions.get("Stalled") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    current = status.get("observedGeneration") in (None, generation)
    if current and (stalled.get("status") == "True" or status.get("phase") == "Failed"):
        cause = stalled if stalled.get("status") == "True" else ready
        return Verdict(
            False, True, str(cause.get("reason") or "Failed"), str(cause.get("message") or status.get("message") or "")
        )
    if current and status.get("phase") == "Ready" and status.get("commit") and ready.get("status") != "False":
        return Verdict(True, False, str(ready.get("reason") or "Ready"), str(ready.get("message") or ""))
    return Verdict(False, False, str(ready.get("reason") or "Pending"), str(status.get("message") or ""))


# Each call gives up after 10 s without a connection or 30 s without an answer: a
# dropped connection must not hang a job's step (the watch has its own deadline).
CALL_TIMEOUT = (10.0, 30.0)


class WorkspaceApi:
    def __init__(self, client: ApiClient, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.custom = CustomObjectsApi(client)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        with _api_errors("create", self.namespace):
            try:
                created: Any = self.custom.create_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, body, _request_timeout=CALL_TIMEOUT
                )
                return dict(created)
            except ApiException as error:
                name = body.get("metadata", {}).get("name")
                if error.status != 409 or not name:
                    raise
        # Created before (a retried init container): fine if it asks for the same thing.
        existing = self.get(name)
        if _spec_differs(existing.get("spec") or {}, body.get("spec") or {}):
            raise CliError(Exit.CONFLICT, f"Workspace {self.namespace}/{name} already exists with another spec")
        return existing

    def get(self, name: str) -> dict[str, Any]:
        with _api_errors("get", self.namespace, name):
            found: Any = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=CALL_TIMEOUT
            )
            return dict(found)

    def delete(self, name: str) -> bool:
        with _api_errors("delete", self.namespace, name):
            try:
                self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=CALL_TIMEOUT
                )
            except ApiException as error:
                if error.status == 404:
                    return False
                raise
        return True

    def wait(self, name: str, timeout: float, clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
        """The Workspace once Ready; CliError at once on a permanent failure, at the deadline otherwise."""
        deadline = clock() + timeout
        obj = self.get(name)
        while True:
            verdict = judge(obj)
            if verdict.ready:
                return obj
            if verdict.failed:
                raise CliError(
                    Exit.PERMANENT_FAILURE,
                    f"Workspace {self.namespace}/{name} failed: {verdict.reason}: {verdict.message}",
                )
            remaining = deadline - clock()
            if remaining <= 0:
                raise CliError(
                    Exit.DEADLINE,
                    f"Workspace {self.namespace}/{name} not Ready after {timeout:.0f}s "
                    f"({verdict.reason}: {verdict.message})",
                )
            obj = self._next(name, obj, remaining)

    def _next(self, name: str, obj: Mapping[str, Any], remaining: float) -> dict[str, Any]:
        """The object's next version from a watch by name; the current one if the watch ends first."""
        watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        version = str(obj["metadata"]["resourceVersion"])
        with _api_errors("watch", self.namespace, name):
            try:
                for event in watch.stream(  # type: ignore[no-untyped-call]
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    field_selector=f"metadata.name={name}",
                    resource_version=version,
                    timeout_seconds=max(1, int(remaining)),
                    _request_timeout=remaining + 10,
                ):
                    if event["type"] == "DELETED":
                        raise CliError(Exit.NOT_FOUND, f"Workspace {self.namespace}/{name} was deleted while waiting")
                    if event["type"] in ("ADDED", "MODIFIED"):
                        watch.stop()  # type: ignore[no-untyped-call]
                        return dict(event["object"])
            except ApiException as error:
                if error.status != 410:  # history compacted: read the object again
                    raise
        return self.get(name)


def _spec_differs(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    # The API server fills in defaults (mode, submodules, tags): compare what was asked for.
    return any(existing.get(key) != value for key, value in wanted.items())


@contextmanager
def _api_errors(verb: str, namespace: str, name: str | None = None) -> Iterator[None]:
    what = f"Workspace {namespace}/{name}" if name else f"workspaces in {namespace}"
    try:
        yield
    except ApiException as error:
        if error.status == 404:
            body = error.body.decode(errors="replace") if isinstance(error.body, bytes) else str(error.body or "")
            if '"kind":"Status"' not in body.replace(" ", ""):  # not the API's answer about an object
                raise CliError(Exit.NOT_FOUND, "the Workspace API (crafting.dev/v1) is not installed") from None
            raise CliError(Exit.NOT_FOUND, f"{what} not found") from None
        if error.status in (401, 403):
            raise CliError(
                Exit.FORBIDDEN,
                f"not allowed to {verb} {what} ({error.status} {error.reason}); "
                "the job's ServiceAccount needs get, watch, create and delete on workspaces "
                "(examples/job-rbac.yaml)",
            ) from None
        raise CliError(Exit.API_UNAVAILABLE, f"{verb} {what}: {error.status} {error.reason}") from None
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise CliError(Exit.API_UNAVAILABLE, f"{verb} {what}: API server unreachable: {error}") from None
