"""Operation: pick up the unsettled Workspaces of projects this replica just gained.

kopf hands every replica every event, but only the owner at that moment acts
(handlers are filtered with `when=`), and kopf does not replay an event later.
When membership changes — a peer died, hung, left, or this replica joined or
rejoined — the projects that moved here may hold Workspaces nobody will ever
handle otherwise: created while their owner was dead, or interrupted mid-way.
On each change this lists the Workspaces, keeps those of projects gained, and
materializes the ones not yet settled, retrying with the usual backoff for as
long as the project stays here. A Workspace already being materialized in this
process is left to that run (`exclusive`); across processes the project Lease
and the worktree's completion record make a second attempt a no-op.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from workspace_operator import materialize, metrics, teardown
from workspace_operator.membership import gained, owner
from workspace_operator.runtime import Runtime
from workspace_operator.spec import FINALIZER
from workspace_operator.status import is_settled

log = logging.getLogger("workspace_operator.takeover")
T = TypeVar("T")


async def exclusive(
    rt: Runtime,
    namespace: str,
    name: str,
    uid: str,
    status: Mapping[str, Any],
    run: Callable[[Mapping[str, Any]], Awaitable[T]],
) -> T:
    """Run one materialization of a Workspace at a time in this process.

    Waits for a run already in flight, then goes on with the status as it is now
    (the caller's copy predates that run), so that a Workspace made Ready meanwhile
    is recognised as such instead of being marked Materializing again.
    """
    waited = False
    while (other := rt.runs_by_uid.get(uid)) is not None:
        waited = True
        await other.wait()
    done = rt.runs_by_uid[uid] = asyncio.Event()
    try:
        if waited:
            fresh = await rt.kube.get_workspace(namespace, name)
            if fresh is not None and fresh["metadata"].get("uid") == uid:
                status = fresh.get("status") or {}
        return await run(status)
    finally:
        del rt.runs_by_uid[uid]
        done.set()


async def follow(rt: Runtime) -> None:
    """Forever: on each change of membership, pick up what moved here."""
    members = rt.members
    assert members is not None
    before: frozenset[str] = frozenset()
    while True:
        await members.changed.wait()
        members.changed.clear()
        after = members.members
        if members.identity in after:
            try:
                await pick_up(rt, before, after)
            except Exception as error:  # noqa: BLE001 - API trouble: try again at the next beat
                log.warning("takeover listing failed, retrying: %s", error)
                await asyncio.sleep(members.interval)
                members.changed.set()
                continue
        before = after


async def pick_up(rt: Runtime, before: frozenset[str], after: frozenset[str]) -> int:
    """Start materializing the unsettled Workspaces of projects gained; returns how many."""
    assert rt.members is not None
    me = rt.members.identity
    watched = set(rt.config.namespaces)
    items = [
        ws
        for ws in await rt.kube.list_workspaces(rt.config.namespaces)
        if not watched or ws["metadata"]["namespace"] in watched
    ]
    projects = {(ws["metadata"]["namespace"], _project(ws)) for ws in items}
    metrics.PROJECTS_OWNED.set(sum(1 for ns, p in projects if owner(ns, p, after) == me))
    moved = set(gained(projects, me, before, after))
    started = 0
    for ws in items:
        meta = ws["metadata"]
        uid = str(meta["uid"])
        if (meta["namespace"], _project(ws)) not in moved:
            continue
        if "deletionTimestamp" in meta:
            teardown.finalize_soon(rt, ws)  # a deletion whose event went to a dead owner
            continue
        if uid in rt.runs_by_uid or is_settled(ws.get("status") or {}, int(meta.get("generation") or 0)):
            continue
        task = asyncio.create_task(_run(rt, ws), name=f"takeover {meta['namespace']}/{meta['name']}")
        rt.takeovers.add(task)
        task.add_done_callback(rt.takeovers.discard)
        started += 1
    if moved:
        metrics.TAKEOVERS.inc(started)
        log.info("takeover: %d project(s) moved here, %d unsettled Workspace(s) picked up", len(moved), started)
    return started


def _project(ws: Mapping[str, Any]) -> str:
    return str((ws.get("spec") or {}).get("project", ""))


async def _run(rt: Runtime, ws: Mapping[str, Any]) -> None:
    meta = ws["metadata"]
    namespace, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta["uid"])
    try:
        await exclusive(rt, namespace, name, uid, ws.get("status") or {}, lambda _: _until_settled(rt, ws))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("takeover of %s/%s failed", namespace, name)


async def _until_settled(rt: Runtime, ws: Mapping[str, Any]) -> None:
    """Materialize with backoff while the project stays here and the Workspace is unsettled."""
    meta = ws["metadata"]
    namespace, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta["uid"])
    spec: Mapping[str, Any] = ws.get("spec") or {}
    generation = int(meta.get("generation") or 0)
    attempt = 0
    if not await rt.kube.add_finalizer(namespace, name, FINALIZER):
        return
    while True:
        # The status as it is now: the listing (or the run waited for) may be older than
        # a run of the create handler that settled it meanwhile.
        fresh = await rt.kube.get_workspace(namespace, name)
        if fresh is None or fresh["metadata"].get("uid") != uid or "deletionTimestamp" in fresh["metadata"]:
            return
        status = fresh.get("status") or {}
        if is_settled(status, generation):
            return
        if not rt.owns(namespace, _project(ws)):
            log.info("takeover of %s/%s stopped: the project moved on", namespace, name)
            return
        try:
            await materialize.reported(
                rt,
                meta,
                materialize.materialize(
                    rt,
                    namespace=namespace,
                    name=name,
                    generation=generation,
                    spec=spec,
                    current=status,
                    attempt=attempt,
                    meta=meta,
                ),
            )
            return
        except materialize.Fatal:
            return
        except materialize.Retry as retry:
            await asyncio.sleep(retry.delay)
        attempt += 1
