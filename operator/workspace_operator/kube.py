"""The few Kubernetes API calls the operator makes itself (kopf makes the rest).

The official client is synchronous; calls run in a thread pool sized for many
concurrent Workspaces (see `configure_thread_pool`), except the membership
heartbeat's, which have threads of their own. The core/v1 calls (a Secret,
a Namespace's UID, Events) go through the ApiClient directly rather than
`CoreV1Api`: importing that class loads ~250 model modules, 20 MB of the
operator's memory, for three calls.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import kubernetes
import urllib3
from kubernetes.client import (
    ApiClient,
    CoordinationV1Api,
    CustomObjectsApi,
    V1DeleteOptions,
    V1Lease,
    V1LeaseSpec,
    V1ObjectMeta,
    V1Preconditions,
)
from kubernetes.client.exceptions import ApiException

from workspace_operator.membership import LeaseRecord
from workspace_operator.spec import GROUP, KIND, PLURAL, VERSION
from workspace_operator.status import timestamp

log = logging.getLogger("workspace_operator.kube")

T = TypeVar("T")

# How long a namespace's UID is reused without asking again. Short, and dropped
# when a Workspace there is deleted: a namespace is only gone (and can be
# created again) after all its Workspaces are.
NAMESPACE_UID_TTL = 10.0


class LeaseConflict(Exception):
    """The Lease changed or vanished since we last read it (HTTP 409 or 404)."""


# Threads (and pooled connections) for the API calls the operator makes itself. Each
# busy thread keeps memory of its own (a stack, an allocator arena): 64 raised the
# peak of a 200-Workspace burst on a loaded 2-core machine by ~10-25 MB and served it
# no faster than 16. Lease renewals and heartbeats do not queue here (their own threads).
API_THREADS = 16


def load_client_config(pool: int = API_THREADS) -> None:
    """In-cluster config in a pod, else the current kubeconfig (KUBECONFIG)."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    # As many pooled connections as threads making calls (`configure_thread_pool`):
    # the default (5 per CPU) makes busy replicas discard connections and pay a new
    # TLS handshake for most calls, which slows Lease renewals and heartbeats.
    default = kubernetes.client.Configuration.get_default_copy()
    default.connection_pool_maxsize = pool
    kubernetes.client.Configuration.set_default(default)


def configure_thread_pool(loop: asyncio.AbstractEventLoop, workers: int = API_THREADS) -> None:
    # asyncio.to_thread uses the default executor: min(32, cpus + 4) threads by
    # default, too few when a burst of Workspaces all wait on API calls.
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="kube"))


# The membership heartbeat's calls run on threads of their own, never queued behind
# the default executor's (as many as tenants make Workspaces): a heartbeat late past
# the renew deadline fences the whole replica. Project Lease renewals: lock.py.
_heartbeats = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="heartbeat")


async def _heartbeat_call(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_heartbeats, functools.partial(call, *args, **kwargs))


# Every call the operator makes itself gets a deadline (connect, then each read):
# the client's default is none, and a connection the network silently dropped
# would hold a thread, and the status write or Lease release waiting on it, for
# good. Not a total: a listing that keeps arriving is not cut off (and listings get
# a longer first-byte allowance, LIST_TIMEOUT). urllib3 retries only connections
# that were never made (3 times): a request that may have reached the server is not
# sent again, so a Lease write that landed but whose answer was lost is not resent
# with a stale resourceVersion (a 409 that would fence a holder that holds). The
# callers retry on their own terms. Lease renewals also give up at their renew
# deadline whatever the call is doing (lock.Renewal).
REQUEST_TIMEOUT: tuple[float, float] = (10.0, 30.0)
LIST_TIMEOUT: tuple[float, float] = (10.0, 120.0)
RETRIES = urllib3.Retry(total=3, connect=3, read=0, status=0, other=0, redirect=0, raise_on_status=False)


def bound_requests(client: ApiClient, timeout: tuple[float, float] = REQUEST_TIMEOUT) -> ApiClient:
    """Give the client's calls a default deadline (one that sets its own keeps it) and
    the retry policy above. Applied again to the same client, the last deadline wins."""
    rest: Any = client.rest_client  # its `request` is untyped
    request = getattr(rest, "unbounded_request", rest.request)  # never a wrapper of a wrapper
    rest.unbounded_request = request
    rest.pool_manager.connection_pool_kw["retries"] = RETRIES  # pools are made on first use

    def bounded(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return request(*args, _request_timeout=_request_timeout or timeout, **kwargs)

    rest.request = bounded
    return client


class Kube:
    def __init__(self, client: ApiClient | None = None, *, timeout: tuple[float, float] = REQUEST_TIMEOUT) -> None:
        self.client = bound_requests(client or ApiClient(), timeout)
        self.custom = CustomObjectsApi(self.client)
        self.coordination = CoordinationV1Api(self.client)
        self._namespace_uids: dict[str, tuple[float, str | None]] = {}

    def _core(self, method: str, path: str, path_params: Mapping[str, str], body: Any = None) -> Any:
        """One call of the core/v1 API, JSON in and out (plain dicts); errors raise ApiException."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = self.client.param_serialize(
            method=method,
            resource_path=path,
            path_params=dict(path_params),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(*request)
        response.read()  # type: ignore[no-untyped-call]
        return self.client.response_deserialize(response, {"2XX": "object"}).data

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any], *, missing_ok: bool = False
    ) -> None:
        """Merge-patch the status subresource; with missing_ok, a Workspace already gone is no error."""
        try:
            await asyncio.to_thread(
                self.custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": dict(status)},
            )
        except ApiException as error:
            if not (missing_ok and error.status == 404):
                raise

    async def read_secret(self, namespace: str, name: str) -> tuple[dict[str, bytes], dict[str, str]] | None:
        """(base64-decoded data, annotations) of a Secret, or None if it does not exist.

        Values stay bytes: whether they must be text is the reader's decision."""
        try:
            secret = await asyncio.to_thread(
                self._core,
                "GET",
                "/api/v1/namespaces/{namespace}/secrets/{name}",
                {"namespace": namespace, "name": name},
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        data = {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
        annotations = dict((secret.get("metadata") or {}).get("annotations") or {})
        return data, annotations

    async def namespace_uid(self, namespace: str) -> str | None:
        """The namespace's UID (cached briefly); None if it cannot be read (no RBAC), logged."""
        now = time.monotonic()
        cached = self._namespace_uids.get(namespace)
        if cached is not None and now - cached[0] < NAMESPACE_UID_TTL:
            return cached[1]
        try:
            found = await asyncio.to_thread(self._core, "GET", "/api/v1/namespaces/{name}", {"name": namespace})
            uid: str | None = (found.get("metadata") or {}).get("uid") or None
        except ApiException as error:
            if error.status not in (403, 404):
                raise
            log.warning(
                "cannot read namespace %s (%s): caches there are not checked against the namespace "
                "UID; grant get on namespaces",
                namespace,
                error.status,
            )
            uid = None
        if len(self._namespace_uids) > 4096:
            self._namespace_uids.clear()  # bounded: entries are cheap to look up again
        self._namespace_uids[namespace] = (now, uid)
        return uid

    def forget_namespace(self, namespace: str) -> None:
        self._namespace_uids.pop(namespace, None)

    async def delete_workspace(self, namespace: str, name: str, uid: str) -> bool:
        """Delete if it is still the same object (uid precondition); False if already gone."""
        try:
            await asyncio.to_thread(
                self.custom.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                body=V1DeleteOptions(preconditions=V1Preconditions(uid=uid)),
            )
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise
        return True

    async def get_workspace(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: Any = await asyncio.to_thread(
                self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(found)

    async def add_finalizer(
        self, namespace: str, name: str, finalizer: str, meta: Mapping[str, Any] | None = None
    ) -> bool:
        """Make sure the Workspace carries `finalizer`; False if it is gone or being deleted.

        A merge patch of the whole list, guarded by resourceVersion (`meta`, when
        given, is a possibly stale copy: a conflict re-reads it).
        """
        for _ in range(10):
            if meta is None:
                found = await self.get_workspace(namespace, name)
                if found is None:
                    return False
                meta = found["metadata"]
            if meta.get("deletionTimestamp"):
                return False
            current = list(meta.get("finalizers") or [])
            if finalizer in current:
                return True
            done = await self._patch_finalizers(namespace, name, [*current, finalizer], str(meta["resourceVersion"]))
            if done is not None:
                return done
            meta = None
        raise RuntimeError(f"workspace {namespace}/{name}: finalizers kept changing")

    async def remove_finalizer(self, namespace: str, name: str, finalizer: str) -> None:
        for _ in range(10):
            found = await self.get_workspace(namespace, name)
            current = list((found or {}).get("metadata", {}).get("finalizers") or [])
            if found is None or finalizer not in current:
                return
            kept = [f for f in current if f != finalizer]
            if (
                await self._patch_finalizers(namespace, name, kept, str(found["metadata"]["resourceVersion"]))
                is not None
            ):
                return
        raise RuntimeError(f"workspace {namespace}/{name}: finalizers kept changing")

    async def _patch_finalizers(self, namespace: str, name: str, finalizers: list[str], version: str) -> bool | None:
        """True if written, False if the object is gone, None on a conflict (changed since `version`)."""
        body = {"metadata": {"finalizers": finalizers, "resourceVersion": version}}
        try:
            await asyncio.to_thread(
                self.custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name, body
            )
        except ApiException as error:
            if error.status == 409:
                return None
            if error.status == 404:
                return False
            raise
        return True

    async def list_workspaces(self, namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
        if not namespaces:
            listing: Any = await asyncio.to_thread(
                self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL, _request_timeout=LIST_TIMEOUT
            )
            return list(listing.get("items", []))
        items: list[dict[str, Any]] = []
        for namespace in namespaces:
            listing = await asyncio.to_thread(
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                _request_timeout=LIST_TIMEOUT,
            )
            items += listing.get("items", [])
        return items

    async def post_event(
        self, obj: Mapping[str, Any], *, reason: str, message: str, event_type: str = "Normal"
    ) -> None:
        """A core/v1 Event about a Workspace, for actions taken outside kopf's handlers."""
        meta = obj["metadata"]
        now = timestamp(datetime.now(UTC))
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": "workspace-operator-", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "source": {"component": "workspace-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await asyncio.to_thread(
            self._core, "POST", "/api/v1/namespaces/{namespace}/events", {"namespace": meta["namespace"]}, body
        )

    # -- Leases other than the project locks (lock.py): heartbeats, and their GC --

    async def list_leases(self, namespace: str, selector: str, *, heartbeat: bool = False) -> list[LeaseRecord]:
        """With `heartbeat`, on the heartbeat's own threads."""
        call = _heartbeat_call if heartbeat else asyncio.to_thread
        listing = await call(self.coordination.list_namespaced_lease, namespace, label_selector=selector)
        return [_record(lease) for lease in listing.items]

    async def write_heartbeat(
        self,
        namespace: str,
        name: str,
        *,
        holder: str,
        duration_seconds: int,
        labels: Mapping[str, str],
        resource_version: str | None,
    ) -> LeaseRecord:
        """Create the Lease (no resource_version) or renew it, guarded by resource_version."""
        now = datetime.now(UTC)
        body = V1Lease(
            metadata=V1ObjectMeta(name=name, labels=dict(labels), resource_version=resource_version),
            spec=V1LeaseSpec(
                holder_identity=holder, lease_duration_seconds=duration_seconds, acquire_time=now, renew_time=now
            ),
        )
        try:
            if resource_version is None:
                written = await _heartbeat_call(self.coordination.create_namespaced_lease, namespace, body)
            else:
                written = await _heartbeat_call(self.coordination.replace_namespaced_lease, name, namespace, body)
        except ApiException as error:
            if error.status in (404, 409):
                raise LeaseConflict(f"lease {name}: {error.reason}") from None
            raise
        return _record(written)

    async def delete_lease(self, namespace: str, name: str, resource_version: str, *, heartbeat: bool = False) -> bool:
        """Delete only the version we judged (a renewal in between wins); False if it changed or is gone.
        With `heartbeat`, on the heartbeat's own threads."""
        call = _heartbeat_call if heartbeat else asyncio.to_thread
        try:
            await call(
                self.coordination.delete_namespaced_lease,
                name,
                namespace,
                body=V1DeleteOptions(preconditions=V1Preconditions(resource_version=resource_version)),
            )
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise
        return True


def _record(lease: V1Lease) -> LeaseRecord:
    meta, spec = lease.metadata, lease.spec
    assert meta is not None
    return LeaseRecord(
        name=str(meta.name),
        holder=str((spec.holder_identity if spec else None) or ""),
        duration_seconds=float((spec.lease_duration_seconds if spec else None) or 0),
        resource_version=str(meta.resource_version),
        labels=dict(meta.labels or {}),
    )
