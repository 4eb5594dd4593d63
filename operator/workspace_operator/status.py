"""What status to write: pure functions from outcomes to status patches.

Kept free of I/O so every transition can be unit-tested without a cluster.
Conditions follow Kubernetes conventions and kstatus (the status model of
Flux, kpt and cli-utils):

* `Ready`: True once the worktree is complete, False with a reason otherwise;
* `Reconciling`: True while the operator works on it (materializing, retrying,
  rebuilding a lost worktree);
* `Stalled`: True when it gave up (a permanent failure), reason = the failure.

All three are always present once the object was seen; lastTransitionTime moves
only when a condition's status flips; observedGeneration says which spec it
describes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from workspace_operator.git import CheckoutResult

Patch = dict[str, Any]

READY, RECONCILING, STALLED = "Ready", "Reconciling", "Stalled"
WORKTREE_LOST = "WorktreeLost"
DEADLINE_EXCEEDED = "DeadlineExceeded"
QUOTA_EXCEEDED = "QuotaExceeded"


class Phase(StrEnum):
    PENDING = "Pending"
    MATERIALIZING = "Materializing"
    READY = "Ready"
    FAILED = "Failed"
    TERMINATING = "Terminating"


@dataclass(frozen=True)
class Condition:
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str = ""


def timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


def condition_of(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in status.get("conditions") or () if c.get("type") == kind), None)


def reason_of(status: Mapping[str, Any]) -> str | None:
    """The Ready condition's reason: what the Workspace is waiting for or failed of."""
    ready = condition_of(status, READY)
    return str(ready["reason"]) if ready and ready.get("reason") else None


def conditions(
    previous: Sequence[Mapping[str, Any]] | None, updates: Mapping[str, Condition], *, generation: int, now: datetime
) -> list[dict[str, Any]]:
    """The conditions list with `updates` applied; other types are kept as they were."""
    old = {c.get("type"): c for c in previous or ()}
    result: list[dict[str, Any]] = []
    for kind, new in updates.items():
        before = old.get(kind)
        transitioned = before is None or before.get("status") != new.status
        result.append(
            {
                "type": kind,
                "status": new.status,
                "reason": new.reason,
                "message": new.message[:1024],
                "observedGeneration": generation,
                "lastTransitionTime": timestamp(now)
                if transitioned or before is None
                else before.get("lastTransitionTime"),
            }
        )
    return result + [dict(c) for kind, c in old.items() if kind not in updates]


def _patch(
    previous: Mapping[str, Any],
    phase: Phase,
    message: str,
    *,
    generation: int,
    now: datetime,
    ready: Condition,
    reconciling: Condition,
    stalled: Condition,
) -> Patch:
    return {
        "phase": phase.value,
        "message": message,
        "observedGeneration": generation,
        "conditions": conditions(
            previous.get("conditions"),
            {READY: ready, RECONCILING: reconciling, STALLED: stalled},
            generation=generation,
            now=now,
        ),
    }


def progressing(
    previous: Mapping[str, Any], *, phase: Phase, reason: str, message: str, generation: int, now: datetime
) -> Patch:
    """Not Ready yet, being worked on (or waiting to be)."""
    return _patch(
        previous,
        phase,
        message,
        generation=generation,
        now=now,
        ready=Condition("False", reason, message),
        reconciling=Condition("True", reason, message),
        stalled=Condition("False", reason, message),
    )


def ready(
    previous: Mapping[str, Any],
    result: CheckoutResult,
    *,
    lock_wait_seconds: float,
    volume_claim: str,
    expires_after: int | None,
    generation: int,
    now: datetime,
    repaired: bool = False,
) -> Patch:
    """Ready=True. A repair keeps readyAt, so the TTL still counts from the first Ready."""
    keep = (result.reused or repaired) and previous.get("readyAt")
    ready_at = str(previous["readyAt"]) if keep else timestamp(now)
    how = (
        "rebuilt"
        if repaired
        else ("reused" if result.reused else ("from cache" if result.cache_hit else "after fetch"))
    )
    where = f"worktree at {result.path}" if result.path is not None else f"pinned in the cache at {result.cache_path}"
    message = f"{where} ({result.commit[:12]}, {how})"
    patch = _patch(
        previous,
        Phase.READY,
        message,
        generation=generation,
        now=now,
        ready=Condition("True", "Materialized", message),
        reconciling=Condition("False", "Materialized", message),
        stalled=Condition("False", "Materialized", message),
    )
    return {
        **patch,
        "commit": result.commit,
        "shortCommit": result.commit[:12],
        # A cache-only Workspace has no worktree: no path or workdir.
        "path": str(result.path) if result.path is not None else None,
        "workdir": str(result.workdir) if result.workdir is not None else None,
        "cachePath": str(result.cache_path) if result.cache_path is not None else None,
        "volumeClaim": volume_claim,
        "cache": {"hit": result.cache_hit, "fetched": result.fetched},
        "timings": {
            "lockWaitSeconds": round(lock_wait_seconds, 3),
            "fetchSeconds": round(result.fetch_seconds, 3),
            "checkoutSeconds": round(result.checkout_seconds, 3),
            "totalSeconds": round(result.total_seconds + lock_wait_seconds, 3),
        },
        "readyAt": ready_at,
        "expiresAt": expiry(ready_at, expires_after),
    }


def failed(
    previous: Mapping[str, Any],
    *,
    reason: str,
    message: str,
    retryable: bool,
    retry_in: float | None,
    attempts: int,
    generation: int,
    now: datetime,
    expires_after: int | None = None,
) -> Patch:
    """Ready=False with a precise reason. Retryable: Pending and Reconciling. Permanent:
    Failed and Stalled, deleted `expires_after` seconds from now (None: kept)."""
    if retryable:
        shown = f"{message} (attempt {attempts}, retrying in {retry_in:.0f}s)" if retry_in else message
        patch = progressing(previous, phase=Phase.PENDING, reason=reason, message=shown, generation=generation, now=now)
    else:
        patch = _patch(
            previous,
            Phase.FAILED,
            message,
            generation=generation,
            now=now,
            ready=Condition("False", reason, message),
            reconciling=Condition("False", reason, message),
            stalled=Condition("True", reason, message),
        )
        patch["expiresAt"] = expiry(timestamp(now), expires_after)
    patch["attempts"] = attempts
    return patch


def worktree_lost(previous: Mapping[str, Any], *, message: str, generation: int, now: datetime) -> Patch:
    """A Ready Workspace's worktree is damaged or gone: Ready=False while it is rebuilt."""
    return progressing(
        previous, phase=Phase.MATERIALIZING, reason=WORKTREE_LOST, message=message, generation=generation, now=now
    )


def terminating(previous: Mapping[str, Any], *, generation: int, now: datetime) -> Patch:
    message = "deletion requested: removing the worktree"
    return _patch(
        previous,
        Phase.TERMINATING,
        message,
        generation=generation,
        now=now,
        ready=Condition("False", "Terminating", message),
        reconciling=Condition("True", "Terminating", message),
        stalled=Condition("False", "Terminating", message),
    )


def retimed(previous: Mapping[str, Any], *, expires_at: str | None, generation: int) -> Patch:
    """A new expiry (the TTL was changed) acknowledged for this generation; nothing else moves."""
    return {
        "expiresAt": expires_at,
        "observedGeneration": generation,
        "conditions": [{**c, "observedGeneration": generation} for c in previous.get("conditions") or ()],
    }


def expiry(since: str | None, seconds: int | None) -> str | None:
    start = parse_time(since)
    if start is None or not seconds:
        return None
    return timestamp(start + timedelta(seconds=seconds))


def is_settled(status: Mapping[str, Any], generation: int) -> bool:
    """Ready or permanently Failed for this generation: a restart need not redo anything."""
    return (
        status.get("phase") in (Phase.READY.value, Phase.FAILED.value)
        and status.get("observedGeneration") == generation
    )


def retry_delay(attempt: int, *, base: float = 2.0, cap: float = 300.0) -> float:
    """The one backoff policy, for creation and deletion alike: base, 2×base, 4×base, ... capped."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))
