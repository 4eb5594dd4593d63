"""What garbage collection should do: pure decisions over a snapshot of the volume.

Inputs are plain data (what is on disk, which Workspaces exist, the clock, the
settings); the output is a list of actions. Nothing here touches the disk or the
API, so every rule — above all "never remove live work" — is unit-tested directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum


class Kind(StrEnum):
    REMOVE_ORPHAN = "remove-orphan-worktree"
    REMOVE_DEBRIS = "remove-debris"  # staging dirs and quarantined caches of crashed operations
    PRUNE = "worktree-prune"
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


@dataclass(frozen=True)
class Policy:
    orphan_grace_seconds: float
    cache_quiet_seconds: float
    cache_unused_seconds: float
    high_watermark: float
    low_watermark: float


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
    actions: list[Action] = []
    live_projects = {(ns, project) for ns, project, _ in live}
    evictable: list[ProjectSnapshot] = []
    for snap in projects:
        key = (snap.namespace, snap.project)
        orphans = [
            name for name, mtime in sorted(snap.worktrees.items())
            if (snap.namespace, snap.project, name) not in live
            and _older(now, mtime, policy.orphan_grace_seconds)
        ]
        for name in orphans:
            actions.append(Action(Kind.REMOVE_ORPHAN, *key, name, "no Workspace for it"))
        for entry, mtime in sorted(snap.debris.items()):
            if _older(now, mtime, policy.orphan_grace_seconds):
                actions.append(Action(Kind.REMOVE_DEBRIS, *key, entry, "left by an interrupted operation"))
        if not snap.has_cache:
            continue
        if orphans:
            actions.append(Action(Kind.PRUNE, *key, why="after removing orphans"))
        in_use = key in live_projects or any(name not in orphans for name in snap.worktrees)
        if not in_use and _older(now, snap.last_used, policy.cache_unused_seconds):
            actions.append(Action(Kind.DELETE_UNUSED_CACHE, *key, why="unused"))
            continue
        if not in_use:
            evictable.append(snap)
        quiet = _older(now, snap.last_fetch, policy.cache_quiet_seconds)
        if quiet and (snap.last_gc is None or (snap.last_fetch or 0) > snap.last_gc):
            actions.append(Action(Kind.GC_CACHE, *key, why="quiet"))
    if usage is not None and usage.ratio > policy.high_watermark:
        actions += _evict(evictable, usage, policy)
    return actions


def _older(now: float, moment: float | None, seconds: float) -> bool:
    # Unknown times (missing files) count as old; times in the future (clock
    # skew between nodes writing the volume) count as just now.
    if moment is None:
        return True
    return now - min(moment, now) >= seconds


def _evict(candidates: list[ProjectSnapshot], usage: Usage, policy: Policy) -> list[Action]:
    """Least recently used caches without live work, until usage drops below the low watermark."""
    target = policy.low_watermark * usage.total_bytes
    used = usage.used_bytes
    actions: list[Action] = []
    for snap in sorted(candidates, key=lambda s: (s.last_used or 0.0, s.namespace, s.project)):
        if used <= target:
            break
        actions.append(Action(Kind.EVICT_CACHE, snap.namespace, snap.project,
                              why=f"volume at {usage.ratio:.0%} > {policy.high_watermark:.0%}"))
        used -= snap.cache_bytes or 0
    return actions
