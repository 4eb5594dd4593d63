"""kopf entry points. Thin by design: decide nothing here, call the operations.

Runtime objects arrive through kopf's `memo`. Handlers are registered by
`build_registry` on a registry of their own rather than kopf's global one, so
that embedders and tests can run several operators in one process.

There is deliberately no per-Workspace timer: expiry is part of the GC pass
(gc.py), which lists every Workspace anyway; a kopf timer per object costs
memory and wake-ups proportional to the number of Workspaces.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from workspace_operator import gc, materialize, teardown
from workspace_operator.runtime import Runtime
from workspace_operator.spec import GROUP, PLURAL, VERSION
from workspace_operator.status import is_settled

RESOURCE = (GROUP, VERSION, PLURAL)
FINALIZER = "crafting.dev/worktree-cleanup"


def _rt(memo: kopf.Memo) -> Runtime:
    runtime: Runtime = memo["runtime"]
    return runtime


def _owned(spec: kopf.Spec, namespace: str | None, memo: kopf.Memo, **_: Any) -> bool:
    return _rt(memo).owns(namespace or "", str(spec.get("project", "")))


def _owned_unsettled(spec: kopf.Spec, namespace: str | None, status: kopf.Status, meta: kopf.Meta,
                     memo: kopf.Memo, **_: Any) -> bool:
    """On resume, skip what is already Ready or permanently Failed for this generation."""
    return _owned(spec, namespace, memo) and not is_settled(status, int(meta.get("generation") or 0))


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    rt = _rt(memo)
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="crafting.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="crafting.dev", key="last-handled-configuration")
    # Explicit watch timeouts: without them a silently dead watch connection can
    # freeze the operator (a known kopf/aiohttp failure mode).
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "workspace-operator"
    settings.posting.reporting_instance = rt.locks.identity
    settings.posting.event_name_prefix = "workspace-operator-"
    settings.persistence.consistency_timeout = 5
    # Scanning watches CRDs and namespaces: we need neither (fixed resource, fixed
    # namespace list), and without RBAC for them it delays startup by a minute.
    settings.scanning.disabled = True
    memo["sweeper"] = asyncio.create_task(gc.sweep_forever(rt), name="gc sweep")


async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    sweeper = memo.get("sweeper")
    if sweeper is not None:
        sweeper.cancel()


async def on_create(namespace: str, name: str, body: kopf.Body, spec: kopf.Spec, status: kopf.Status,
                    meta: kopf.Meta, retry: int, memo: kopf.Memo, **_: Any) -> None:
    try:
        result = await materialize.materialize(
            _rt(memo), namespace=namespace, name=name, generation=int(meta.get("generation") or 0),
            spec=spec, current=status, attempt=retry)
    except materialize.Retry as error:
        kopf.warn(body, reason=error.reason, message=error.message)
        raise kopf.TemporaryError(error.message, delay=error.delay) from None
    except materialize.Fatal as error:
        kopf.warn(body, reason=error.reason, message=error.message)
        raise kopf.PermanentError(error.message) from None
    if result is not None:
        kopf.info(body, reason="Materialized", message=f"{result.commit[:12]} at {result.path or result.cache_path} "
                  f"(cache {'hit' if result.cache_hit else 'miss'}, {result.total_seconds:.2f}s)")


async def on_delete(namespace: str, name: str, body: kopf.Body, spec: kopf.Spec, retry: int,
                    memo: kopf.Memo, **_: Any) -> None:
    try:
        outcome = await teardown.teardown(_rt(memo), namespace=namespace, name=name, spec=spec, attempt=retry)
    except teardown.RetryDeletion as error:
        raise kopf.TemporaryError(str(error), delay=min(60, 2 ** (retry + 1))) from None
    kopf.info(body, reason="Cleaned", message=outcome)


def build_registry() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    # kopf's callback protocols spell out every keyword; ours take what they use.
    handler: Any
    for decorator, handler in (
        # Same credentials as our own client: in-cluster, else the current kubeconfig.
        (kopf.on.login(registry=registry), kopf.login_via_client),
        (kopf.on.startup(registry=registry), configure),
        (kopf.on.cleanup(registry=registry), shutdown),
        (kopf.on.create(*RESOURCE, registry=registry, when=_owned, id="materialize"), on_create),
        (kopf.on.resume(*RESOURCE, registry=registry, when=_owned_unsettled, id="resume"), on_create),
        (kopf.on.delete(*RESOURCE, registry=registry, when=_owned, id="cleanup"), on_delete),
    ):
        decorator(handler)
    return registry
