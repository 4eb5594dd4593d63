"""Operation: the per-Workspace timer — lifecycle and worktree health.

Each run asks `lifecycle.decide` what is due and does exactly that:

* expire: delete the Workspace (uid-guarded; the finalizer removes the worktree);
* retime: write the expiresAt that the current TTL gives (the TTL was changed);
* deadline: fail a Workspace that did not become Ready in time (DeadlineExceeded);
* check: read its worktree on disk (directory, completion record, gitdir link; no
  git call, no API call) and, only if it is damaged or gone, rebuild it at the
  same commit under the project Lease (`materialize`'s repair path).

A run that finds nothing to do makes no API call at all, so a thousand idle
Ready Workspaces cost file reads, not writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from workspace_operator import lifecycle, materialize, metrics, status
from workspace_operator.git import GitError
from workspace_operator.lifecycle import Decision, Do
from workspace_operator.runtime import Runtime
from workspace_operator.spec import checkout_request

log = logging.getLogger("workspace_operator.reconcile")


async def tick(
    rt: Runtime,
    *,
    namespace: str,
    name: str,
    spec: Mapping[str, Any],
    current: Mapping[str, Any],
    meta: Mapping[str, Any],
) -> Decision:
    """One timer run for one Workspace; returns what was decided (for tests and logs)."""
    decision = lifecycle.decide(spec, current, meta, limits=rt.limits, now=datetime.now(UTC))
    metrics.RECONCILES.labels(decision.do.value).inc()
    generation = int(meta.get("generation") or 0)
    if decision.do is Do.EXPIRE:
        if await rt.kube.delete_workspace(namespace, name, str(meta.get("uid", ""))):
            metrics.GC_ACTIONS.labels("expire-workspace").inc()
            log.info("gc: expire-workspace %s/%s (%s)", namespace, name, decision.why)
            await rt.kube.post_event(_ref(namespace, name, meta), reason="Expired", message=f"deleted: {decision.why}")
    elif decision.do is Do.RETIME:
        await rt.kube.patch_status(
            namespace, name, status.retimed(current, expires_at=decision.expires_at, generation=generation)
        )
        log.info("retimed %s/%s: expiresAt %s", namespace, name, decision.expires_at)
    elif decision.do is Do.DEADLINE:
        if (namespace, name) not in rt.in_flight:
            await _deadline(rt, namespace, name, spec, current, meta, decision)
    elif decision.do is Do.CHECK:
        # Not Ready but Ready once: a rebuild that failed transiently, retried here.
        if (namespace, name) not in rt.in_flight and (
            current.get("phase") != status.Phase.READY.value or not await intact(rt, namespace, name, spec, current)
        ):
            await repair(rt, namespace, name, spec, current, meta)
    return decision


async def intact(rt: Runtime, namespace: str, name: str, spec: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """The worktree status reports is complete on disk (file reads only, off the event loop)."""
    try:
        valid = rt.engine.validate(checkout_request(namespace, name, spec))
    except GitError:
        return True  # an invalid spec never had a worktree: nothing to check
    return await asyncio.to_thread(rt.engine.is_complete, valid, str(current.get("commit") or ""))


def needs_resume(
    rt: Runtime, namespace: str, name: str, spec: Mapping[str, Any], current: Mapping[str, Any], generation: int
) -> bool:
    """On a restart: anything not settled, and Ready ones whose worktree is not intact on disk."""
    if not status.is_settled(current, generation):
        return True
    if current.get("phase") != status.Phase.READY.value:
        return False
    try:
        valid = rt.engine.validate(checkout_request(namespace, name, spec))
    except GitError:
        return False
    return not rt.engine.is_complete(valid, str(current.get("commit") or ""))


async def repair(
    rt: Runtime, namespace: str, name: str, spec: Mapping[str, Any], current: Mapping[str, Any], meta: Mapping[str, Any]
) -> None:
    """Rebuild a damaged worktree; failures are in status and retried on the next run."""
    with contextlib.suppress(materialize.Retry, materialize.Fatal):
        await materialize.reported(
            rt,
            meta,
            materialize.materialize(
                rt,
                namespace=namespace,
                name=name,
                generation=int(meta.get("generation") or 0),
                spec=spec,
                current=current,
                attempt=0,
                meta=meta,
            ),
        )


async def _deadline(
    rt: Runtime,
    namespace: str,
    name: str,
    spec: Mapping[str, Any],
    current: Mapping[str, Any],
    meta: Mapping[str, Any],
    decision: Decision,
) -> None:
    generation = int(meta.get("generation") or 0)
    await rt.kube.patch_status(
        namespace,
        name,
        status.failed(
            current,
            reason=status.DEADLINE_EXCEEDED,
            message=decision.why,
            retryable=False,
            retry_in=None,
            attempts=int(current.get("attempts") or 0),
            generation=generation,
            now=datetime.now(UTC),
            expires_after=lifecycle.expires_after(spec, meta, rt.limits, failed=True),
        ),
    )
    metrics.MATERIALIZATIONS.labels("failed").inc()
    log.warning("workspace %s/%s failed: %s", namespace, name, decision.why)
    await rt.kube.post_event(
        _ref(namespace, name, meta), reason=status.DEADLINE_EXCEEDED, message=decision.why, event_type="Warning"
    )


def _ref(namespace: str, name: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name, "uid": meta.get("uid")}}
