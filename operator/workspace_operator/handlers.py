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

from workspace_operator import gc, materialize, takeover, teardown
from workspace_operator.runtime import Runtime
from workspace_operator.spec import FINALIZER, GROUP, PLURAL, VERSION
from workspace_operator.status import is_settled

RESOURCE = (GROUP, VERSION, PLURAL)
# kopf's own finalizer: never added, because no handler asks kopf for one. The
# operator manages FINALIZER itself (added before materializing, removed after
# teardown, see teardown.finalize_soon): kopf strips its finalizer from every
# object its `when=` filters hide, so with several replicas each would strip it
# from the others' Workspaces, and deletions seen first by a non-owner would skip
# teardown.
KOPF_FINALIZER = "crafting.dev/kopf"


def _rt(memo: kopf.Memo) -> Runtime:
    runtime: Runtime = memo["runtime"]
    return runtime


def _owned(spec: kopf.Spec, namespace: str | None, memo: kopf.Memo, **_: Any) -> bool:
    return _rt(memo).owns(namespace or "", str(spec.get("project", "")))


def _owned_deleting(spec: kopf.Spec, namespace: str | None, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> bool:
    return bool(meta.get("deletionTimestamp")) and _owned(spec, namespace, memo)


def _owned_unsettled(spec: kopf.Spec, namespace: str | None, status: kopf.Status, meta: kopf.Meta,
                     memo: kopf.Memo, **_: Any) -> bool:
    """On resume, skip what is already Ready or permanently Failed for this generation."""
    return _owned(spec, namespace, memo) and not is_settled(status, int(meta.get("generation") or 0))


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    rt = _rt(memo)
    settings.persistence.finalizer = KOPF_FINALIZER
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
    background = [asyncio.create_task(gc.sweep_forever(rt), name="gc sweep")]
    if rt.members is not None:
        # Join before kopf delivers the first event, so that `when=` sees our share.
        await rt.members.beat()
        background.append(asyncio.create_task(rt.members.run(), name="membership"))
        if not rt.fixed_shards:
            background.append(asyncio.create_task(takeover.follow(rt), name="takeover"))
    memo["background"] = background


async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    rt = _rt(memo)
    tasks = [*memo.get("background", []), *rt.takeovers]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if rt.members is not None:
        await rt.members.stop()


async def on_create(namespace: str, name: str, body: kopf.Body, spec: kopf.Spec, status: kopf.Status,
                    meta: kopf.Meta, retry: int, memo: kopf.Memo, **_: Any) -> None:
    rt = _rt(memo)
    if not await rt.kube.add_finalizer(namespace, name, FINALIZER, meta):
        return  # deleted meanwhile: nothing to materialize
    try:
        result = await takeover.exclusive(
            rt, namespace, name, str(meta.get("uid") or ""), status, lambda current: materialize.materialize(
                rt, namespace=namespace, name=name, generation=int(meta.get("generation") or 0),
                spec=spec, current=current, attempt=retry))
    except materialize.Retry as error:
        kopf.warn(body, reason=error.reason, message=error.message)
        raise kopf.TemporaryError(error.message, delay=error.delay) from None
    except materialize.Fatal as error:
        kopf.warn(body, reason=error.reason, message=error.message)
        raise kopf.PermanentError(error.message) from None
    if result is not None:
        kopf.info(body, reason="Materialized", message=f"{result.commit[:12]} at {result.path} "
                  f"(cache {'hit' if result.cache_hit else 'miss'}, {result.total_seconds:.2f}s)")


async def on_event(body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    """Deletion of an owned Workspace: remove its worktree, then the operator's finalizer."""
    teardown.finalize_soon(_rt(memo), body)


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
        # Deletions: the operator's own finalizer keeps the object until teardown is done.
        (kopf.on.event(*RESOURCE, registry=registry, when=_owned_deleting, id="cleanup"), on_event),
    ):
        decorator(handler)
    return registry
