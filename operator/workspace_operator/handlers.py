"""kopf entry points. Thin by design: decide nothing here, call the operations.

Runtime objects arrive through kopf's `memo`. Handlers are registered by
`build_registry` on a registry of their own rather than kopf's global one, so
that embedders and tests can run several operators in one process.

Each owned Workspace has a kopf timer (`reconcile`): TTL, deadline and the health
of its worktree. The volume sweep is a loop of its own (gc.py says why).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import kopf

from workspace_operator import gc, materialize, reconcile, teardown
from workspace_operator.config import Config
from workspace_operator.runtime import Runtime
from workspace_operator.spec import GROUP, PLURAL, VERSION

RESOURCE = (GROUP, VERSION, PLURAL)
FINALIZER = "crafting.dev/worktree-cleanup"


def _rt(memo: kopf.Memo) -> Runtime:
    runtime: Runtime = memo["runtime"]
    return runtime


def _owned(spec: kopf.Spec, namespace: str | None, memo: kopf.Memo, **_: Any) -> bool:
    return _rt(memo).owns(namespace or "", str(spec.get("project", "")))


def _owned_unsettled(spec: kopf.Spec, namespace: str | None, name: str | None, status: kopf.Status,
                     meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> bool:
    """On resume (kopf asks only then): what is not settled, and Ready ones whose worktree
    is not intact on disk — file reads, no API call."""
    return _owned(spec, namespace, memo) and reconcile.needs_resume(_rt(memo), namespace or "", name or "", spec, status,
                                  int(meta.get("generation") or 0))


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
        done = await materialize.materialize(
            _rt(memo), namespace=namespace, name=name, generation=int(meta.get("generation") or 0),
            spec=spec, current=status, attempt=retry, meta=meta)
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


async def on_timer(namespace: str, name: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta,
                   memo: kopf.Memo, **_: Any) -> None:
    await reconcile.tick(_rt(memo), namespace=namespace, name=name, spec=spec, current=status, meta=meta)


async def on_delete(namespace: str, name: str, body: kopf.Body, spec: kopf.Spec, status: kopf.Status,
                    meta: kopf.Meta, retry: int, memo: kopf.Memo, **_: Any) -> None:
    try:
        outcome = await teardown.teardown(_rt(memo), namespace=namespace, name=name, spec=spec, attempt=retry,
                                          current=status, generation=int(meta.get("generation") or 0))
    except teardown.RetryDeletion as error:
        raise kopf.TemporaryError(str(error), delay=error.delay) from None
    kopf.info(body, reason="Cleaned", message=outcome)


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
        (kopf.on.delete(*RESOURCE, registry=registry, when=_owned, id="cleanup"), on_delete),
        # The TTL may change after creation: take the new expiresAt now, not at the next timer run.
        (kopf.on.update(*RESOURCE, registry=registry, when=_owned, id="retime", field="spec.ttlSecondsAfterReady"),
         on_timer),
        # Not sharp: an interval after each run ends, so the jittered first runs stay spread.
        (kopf.timer(*RESOURCE, registry=registry, when=_owned, id="reconcile", sharp=False,
                    interval=config.reconcile_interval_seconds, initial_delay=first_delay), on_timer),
    ):
        decorator(handler)
    return registry
