"""What garbage collection should do: pure decisions over a snapshot of the volume.

Inputs are plain data (what is on disk, which Workspaces exist, the clock, the
settings); the output is a list of actions. Nothing here touches the disk or the
API, so every rule — above all "never remove live work" — is unit-tested directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class Kind(StrEnum):
    REMOVE_ORPHAN = "remove-orphan-worktree"
    REMOVE_DEBRIS = "remove-debris"  # staging dirs and quarantined caches of crashed operations
    PRUNE = "worktree-prune"
    UNPIN = "remove-pin"  # the pin of a cache-only Workspace that no longer exists
    GC_CACHE = "gc-cache"
    DELETE_UNUSED_CACHE = "delete-unused-cache"
    EVICT_CACHE = "evict-cache"


@dataclass(frozen=True)
class Action:
    kind: Kind
    namespace: str
    project: str
    target: str = ""  # worktree or debris entry name, when the action has one
    why: str = ""


@dataclass(frozen=True)
class ProjectSnapshot:
    namespace: str
    project: str
    has_cache: bool
    last_used: float | None  # last materialization from this cache (epoch seconds)
    last_fetch: float | None
    last_gc: float | None
    cache_bytes: int | None = None  # measured only under disk pressure
    worktrees: dict[str, float] = field(default_factory=dict)  # name -> mtime
    debris: dict[str, float] = field(default_factory=dict)  # .staging-*/.quarantine-* -> mtime
    pins: frozenset[str] = frozenset()  # Workspaces with a pin ref in the cache


@dataclass(frozen=True)
class Policy:
    orphan_grace_seconds: float
    cache_quiet_seconds: float
    cache_unused_seconds: float
    high_watermark: float
    low_watermark: float
    namespace_cache_bytes: int = 0  # a namespace's caches above this: its idle ones are evicted; 0 = no limit


@dataclass(frozen=True)
class Usage:
    used_bytes: int
    total_bytes: int

    @property
    def ratio(self) -> float:
        return self.used_bytes / self.total_bytes if self.total_bytes else 0.0


def plan(
    projects: Iterable[ProjectSnapshot],
    live: set[tuple[str, str, str]],
    *,
    now: float,
    policy: Policy,
    usage: Usage | None = None,
) -> list[Action]:
    """Actions for one GC pass. `live` holds (namespace, project, name) of existing Workspaces."""
    projects = list(projects)
    live_names: dict[tuple[str, str], set[str]] = {}
    for namespace, project, name in live:
        live_names.setdefault((namespace, project), set()).add(name)
    actions: list[Action] = []
    idle: list[ProjectSnapshot] = []
    freed = 0  # bytes of caches deleted as unused in this pass: they count toward the eviction target
    for snap in projects:
        decided, cache_idle = _project(
            snap, live_names.get((snap.namespace, snap.project), set()), now=now, policy=policy
        )
        actions += decided
        if any(action.kind is Kind.DELETE_UNUSED_CACHE for action in decided):
            freed += snap.cache_bytes or 0
        elif cache_idle:
            idle.append(snap)
    evictions: list[Action] = []
    if policy.namespace_cache_bytes:
        evictions = _evict_namespaces(projects, actions, idle, policy.namespace_cache_bytes)
        freed += sum(snap.cache_bytes or 0 for snap in idle if _key(snap) in _keys(evictions))
        idle = [snap for snap in idle if _key(snap) not in _keys(evictions)]
    if usage is not None and usage.ratio > policy.high_watermark:
        evictions += _evict(idle, usage, policy, freed)
    if evictions:
        evicted = _keys(evictions)
        # Packing a cache that is deleted a moment later is wasted work.
        actions = [
            action
            for action in actions
            if not (action.kind is Kind.GC_CACHE and (action.namespace, action.project) in evicted)
        ]
        actions += evictions
    return actions


def confirm(
    planned: Sequence[Action],
    fresh: ProjectSnapshot,
    live_names: set[str],
    *,
    now: float,
    policy: Policy,
) -> list[Action]:
    """The planned actions of one project that its state, re-read under the project's Lease, still justifies.

    A pass plans from a snapshot taken without any lock; by the time the Lease is held a
    Workspace may have been created, a worktree materialized, the cache used. Only what
    the fresh decision agrees with is carried out; eviction needs the cache still idle.
    """
    decided, cache_idle = _project(fresh, live_names, now=now, policy=policy)
    still = {(action.kind, action.target) for action in decided}
    return [
        action
        for action in planned
        if (action.kind, action.target) in still or (action.kind is Kind.EVICT_CACHE and cache_idle)
    ]


def _project(snap: ProjectSnapshot, live_names: set[str], *, now: float, policy: Policy) -> tuple[list[Action], bool]:
    """One project's actions, and whether its cache is idle (an eviction candidate) afterwards."""
    key = (snap.namespace, snap.project)
    actions: list[Action] = []
    # A directory whose Workspace exists is never touched, whatever its age.
    orphans = [
        name
        for name, mtime in sorted(snap.worktrees.items())
        if name not in live_names and _older(now, mtime, policy.orphan_grace_seconds)
    ]
    for name in orphans:
        actions.append(Action(Kind.REMOVE_ORPHAN, *key, name, "no Workspace for it"))
    for entry, mtime in sorted(snap.debris.items()):
        if _older(now, mtime, policy.orphan_grace_seconds):
            actions.append(Action(Kind.REMOVE_DEBRIS, *key, entry, "left by an interrupted operation"))
    if not snap.has_cache:
        return actions, False
    if orphans:
        actions.append(Action(Kind.PRUNE, *key, why="after removing orphans"))
    # Before any gc of the cache, so that what only a dead pin kept is pruned with it.
    for name in sorted(snap.pins - live_names):
        actions.append(Action(Kind.UNPIN, *key, name, "no Workspace for it"))
    # Young worktrees without a Workspace may be a materialization finishing: keep their cache.
    in_use = bool(live_names) or any(name not in orphans for name in snap.worktrees)
    if not in_use and _older(now, snap.last_used, policy.cache_unused_seconds):
        actions.append(Action(Kind.DELETE_UNUSED_CACHE, *key, why="unused"))
        return actions, False
    quiet = _older(now, snap.last_fetch, policy.cache_quiet_seconds)
    # Once per fetch: a packed cache that nothing was fetched into has nothing to gain.
    if quiet and (snap.last_gc is None or (snap.last_fetch or 0.0) > snap.last_gc):
        actions.append(Action(Kind.GC_CACHE, *key, why="quiet"))
    return actions, not in_use


def _older(now: float, moment: float | None, seconds: float) -> bool:
    # Unknown times (missing files) count as old; times in the future (clock
    # skew between nodes writing the volume) count as just now.
    if moment is None:
        return True
    return now - min(moment, now) >= seconds


def _key(snap: ProjectSnapshot) -> tuple[str, str]:
    return snap.namespace, snap.project


def _keys(actions: Iterable[Action]) -> set[tuple[str, str]]:
    return {(action.namespace, action.project) for action in actions}


def _evict_namespaces(
    projects: Iterable[ProjectSnapshot], planned: list[Action], idle: list[ProjectSnapshot], limit: int
) -> list[Action]:
    """Per namespace: its least recently used idle caches, until its caches fit in `limit` bytes.

    Every cache of the namespace counts (those in use too), minus those this pass
    deletes anyway; only idle, measured ones are evicted. One tenant's caches
    never push out another's.
    """
    deleted = {(a.namespace, a.project) for a in planned if a.kind is Kind.DELETE_UNUSED_CACHE}
    used: dict[str, int] = {}
    for snap in projects:
        if snap.has_cache and _key(snap) not in deleted:
            used[snap.namespace] = used.get(snap.namespace, 0) + (snap.cache_bytes or 0)
    actions: list[Action] = []
    for snap in sorted(
        (s for s in idle if s.cache_bytes is not None), key=lambda s: (s.last_used or 0.0, s.namespace, s.project)
    ):
        if used.get(snap.namespace, 0) <= limit:
            continue
        actions.append(
            Action(
                Kind.EVICT_CACHE,
                snap.namespace,
                snap.project,
                why=f"namespace caches at {used[snap.namespace]} bytes > {limit}",
            )
        )
        used[snap.namespace] -= snap.cache_bytes or 0
    return actions


def _evict(candidates: list[ProjectSnapshot], usage: Usage, policy: Policy, freed: int) -> list[Action]:
    """Least recently used idle caches, until usage drops to the low watermark.

    Caches whose size was not measured are left alone: without sizes there is no
    telling when to stop, and evicting everything is worse than evicting nothing.
    """
    target = policy.low_watermark * usage.total_bytes
    used = usage.used_bytes - freed
    actions: list[Action] = []
    measured = [snap for snap in candidates if snap.cache_bytes is not None]
    for snap in sorted(measured, key=lambda s: (s.last_used or 0.0, s.namespace, s.project)):
        if used <= target:
            break
        actions.append(
            Action(
                Kind.EVICT_CACHE,
                snap.namespace,
                snap.project,
                why=f"volume at {usage.ratio:.0%} > {policy.high_watermark:.0%}",
            )
        )
        used -= snap.cache_bytes or 0
    return actions
