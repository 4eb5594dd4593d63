"""Operation: garbage collection — the volume sweep.

Expiry is not here: each Workspace's own kopf timer deletes it when due
(reconcile.py). The sweep runs periodically in each replica over the projects
it owns: snapshot the disk (as the engine reports it) + list Workspaces →
`gc_plan.plan` (pure) → execute, one project Lease at a time, held only for that
project's actions, yielding in between so materializations are never starved. The snapshot is taken without the Lease, so
  under it the project is read again and only what `gc_plan.confirm` still
  justifies is done: a Workspace created meanwhile keeps its worktree and cache.

The sweep is one loop per replica, not a kopf timer: what it removes (orphan
worktrees, unused caches, debris) has no Workspace left to hang a timer on, and
eviction is a decision over the whole volume. The per-project Leases would be
the only candidates, but kopf watches every resource in every watched namespace
alike: in the cluster-wide install that means watching all Leases of the
cluster (every node's heartbeat every 10 s) and granting list/watch on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

from workspace_operator import metrics
from workspace_operator.gc_plan import Action, Kind, Policy, ProjectSnapshot, Usage, confirm, plan
from workspace_operator.git import (
    DNS1123_LABEL,
    Maintenance,
    cache_bytes,
    list_projects,
    project_present,
    project_state,
)
from workspace_operator.lock import LABEL_NAMESPACE, LABEL_PROJECT, MANAGED_BY, LeaseLost, LockTimeout
from workspace_operator.logs import fields
from workspace_operator.runtime import Runtime
from workspace_operator.status import Phase

log = logging.getLogger("workspace_operator.gc")


def policy_of(rt: Runtime) -> Policy:
    c = rt.config
    return Policy(
        c.orphan_grace_seconds,
        c.cache_quiet_seconds,
        c.cache_unused_seconds,
        c.disk_high_watermark,
        c.disk_low_watermark,
        c.max_cache_bytes_per_namespace,
    )


def snapshot(root: Path, owns: Callable[[str, str], bool]) -> list[ProjectSnapshot]:
    """What is on the volume, for the projects this replica owns (links are never followed)."""
    return [
        snapshot_project(root, ns, project) for ns, project in list_projects(root, _report_link) if owns(ns, project)
    ]


def _report_link(path: Path) -> None:
    metrics.UNSAFE_PATHS.labels("gc").inc()
    log.warning("gc: %s is a symlink where a directory belongs; left alone, never followed", path)


def snapshot_project(root: Path, namespace: str, project: str) -> ProjectSnapshot:
    """One project's directory, as the engine reports it; a project that is gone (or not a
    real directory) reads as empty."""
    state = project_state(root, namespace, project, _report_link)
    return ProjectSnapshot(
        namespace=namespace,
        project=project,
        has_cache=state.has_cache,
        last_used=state.last_used,
        last_fetch=state.last_fetch,
        last_gc=state.last_gc,
        worktrees=state.worktrees,
        debris=state.debris,
        pins=state.pins,
    )


def with_sizes(
    snaps: list[ProjectSnapshot], root: Path, live_projects: Collection[tuple[str, str]] = ()
) -> list[ProjectSnapshot]:
    """Measure cache sizes (costly: only under disk pressure, only where eviction is possible)."""
    sized = []
    for snap in snaps:
        if not snap.has_cache or (snap.namespace, snap.project) in live_projects:
            sized.append(snap)
            continue
        sized.append(replace(snap, cache_bytes=cache_bytes(root, snap.namespace, snap.project)))
    return sized


def volume_usage(root: Path) -> Usage:
    disk = shutil.disk_usage(root)
    return Usage(used_bytes=disk.used, total_bytes=disk.total)


async def sweep(rt: Runtime, *, usage_probe: Callable[[Path], Usage] = volume_usage) -> list[Action]:
    """One GC pass; returns the actions carried out."""
    started = time.monotonic()
    root = rt.config.root
    watched = set(rt.config.namespaces)

    def owns(namespace: str, project: str) -> bool:
        # Namespaces this operator does not watch have Workspaces it cannot see:
        # their directories would all look orphaned.
        return (not watched or namespace in watched) and rt.owns(namespace, project)

    # Disk first, then the API: a worktree seen on disk had its Workspace created
    # before the listing, so it is in `live` unless it was deleted.
    snaps = await asyncio.to_thread(snapshot, root, owns)
    items = await rt.kube.list_workspaces(rt.config.namespaces)
    live = {
        (ws["metadata"]["namespace"], str(ws.get("spec", {}).get("project", "")), ws["metadata"]["name"])
        for ws in items
    }
    _count_phases(items, owns)
    usage: Usage | None = usage_probe(root) if root.is_dir() else None
    if usage is not None:
        metrics.VOLUME_USAGE.set(usage.ratio)
    if rt.config.max_cache_bytes_per_namespace:
        # A namespace's total counts its caches in use too: measure every cache, every pass.
        snaps = await asyncio.to_thread(with_sizes, snaps, root)
    elif usage is not None and usage.ratio > rt.config.disk_high_watermark:
        live_projects = {(ns, project) for ns, project, _ in live}
        snaps = await asyncio.to_thread(with_sizes, snaps, root, live_projects)
    await asyncio.to_thread(_publish_caches, root, snaps)
    policy = policy_of(rt)
    actions = plan(snaps, live, now=time.time(), policy=policy, usage=usage)
    done: list[Action] = []
    by_project: dict[tuple[str, str], list[Action]] = {}
    for action in actions:
        by_project.setdefault((action.namespace, action.project), []).append(action)
    for (namespace, project), planned in by_project.items():
        try:
            # Short wait: a busy project is simply visited again next pass.
            async with rt.locks.hold(namespace, project, wait_seconds=5):
                # Re-decide on what is there now that nothing else can change it.
                fresh = await asyncio.to_thread(snapshot_project, root, namespace, project)
                # Names being materialized by this process count as live: their files
                # are written outside the Lease, possibly right now.
                still_live = await _live_names(rt, namespace, project) | rt.checkouts.busy(namespace, project)
                confirmed = confirm(planned, fresh, still_live, now=time.time(), policy=policy)
                for action in planned:
                    if action not in confirmed:
                        log.info(
                            "gc: no longer %s %s/%s%s: changed since the snapshot",
                            action.kind.value,
                            namespace,
                            project,
                            f"/{action.target}" if action.target else "",
                        )
                for action in confirmed:
                    await _execute(rt, action)
                    done.append(action)
        except (LockTimeout, LeaseLost) as error:
            log.info("gc: skipping %s/%s this pass: %s", namespace, project, error)
        except Exception:
            log.exception("gc: actions on %s/%s failed", namespace, project)
        await asyncio.sleep(0)  # let materializations in between projects
    await forget_project_leases(rt, {(ns, project) for ns, project, _ in live}, owns)
    metrics.GC_DURATION.observe(time.monotonic() - started)
    return done


PROJECT_LEASES = f"{LABEL_PROJECT},{','.join(f'{k}={v}' for k, v in MANAGED_BY.items())}"


async def forget_project_leases(
    rt: Runtime, live_projects: Collection[tuple[str, str]], owns: Callable[[str, str], bool]
) -> int:
    """Delete the Leases of this replica's projects that are gone: no Workspace, nothing on the volume.

    Only a Lease nobody holds (released, or its holder known dead) is deleted, and
    only the version judged (resourceVersion precondition): an acquisition in
    between wins, and a later one simply creates the Lease again.
    """
    deleted = 0
    try:
        leases = await rt.kube.list_leases(rt.config.lease_namespace, PROJECT_LEASES)
    except Exception as error:  # noqa: BLE001 - API trouble: tried again next pass
        log.warning("gc: listing project leases failed: %s", error)
        return 0
    for lease in leases:
        namespace, project = lease.labels.get(LABEL_NAMESPACE, ""), lease.labels.get(LABEL_PROJECT, "")
        if (
            not (DNS1123_LABEL.match(namespace) and DNS1123_LABEL.match(project))
            or (namespace, project) in live_projects
            or not owns(namespace, project)
        ):
            continue
        if lease.holder and not rt.locks.holder_gone(lease.holder):
            continue
        if await asyncio.to_thread(project_present, rt.config.root, namespace, project):
            continue  # caches and worktrees still there: the usual GC decides about them first
        if await rt.kube.delete_lease(rt.config.lease_namespace, lease.name, lease.resource_version):
            deleted += 1
            metrics.PROJECT_LEASES_DELETED.inc()
            log.info("gc: deleted the lease of gone project %s/%s", namespace, project)
    return deleted


def _count_phases(items: list[dict[str, Any]], owns: Callable[[str, str], bool]) -> None:
    counts = dict.fromkeys(Phase, 0)
    for ws in items:
        if owns(ws["metadata"]["namespace"], str(ws.get("spec", {}).get("project", ""))):
            phase = (ws.get("status") or {}).get("phase") or Phase.PENDING.value
            with contextlib.suppress(ValueError):  # a phase this version does not know
                counts[Phase(phase)] += 1
    for phase, count in counts.items():
        metrics.WORKSPACES.labels(phase.value).set(count)


# Projects whose cache series this process publishes, to drop those gone since.
_published: set[tuple[str, str]] = set()


def _publish_caches(root: Path, snaps: list[ProjectSnapshot]) -> None:
    """Per-project cache size and last fetch: measured once per pass, not per scrape."""
    seen: set[tuple[str, str]] = set()
    for snap in snaps:
        if not snap.has_cache:
            continue
        key = (snap.namespace, snap.project)
        seen.add(key)
        size = snap.cache_bytes
        if size is None:  # not measured by this pass yet
            size = cache_bytes(root, snap.namespace, snap.project)  # never follows links
        metrics.CACHE_BYTES.labels(*key).set(size)
        if snap.last_fetch is not None:
            metrics.CACHE_LAST_FETCH.labels(*key).set(snap.last_fetch)
    for key in _published - seen:
        for gauge in (metrics.CACHE_BYTES, metrics.CACHE_LAST_FETCH):
            with contextlib.suppress(KeyError):
                gauge.remove(*key)
    _published.clear()
    _published.update(seen)


async def _live_names(rt: Runtime, namespace: str, project: str) -> set[str]:
    items = await rt.kube.list_workspaces((namespace,))
    return {ws["metadata"]["name"] for ws in items if ws.get("spec", {}).get("project") == project}


async def _execute(rt: Runtime, action: Action) -> None:
    maintenance = Maintenance(rt.engine)
    ns, project = action.namespace, action.project
    if action.kind is Kind.REMOVE_ORPHAN:
        await rt.engine.remove(ns, project, action.target)
    elif action.kind is Kind.REMOVE_DEBRIS:
        await asyncio.to_thread(maintenance.remove_debris, ns, project, action.target)
    elif action.kind is Kind.PRUNE:
        await maintenance.prune(ns, project)
    elif action.kind is Kind.UNPIN:
        await maintenance.unpin(ns, project, action.target)
    elif action.kind is Kind.GC_CACHE:
        await maintenance.gc_cache(ns, project)
    elif action.kind in (Kind.DELETE_UNUSED_CACHE, Kind.EVICT_CACHE):
        await asyncio.to_thread(maintenance.delete_cache, ns, project)
    metrics.GC_ACTIONS.labels(action.kind.value).inc()
    log.info(
        "gc: %s %s/%s%s (%s)",
        action.kind.value,
        ns,
        project,
        f"/{action.target}" if action.target else "",
        action.why,
        extra=fields(ns, project=project, reason=action.kind.value),
    )


async def sweep_forever(rt: Runtime) -> None:
    while True:
        await asyncio.sleep(rt.config.gc_interval_seconds)
        try:
            await sweep(rt)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("gc pass failed; next pass in %.0fs", rt.config.gc_interval_seconds)
