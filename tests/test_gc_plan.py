"""GC decisions without a cluster: gc_plan.plan / confirm on plain data, and gc.snapshot on
a scratch directory. (Expiry is a lifecycle decision: tests/test_lifecycle_rules.py.)"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from workspace_operator import gc
from workspace_operator.gc_plan import Action, Kind, Policy, ProjectSnapshot, Usage, confirm, plan

NOW = 1_000_000_000.0
HOUR = 3600.0
DAY = 86400.0
POLICY = Policy(
    orphan_grace_seconds=HOUR,
    cache_quiet_seconds=DAY,
    cache_unused_seconds=30 * DAY,
    high_watermark=0.85,
    low_watermark=0.70,
)
MB = 1 << 20
GC = Kind.GC_CACHE


def snap(
    project: str = "p",
    *,
    namespace: str = "ns",
    has_cache: bool = True,
    last_used: float | None = NOW,
    last_fetch: float | None = NOW,
    last_gc: float | None = NOW,
    cache_bytes: int | None = None,
    worktrees: dict[str, float] | None = None,
    debris: dict[str, float] | None = None,
) -> ProjectSnapshot:
    """A project that is healthy and busy unless told otherwise (stamps all 'now')."""
    return ProjectSnapshot(
        namespace=namespace,
        project=project,
        has_cache=has_cache,
        last_used=last_used,
        last_fetch=last_fetch,
        last_gc=last_gc,
        cache_bytes=cache_bytes,
        worktrees=worktrees or {},
        debris=debris or {},
    )


def run(
    *snaps: ProjectSnapshot,
    live: set[tuple[str, str, str]] | None = None,
    usage: Usage | None = None,
    now: float = NOW,
    policy: Policy = POLICY,
) -> list[Action]:
    return plan(snaps, live or set(), now=now, policy=policy, usage=usage)


def kinds(actions: list[Action], **match: Any) -> list[tuple[Kind, str, str]]:
    return [
        (a.kind, a.project, a.target) for a in actions if all(getattr(a, key) == value for key, value in match.items())
    ]


# -- orphans -------------------------------------------------------------------------


def test_orphan_older_than_grace_is_removed_then_pruned() -> None:
    actions = run(snap(worktrees={"old": NOW - HOUR - 1}))
    assert kinds(actions) == [(Kind.REMOVE_ORPHAN, "p", "old"), (Kind.PRUNE, "p", "")]
    assert all(a.namespace == "ns" for a in actions)


def test_orphan_exactly_at_grace_is_removed_younger_is_kept() -> None:
    assert kinds(run(snap(worktrees={"edge": NOW - HOUR})), kind=Kind.REMOVE_ORPHAN) == [
        (Kind.REMOVE_ORPHAN, "p", "edge")
    ]
    assert run(snap(worktrees={"young": NOW - HOUR + 1})) == []


def test_worktree_of_an_existing_workspace_is_never_removed_whatever_its_age() -> None:
    ancient = snap(worktrees={"mine": 0.0, "also": NOW - 365 * DAY})
    live = {("ns", "p", "mine"), ("ns", "p", "also")}
    assert run(ancient, live=live) == []
    # Same name in another namespace or project does not protect it.
    other = {("other", "p", "mine"), ("ns", "q", "mine")}
    assert kinds(run(snap(worktrees={"mine": 0.0}), live=other), kind=Kind.REMOVE_ORPHAN) == [
        (Kind.REMOVE_ORPHAN, "p", "mine")
    ]


def test_only_the_orphans_among_live_worktrees_go() -> None:
    actions = run(snap(worktrees={"live": 0.0, "dead": 0.0, "fresh": NOW}), live={("ns", "p", "live")})
    assert kinds(actions) == [(Kind.REMOVE_ORPHAN, "p", "dead"), (Kind.PRUNE, "p", "")]


def test_prune_only_when_orphans_were_removed() -> None:
    assert run(snap(worktrees={"young": NOW})) == []
    assert run(snap(worktrees={"live": 0.0}), live={("ns", "p", "live")}) == []
    assert Kind.PRUNE in [a.kind for a in run(snap(worktrees={"old": 0.0}))]


def test_worktree_dirs_without_a_cache_are_removed_but_not_pruned() -> None:
    """Partial state: the cache was lost (or never finished); orphans still go, no git runs."""
    actions = run(
        snap(
            has_cache=False,
            last_used=None,
            last_fetch=None,
            last_gc=None,
            worktrees={"old": 0.0, "young": NOW, "live": 0.0},
        ),
        live={("ns", "p", "live")},
    )
    assert kinds(actions) == [(Kind.REMOVE_ORPHAN, "p", "old")]


def test_empty_project_dir_without_cache_needs_nothing() -> None:
    assert run(snap(has_cache=False, last_used=None, last_fetch=None, last_gc=None)) == []


# -- debris --------------------------------------------------------------------------


def test_debris_older_than_grace_is_removed_young_debris_kept() -> None:
    actions = run(snap(debris={".staging-cache-1": 0.0, ".quarantine-2": NOW - 2 * HOUR, ".staging-cache-3": NOW - 60}))
    assert kinds(actions) == [(Kind.REMOVE_DEBRIS, "p", ".quarantine-2"), (Kind.REMOVE_DEBRIS, "p", ".staging-cache-1")]


def test_debris_alone_triggers_no_prune_and_is_removed_without_a_cache() -> None:
    assert kinds(run(snap(has_cache=False, last_used=None, debris={".staging-x": 0.0}))) == [
        (Kind.REMOVE_DEBRIS, "p", ".staging-x")
    ]
    assert Kind.PRUNE not in [a.kind for a in run(snap(debris={".staging-x": 0.0}))]


# -- git gc of quiet caches ------------------------------------------------------------


def test_quiet_cache_is_gcd_once_then_not_again_until_a_new_fetch() -> None:
    fetched = NOW - 2 * DAY
    busy = {("ns", "p", "w")}  # a live Workspace: the cache is not a deletion candidate
    assert kinds(run(snap(last_fetch=fetched, last_gc=None), live=busy)) == [(GC, "p", "")]
    assert kinds(run(snap(last_fetch=fetched, last_gc=fetched - DAY), live=busy)) == [(GC, "p", "")]
    # Packed after the last fetch: nothing to gain, however long it stays quiet.
    packed = snap(last_fetch=fetched, last_gc=fetched + 60)
    assert run(packed, live=busy) == []
    assert run(packed, live=busy, now=NOW + 365 * DAY) == []
    # A new fetch makes it eligible again, once it has been quiet.
    refetched = replace(packed, last_fetch=fetched + 3 * HOUR)
    assert run(refetched, live=busy, now=fetched + 4 * HOUR) == []
    assert kinds(run(refetched, live=busy, now=fetched + 3 * HOUR + DAY)) == [(GC, "p", "")]


def test_busy_cache_is_not_gcd() -> None:
    assert run(snap(last_fetch=NOW - 60, last_gc=None)) == []


def test_cache_with_live_workspaces_is_still_gcd_when_quiet() -> None:
    """gc packs objects; it does not remove anything a worktree needs (2-week prune grace)."""
    actions = run(snap(last_fetch=NOW - 2 * DAY, last_gc=None, worktrees={"w": 0.0}), live={("ns", "p", "w")})
    assert kinds(actions) == [(GC, "p", "")]


def test_missing_stamps_count_as_old() -> None:
    """A cache with no fetch stamp (created by an older version, or stamps lost) is gc'd once."""
    assert kinds(run(snap(last_fetch=None, last_gc=None), live={("ns", "p", "w")})) == [(GC, "p", "")]
    assert run(snap(last_fetch=None, last_gc=NOW - DAY), live={("ns", "p", "w")}) == []


# -- unused caches ---------------------------------------------------------------------


def test_unused_cache_without_workspaces_is_deleted() -> None:
    actions = run(snap(last_used=NOW - 31 * DAY, last_fetch=NOW - 31 * DAY, last_gc=None))
    assert kinds(actions) == [(Kind.DELETE_UNUSED_CACHE, "p", "")]  # no gc before the delete


def test_recently_used_cache_is_kept() -> None:
    assert kinds(run(snap(last_used=NOW - 29 * DAY))) == []


def test_unused_cache_of_a_project_with_a_live_workspace_is_never_deleted() -> None:
    # The live Workspace need not even have a worktree yet (still materializing, or failed).
    for worktrees in ({}, {"w": 0.0}):
        actions = run(snap(last_used=0.0, last_fetch=0.0, last_gc=0.0, worktrees=worktrees), live={("ns", "p", "w")})
        assert Kind.DELETE_UNUSED_CACHE not in [a.kind for a in actions]


def test_unused_cache_with_a_young_worktree_is_kept() -> None:
    """A young directory with no Workspace may be a materialization finishing right now."""
    actions = run(snap(last_used=0.0, last_fetch=0.0, last_gc=0.0, worktrees={"new": NOW - 5}))
    assert actions == []


def test_unused_cache_whose_worktrees_are_all_old_orphans_goes_after_them() -> None:
    actions = run(snap(last_used=0.0, last_fetch=0.0, last_gc=0.0, worktrees={"a": 0.0, "b": 0.0}))
    assert kinds(actions) == [
        (Kind.REMOVE_ORPHAN, "p", "a"),
        (Kind.REMOVE_ORPHAN, "p", "b"),
        (Kind.PRUNE, "p", ""),
        (Kind.DELETE_UNUSED_CACHE, "p", ""),
    ]


def test_missing_last_used_stamp_counts_as_unused() -> None:
    """A cache that never completed a materialization (no last-used stamp) and has no Workspace."""
    assert kinds(run(snap(last_used=None))) == [(Kind.DELETE_UNUSED_CACHE, "p", "")]
    assert run(snap(last_used=None), live={("ns", "p", "w")}) == []


def test_live_workspace_in_another_namespace_does_not_protect_a_cache() -> None:
    assert kinds(run(snap(last_used=0.0), live={("other", "p", "w")})) == [(Kind.DELETE_UNUSED_CACHE, "p", "")]


# -- clock skew ------------------------------------------------------------------------


def test_times_in_the_future_count_as_now() -> None:
    """Another node with a fast clock wrote these: nothing is old, nothing is removed."""
    future = NOW + 10 * DAY
    actions = run(
        snap(last_used=future, last_fetch=future, last_gc=None, worktrees={"w": future}, debris={".staging-x": future})
    )
    assert actions == []


def test_future_fetch_stamp_leads_to_exactly_one_gc_once_quiet() -> None:
    fetch = NOW + HOUR  # skewed
    assert run(snap(last_fetch=fetch, last_gc=None), live={("ns", "p", "w")}) == []
    gc_at = fetch + DAY  # the first time the clock says it is quiet
    assert kinds(run(snap(last_fetch=fetch, last_gc=None), live={("ns", "p", "w")}, now=gc_at)) == [(GC, "p", "")]
    assert run(snap(last_fetch=fetch, last_gc=gc_at), live={("ns", "p", "w")}, now=gc_at + 30 * DAY) == []


# -- watermark eviction -----------------------------------------------------------------


def idle(project: str, last_used: float, size_mb: int) -> ProjectSnapshot:
    return snap(project, last_used=last_used, cache_bytes=size_mb * MB)


def test_eviction_in_lru_order_down_to_the_low_watermark() -> None:
    usage = Usage(used_bytes=90 * MB, total_bytes=100 * MB)  # high 85%, low 70%: free >= 20 MB
    snaps = [
        idle("newest", NOW - 1 * HOUR, 10),
        idle("oldest", NOW - 5 * HOUR, 8),
        idle("middle", NOW - 3 * HOUR, 8),
        idle("older", NOW - 4 * HOUR, 8),
    ]
    actions = run(*snaps, usage=usage)
    assert kinds(actions) == [
        (Kind.EVICT_CACHE, "oldest", ""),
        (Kind.EVICT_CACHE, "older", ""),
        (Kind.EVICT_CACHE, "middle", ""),
    ]
    assert "90%" in actions[0].why


def test_eviction_stops_as_soon_as_the_low_watermark_is_reached() -> None:
    usage = Usage(used_bytes=90 * MB, total_bytes=100 * MB)
    actions = run(idle("a", NOW - 2 * HOUR, 20), idle("b", NOW - HOUR, 20), usage=usage)
    assert kinds(actions) == [(Kind.EVICT_CACHE, "a", "")]


def test_no_eviction_at_or_under_the_high_watermark() -> None:
    for used in (50, 85):
        assert run(idle("a", NOW - HOUR, 20), usage=Usage(used * MB, 100 * MB)) == []


def test_live_caches_are_never_evicted_even_if_that_leaves_usage_high() -> None:
    usage = Usage(used_bytes=99 * MB, total_bytes=100 * MB)
    live_project = snap("live", last_used=0.0, cache_bytes=50 * MB)
    young = snap("young", last_used=0.0, cache_bytes=30 * MB, worktrees={"w": NOW})
    actions = run(live_project, young, idle("idle", NOW, 5), usage=usage, live={("ns", "live", "w")})
    assert kinds(actions) == [(Kind.EVICT_CACHE, "idle", "")]


def test_eviction_counts_unused_caches_deleted_in_the_same_pass() -> None:
    usage = Usage(used_bytes=90 * MB, total_bytes=100 * MB)
    unused = snap("unused", last_used=0.0, cache_bytes=25 * MB)
    actions = run(unused, idle("recent", NOW - HOUR, 10), usage=usage)
    assert kinds(actions) == [(Kind.DELETE_UNUSED_CACHE, "unused", "")]


def test_evicted_caches_are_not_gcd_first() -> None:
    usage = Usage(used_bytes=90 * MB, total_bytes=100 * MB)
    quiet = snap("quiet", last_used=NOW - HOUR, last_fetch=NOW - 2 * DAY, last_gc=None, cache_bytes=30 * MB)
    assert kinds(run(quiet, usage=usage)) == [(Kind.EVICT_CACHE, "quiet", "")]


def test_unmeasured_caches_are_not_evicted() -> None:
    usage = Usage(used_bytes=99 * MB, total_bytes=100 * MB)
    assert run(snap("a", cache_bytes=None), idle("b", NOW, 1), usage=usage) == [
        Action(Kind.EVICT_CACHE, "ns", "b", why="volume at 99% > 85%")
    ]


def test_eviction_ties_break_by_name() -> None:
    usage = Usage(used_bytes=100 * MB, total_bytes=100 * MB)
    keep_unused = replace(POLICY, cache_unused_seconds=1e12)  # isolate eviction from unused deletion
    in_use = snap("c", last_used=None, cache_bytes=MB, worktrees={"w": NOW})  # young worktree: not a candidate
    actions = run(idle("b", NOW - HOUR, 1), idle("a", NOW - HOUR, 1), in_use, usage=usage, policy=keep_unused)
    assert kinds(actions) == [(Kind.EVICT_CACHE, "a", ""), (Kind.EVICT_CACHE, "b", "")]
    # An idle cache without a last-used stamp is not ranked: it is deleted as unused outright.
    actions = run(idle("b", NOW - HOUR, 1), snap("n", last_used=None, cache_bytes=MB), usage=usage, policy=keep_unused)
    assert kinds(actions) == [(Kind.DELETE_UNUSED_CACHE, "n", ""), (Kind.EVICT_CACHE, "b", "")]


def test_zero_sized_volume_never_evicts() -> None:
    assert Usage(0, 0).ratio == 0.0
    assert run(idle("a", NOW - HOUR, 1), usage=Usage(0, 0)) == []


# -- confirm: re-deciding under the Lease -------------------------------------------------


def test_confirm_drops_an_orphan_whose_workspace_appeared() -> None:
    before = snap(worktrees={"w": 0.0})
    planned = run(before)
    assert kinds(planned) == [(Kind.REMOVE_ORPHAN, "p", "w"), (Kind.PRUNE, "p", "")]
    assert confirm(planned, before, {"w"}, now=NOW, policy=POLICY) == []
    assert confirm(planned, before, set(), now=NOW, policy=POLICY) == planned


def test_confirm_keeps_a_cache_that_was_used_since_the_snapshot() -> None:
    before = snap(last_used=0.0)
    planned = run(before)
    assert kinds(planned) == [(Kind.DELETE_UNUSED_CACHE, "p", "")]
    # A Workspace was created and materialized between the snapshot and the Lease.
    after = replace(before, last_used=NOW, worktrees={"new": NOW})
    assert confirm(planned, after, {"new"}, now=NOW, policy=POLICY) == []
    # Or only the Workspace exists so far (waiting for the Lease we hold).
    assert confirm(planned, before, {"new"}, now=NOW, policy=POLICY) == []


def test_confirm_evicts_only_what_is_still_idle() -> None:
    before = idle("p", NOW - HOUR, 10)
    planned = run(before, usage=Usage(100 * MB, 100 * MB))
    assert kinds(planned) == [(Kind.EVICT_CACHE, "p", "")]
    assert confirm(planned, before, set(), now=NOW, policy=POLICY) == planned
    assert confirm(planned, before, {"w"}, now=NOW, policy=POLICY) == []
    assert confirm(planned, replace(before, worktrees={"w": NOW}), set(), now=NOW, policy=POLICY) == []


def test_confirm_on_a_vanished_project_does_nothing() -> None:
    planned = run(
        snap(worktrees={"w": 0.0}, debris={".staging-x": 0.0}, last_fetch=0.0, last_gc=None),
        live={("ns", "p", "other")},
    )
    assert {a.kind for a in planned} == {Kind.REMOVE_ORPHAN, Kind.REMOVE_DEBRIS, Kind.PRUNE, GC}
    gone = snap(has_cache=False, last_used=None, last_fetch=None, last_gc=None)
    assert confirm(planned, gone, {"other"}, now=NOW, policy=POLICY) == []


@pytest.mark.parametrize("live_names", [set(), {"x"}])
def test_confirm_never_adds_actions(live_names: set[str]) -> None:
    fresh = snap(worktrees={"w": 0.0}, last_used=0.0, last_fetch=0.0, last_gc=None)
    assert confirm([], fresh, live_names, now=NOW, policy=POLICY) == []


def test_projects_are_independent() -> None:
    actions = run(snap("a", worktrees={"w": 0.0}), snap("b", worktrees={"w": 0.0}), live={("ns", "a", "w")})
    assert kinds(actions) == [(Kind.REMOVE_ORPHAN, "b", "w"), (Kind.PRUNE, "b", "")]


# -- gc.snapshot: what the planner is told about the disk ---------------------------------------


def test_snapshot_reads_worktrees_debris_and_stamps(tmp_path: Path) -> None:
    project = tmp_path / "ns" / "p"
    cache = project / ".cache"
    cache.mkdir(parents=True)
    (cache / "workspace-operator.last-used").touch()
    os.utime(cache / "workspace-operator.last-used", (1000.0, 1000.0))
    (cache / "workspace-operator.last-fetch").touch()
    os.utime(cache / "workspace-operator.last-fetch", (2000.0, 2000.0))
    for name in ("w1", "w2", ".staging-cache-x", ".quarantine-1-y", ".ready", "Not_A_Label", "-bad"):
        (project / name).mkdir()
    os.utime(project / "w1", (500.0, 500.0))
    (project / "plain-file").write_text("not a worktree\n")
    (tmp_path / "ns" / "no-cache" / "w").mkdir(parents=True)
    (tmp_path / "ns" / "UPPER").mkdir()  # not a project name the operator could have written
    (tmp_path / "Bad_NS" / "p").mkdir(parents=True)
    (tmp_path / "stray-file").write_text("")

    snaps = {(s.namespace, s.project): s for s in gc.snapshot(tmp_path, lambda ns, p: True)}
    assert set(snaps) == {("ns", "p"), ("ns", "no-cache")}
    snap = snaps[("ns", "p")]
    assert snap.has_cache and snap.last_used == 1000.0 and snap.last_fetch == 2000.0 and snap.last_gc is None
    assert set(snap.worktrees) == {"w1", "w2"} and snap.worktrees["w1"] == 500.0
    assert set(snap.debris) == {".staging-cache-x", ".quarantine-1-y"}
    bare = snaps[("ns", "no-cache")]
    assert not bare.has_cache and bare.last_used is None and set(bare.worktrees) == {"w"}


def test_snapshot_only_covers_owned_projects_and_tolerates_a_missing_root(tmp_path: Path) -> None:
    for ns, project in (("a", "x"), ("a", "y"), ("b", "x")):
        (tmp_path / ns / project).mkdir(parents=True)
    owned = gc.snapshot(tmp_path, lambda ns, p: ns == "a" and p == "y")
    assert [(s.namespace, s.project) for s in owned] == [("a", "y")]
    assert gc.snapshot(tmp_path / "missing", lambda ns, p: True) == []
    assert gc.snapshot_project(tmp_path, "a", "gone") == ProjectSnapshot("a", "gone", False, None, None, None)


# -- per-namespace cache limit ----------------------------------------------------------------

NS_LIMIT = replace(POLICY, namespace_cache_bytes=20 * MB)


def evicted(actions: list[Action]) -> list[tuple[str, str]]:
    return [(a.namespace, a.project) for a in actions if a.kind is Kind.EVICT_CACHE]


def test_namespace_over_its_cache_limit_evicts_its_own_lru_idle_caches_only() -> None:
    greedy = [
        snap(p, namespace="greedy", last_used=NOW - age * HOUR, cache_bytes=10 * MB)
        for p, age in (("new", 1), ("old", 5), ("mid", 3), ("older", 4))
    ]
    # Another tenant's caches are older and bigger: they are not touched for greedy's excess.
    modest = snap("big", namespace="modest", last_used=NOW - 9 * HOUR, cache_bytes=15 * MB)
    actions = run(*greedy, modest, policy=NS_LIMIT)  # no disk pressure at all
    assert evicted(actions) == [("greedy", "old"), ("greedy", "older")]  # 40 MB -> 20 MB <= 20 MB
    assert all("namespace caches at" in a.why for a in actions)


def test_namespace_caches_in_use_count_but_are_never_evicted() -> None:
    live_cache = snap("live", namespace="t", last_used=0.0, cache_bytes=18 * MB)
    idle_cache = snap("idle", namespace="t", last_used=NOW - HOUR, cache_bytes=5 * MB)
    actions = run(live_cache, idle_cache, policy=NS_LIMIT, live={("t", "live", "w")})
    assert evicted(actions) == [("t", "idle")]  # 23 MB > 20 MB: only the idle one can go
    assert evicted(run(live_cache, policy=replace(NS_LIMIT, namespace_cache_bytes=MB), live={("t", "live", "w")})) == []


def test_namespace_limit_counts_unused_caches_deleted_in_the_same_pass() -> None:
    unused = snap("unused", namespace="t", last_used=0.0, cache_bytes=15 * MB)
    recent = snap("recent", namespace="t", last_used=NOW - HOUR, cache_bytes=10 * MB)
    assert kinds(run(unused, recent, policy=NS_LIMIT)) == [(Kind.DELETE_UNUSED_CACHE, "unused", "")]


def test_namespace_limit_and_watermark_never_evict_a_cache_twice() -> None:
    caches = [
        snap(p, namespace="t", last_used=NOW - age * HOUR, cache_bytes=10 * MB)
        for p, age in (("a", 3), ("b", 2), ("c", 1))
    ]
    actions = run(*caches, policy=NS_LIMIT, usage=Usage(95 * MB, 100 * MB))
    assert evicted(actions) == [("t", "a"), ("t", "b"), ("t", "c")]  # limit takes a; the volume b, c
    assert len(set(evicted(actions))) == len(evicted(actions))


def test_no_namespace_limit_by_default() -> None:
    caches = [snap(p, namespace="t", last_used=NOW - HOUR, cache_bytes=100 * MB) for p in "abc"]
    assert run(*caches) == []


def test_namespace_eviction_is_confirmed_only_while_the_cache_stays_idle() -> None:
    before = snap("p", namespace="t", last_used=NOW - HOUR, cache_bytes=30 * MB)
    planned = run(before, policy=NS_LIMIT)
    assert evicted(planned) == [("t", "p")]
    assert confirm(planned, before, set(), now=NOW, policy=NS_LIMIT) == planned
    assert confirm(planned, before, {"new-workspace"}, now=NOW, policy=NS_LIMIT) == []
