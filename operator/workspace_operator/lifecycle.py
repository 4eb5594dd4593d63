"""A Workspace's lifecycle, Job-like: pure decisions for the per-Workspace timer.

* Ready: deleted `ttlSecondsAfterReady` after readyAt. The TTL may be changed
  after creation; status.expiresAt follows it.
* Failed (permanently): deleted the operator's failed-TTL after it failed.
* Never Ready: given up as `DeadlineExceeded` (Failed, Stalled) after its
  active deadline, counted from creation.
* With ownerReferences (a Job, a Pod, a PipelineRun) it lives exactly as long
  as its owner: no TTL deletes it, Kubernetes' garbage collector does.

Inputs are plain data (the object's spec, status and metadata, the settings and
the clock); nothing here touches the disk or the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from workspace_operator.status import STALLED, Phase, condition_of, expiry, parse_time


@dataclass(frozen=True)
class Limits:
    default_ttl_seconds: int
    failed_ttl_seconds: int
    active_deadline_seconds: int
    allow_no_ttl: bool


class Do(StrEnum):
    NOTHING = "nothing"
    EXPIRE = "expire"  # delete the Workspace (uid-guarded); the finalizer cleans up
    RETIME = "retime"  # write the new expiresAt for the current generation
    DEADLINE = "deadline"  # fail it as DeadlineExceeded
    CHECK = "check"  # look at its worktree on disk; rebuild it if damaged


@dataclass(frozen=True)
class Decision:
    do: Do
    expires_at: str | None = None
    why: str = ""


def ttl_after_ready(spec: Mapping[str, Any], limits: Limits) -> int:
    """The effective TTL; 0 (never expire) only where the operator allows it."""
    value = spec.get("ttlSecondsAfterReady")
    if value is None:
        return limits.default_ttl_seconds
    if int(value) == 0 and not limits.allow_no_ttl:
        return limits.default_ttl_seconds
    return int(value)


def active_deadline(spec: Mapping[str, Any], limits: Limits) -> int:
    value = spec.get("activeDeadlineSeconds")
    return limits.active_deadline_seconds if value is None else int(value)


def has_owner(meta: Mapping[str, Any]) -> bool:
    return bool(meta.get("ownerReferences"))


def expires_after(
    spec: Mapping[str, Any], meta: Mapping[str, Any], limits: Limits, *, failed: bool = False
) -> int | None:
    """Seconds from Ready (or from the failure) to deletion; None: not deleted by the operator."""
    if has_owner(meta):
        return None
    seconds = limits.failed_ttl_seconds if failed else ttl_after_ready(spec, limits)
    return seconds or None


def expected_expiry(
    spec: Mapping[str, Any], status: Mapping[str, Any], meta: Mapping[str, Any], limits: Limits
) -> str | None:
    if status.get("phase") == Phase.READY.value:
        return expiry(status.get("readyAt"), expires_after(spec, meta, limits))
    stalled = condition_of(status, STALLED)
    since = stalled.get("lastTransitionTime") if stalled and stalled.get("status") == "True" else None
    return expiry(since, expires_after(spec, meta, limits, failed=True))


def decide(
    spec: Mapping[str, Any], status: Mapping[str, Any], meta: Mapping[str, Any], *, limits: Limits, now: datetime
) -> Decision:
    """What one timer run should do with this Workspace."""
    if meta.get("deletionTimestamp"):
        return Decision(Do.NOTHING, why="being deleted")
    phase = status.get("phase")
    generation = int(meta.get("generation") or 0)
    if phase in (Phase.READY.value, Phase.FAILED.value):
        expected = expected_expiry(spec, status, meta, limits)
        due = parse_time(expected)
        if due is not None and now >= due:
            return Decision(Do.EXPIRE, expected, f"past expiresAt {expected}")
        if expected != status.get("expiresAt") or status.get("observedGeneration") != generation:
            return Decision(Do.RETIME, expected, "the TTL changed")
        if phase == Phase.READY.value:
            return Decision(Do.CHECK, expected)
        return Decision(Do.NOTHING, expected)
    if status.get("readyAt") and status.get("commit"):
        # It was Ready once: its worktree was found damaged and is being rebuilt.
        return Decision(Do.CHECK, why="rebuilding a lost worktree")
    if deadline_passed(spec, meta, limits=limits, now=now):
        return Decision(Do.DEADLINE, why=f"not Ready within {active_deadline(spec, limits)}s of its creation")
    return Decision(Do.NOTHING)


def deadline_passed(spec: Mapping[str, Any], meta: Mapping[str, Any], *, limits: Limits, now: datetime) -> bool:
    """Created longer ago than its active deadline (0: no deadline)."""
    deadline = active_deadline(spec, limits)
    created = parse_time(meta.get("creationTimestamp"))
    return bool(deadline) and created is not None and (now - created).total_seconds() >= deadline
