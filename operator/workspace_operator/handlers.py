"""kopf entry points. Thin by design: decide nothing here, call the operations.

Runtime objects arrive through kopf's `memo`. Handlers are registered by
`build_registry` on a registry of their own rather than kopf's global one, so
that embedders and tests can run several operators in one process.

Each owned Workspace has a kopf timer (`reconcile`): TTL, deadline and the health
of its worktree. The volume sweep is a loop of its own (gc.py says why).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from typing import Any

import kopf

from workspace_operator import gc, materialize, reconcile, takeover, teardown
from workspace_operator.config import Config
from workspace_operator.runtime import Runtime
from workspace_operator.spec import FINALIZER, GROUP, PLURAL, VERSION

RESOURCE = (GROUP, VERSION, PLURAL)
# kopf's own finalizer: never added (no handler asks kopf for one). The operator
# manages FINALIZER itself (added before materializing, removed after teardown, see
# teardown.finalize_soon): kopf strips its finalizer from every object its `when=`
# filters hide, so with several replicas each stripped it from the others'
# Workspaces (endlessly), and a deletion seen first by a non-owner skipped teardown.
KOPF_FINALIZER = "crafting.dev/kopf"


def _rt(memo: kopf.Memo) -> Runtime:
    runtime: Runtime = memo["runtime"]
    return runtime


def _owned(spec: kopf.Spec, namespace: str | None, memo: kopf.Memo, **_: Any) -> bool:
    return _rt(memo).owns(namespace or "", str(spec.get("project", "")))


def _owned_deleting(spec: kopf.Spec, namespace: str | None, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> bool:
    return bool(meta.get("deletionTimestamp")) and _owned(spec, namespace, memo)


def _owned_unsettled(
    spec: kopf.Spec,
    namespace: str | None,
    name: str | None,
    status: kopf.Status,
    meta: kopf.Meta,
    memo: kopf.Memo,
    **_: Any,
) -> bool:
    """On resume (kopf asks only then): what is not settled, and Ready ones whose worktree
    is not intact on disk — file reads, no API call."""
    return _owned(spec, namespace, memo) and reconcile.needs_resume(
        _rt(memo), namespace or "", name or "", spec, status, int(meta.get("generation") or 0)
    )


def _not_a_timer_success(record: logging.LogRecord) -> bool:
    # kopf logs every successful handler run; for a timer per Workspace that is a line per
    # Workspace per interval saying nothing. Failures and everything else still show.
    return record.getMessage() != "Timer 'reconcile' succeeded."


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    rt = _rt(memo)
    logging.getLogger("kopf.objects").addFilter(_not_a_timer_success)
    settings.persistence.finalizer = KOPF_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="crafting.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="crafting.dev", key="last-handled-configuration"
    )
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


async def on_create(
    namespace: str,
    name: str,
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    retry: int,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    rt = _rt(memo)
    if not await rt.kube.add_finalizer(namespace, name, FINALIZER, meta):
        return  # deleted meanwhile: nothing to materialize
    try:
        done = await takeover.exclusive(
            rt,
            namespace,
            name,
            str(meta.get("uid") or ""),
            status,
            lambda current: materialize.materialize(
                rt,
                namespace=namespace,
                name=name,
                generation=int(meta.get("generation") or 0),
                spec=spec,
                current=current,
                attempt=retry,
                meta=meta,
            ),
        )
    except materialize.Retry as error:
        if error.announce:
            kopf.warn(body, reason=error.reason, message=error.message)
        raise kopf.TemporaryError(error.message, delay=error.delay) from None
    except materialize.Fatal as error:
        if error.announce:
            kopf.warn(body, reason=error.reason, message=error.message)
        raise kopf.PermanentError(error.message) from None
    if done is not None:
        reason, message = done.event
        kopf.info(body, reason=reason, message=message)


async def on_event(body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    """Deletion of an owned Workspace: remove its worktree, then the operator's finalizer."""
    teardown.finalize_soon(_rt(memo), body)


async def on_timer(
    namespace: str, name: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, memo: kopf.Memo, **_: Any
) -> None:
    await reconcile.tick(_rt(memo), namespace=namespace, name=name, spec=spec, current=status, meta=meta)


def build_registry(config: Config) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    jitter = config.reconcile_jitter_seconds

    def first_delay(**_: Any) -> float:
        # Spread the timers of Workspaces seen at once (a burst, a restart) over the jitter.
        return random.uniform(0, jitter)

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
        # The TTL may change after creation: take the new expiresAt now, not at the next timer run.
        (
            kopf.on.update(*RESOURCE, registry=registry, when=_owned, id="retime", field="spec.ttlSecondsAfterReady"),
            on_timer,
        ),
        # Not sharp: an interval after each run ends, so the jittered first runs stay spread.
        (
            kopf.timer(
                *RESOURCE,
                registry=registry,
                when=_owned,
                id="reconcile",
                sharp=False,
                interval=config.reconcile_interval_seconds,
                initial_delay=first_delay,
            ),
            on_timer,
        ),
    ):
        decorator(handler)
    # kopf puts its finalizer on every object with a timer and strips it wherever a
    # `when=` filter hides the object: replicas owning different Workspaces would
    # patch it on and off forever (or race adding it, stalling creation). A timer
    # needs none: the operator's own finalizer keeps a deleting Workspace until its
    # teardown is done, and kopf stops the timer when the object is gone.
    spawning = registry._spawning
    spawning._handlers = [dataclasses.replace(h, requires_finalizer=False) for h in spawning._handlers]
    return registry
