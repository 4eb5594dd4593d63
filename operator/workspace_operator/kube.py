"""The few Kubernetes API calls the operator makes itself (kopf makes the rest).

The official client is synchronous; calls run in a thread pool sized for many
concurrent Workspaces (see `configure_thread_pool`).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
from datetime import UTC, datetime
from collections.abc import Mapping
from typing import Any

import kubernetes
from kubernetes.client import (
    ApiClient,
    CoordinationV1Api,
    CoreV1Api,
    CustomObjectsApi,
    CoreV1Event,
    V1DeleteOptions,
    V1EventSource,
    V1ObjectMeta,
    V1ObjectReference,
    V1Preconditions,
)
from kubernetes.client.exceptions import ApiException

from workspace_operator.spec import GROUP, KIND, PLURAL, VERSION


def load_client_config() -> None:
    """In-cluster config in a pod, else the current kubeconfig (KUBECONFIG)."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]


def configure_thread_pool(loop: asyncio.AbstractEventLoop, workers: int = 64) -> None:
    # asyncio.to_thread uses the default executor: min(32, cpus + 4) threads by
    # default, too few when a burst of Workspaces all wait on API calls.
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="kube"))


class Kube:
    def __init__(self, client: ApiClient | None = None) -> None:
        self.client = client or ApiClient()
        self.custom = CustomObjectsApi(self.client)
        self.core = CoreV1Api(self.client)
        self.coordination = CoordinationV1Api(self.client)

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any], *,
                           missing_ok: bool = False) -> None:
        """Merge-patch the status subresource; with missing_ok, a Workspace already gone is no error."""
        try:
            await asyncio.to_thread(
                self.custom.patch_namespaced_custom_object_status,
                GROUP, VERSION, namespace, PLURAL, name, {"status": dict(status)},
            )
        except ApiException as error:
            if not (missing_ok and error.status == 404):
                raise

    async def read_secret(self, namespace: str, name: str) -> tuple[dict[str, bytes], dict[str, str]] | None:
        """(base64-decoded data, annotations) of a Secret, or None if it does not exist.

        Values stay bytes: whether they must be text is the reader's decision."""
        try:
            secret = await asyncio.to_thread(self.core.read_namespaced_secret, name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        data = {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}
        annotations = dict((secret.metadata.annotations if secret.metadata else None) or {})
        return data, annotations

    async def delete_workspace(self, namespace: str, name: str, uid: str) -> bool:
        """Delete if it is still the same object (uid precondition); False if already gone."""
        try:
            await asyncio.to_thread(
                self.custom.delete_namespaced_custom_object,
                GROUP, VERSION, namespace, PLURAL, name,
                body=V1DeleteOptions(preconditions=V1Preconditions(uid=uid)),
            )
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise
        return True

    async def list_workspaces(self, namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
        if not namespaces:
            listing: Any = await asyncio.to_thread(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
            return list(listing.get("items", []))
        items: list[dict[str, Any]] = []
        for namespace in namespaces:
            listing = await asyncio.to_thread(
                self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL)
            items += listing.get("items", [])
        return items

    async def post_event(self, obj: Mapping[str, Any], *, reason: str, message: str,
                         event_type: str = "Normal") -> None:
        """A core/v1 Event about a Workspace, for actions taken outside kopf's handlers."""
        meta = obj["metadata"]
        now = datetime.now(UTC)
        body = CoreV1Event(
            metadata=V1ObjectMeta(generate_name="workspace-operator-", namespace=meta["namespace"]),
            involved_object=V1ObjectReference(api_version=f"{GROUP}/{VERSION}", kind=KIND, name=meta["name"],
                                              namespace=meta["namespace"], uid=meta.get("uid")),
            reason=reason, message=message[:1024], type=event_type,
            source=V1EventSource(component="workspace-operator"),
            first_timestamp=now, last_timestamp=now, count=1,
        )
        await asyncio.to_thread(self.core.create_namespaced_event, meta["namespace"], body)
