"""What status to write: pure functions from outcomes to status patches.

Kept free of I/O so every transition can be unit-tested without a cluster. The
`Ready` condition follows Kubernetes conventions: always present once the object
was seen, lastTransitionTime moves only when its status flips, observedGeneration
says which spec it describes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from workspace_operator.git import CheckoutResult

Patch = dict[str, Any]


class Phase(StrEnum):
    PENDING = "Pending"
    MATERIALIZING = "Materializing"
    READY = "Ready"
    FAILED = "Failed"
    TERMINATING = "Terminating"


def timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_condition(
    previous: Sequence[Mapping[str, Any]] | None,
    *,
    status: str,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """The conditions list with Ready set; other condition types are kept as they were."""
    others = [dict(c) for c in (previous or []) if c.get("type") != "Ready"]
    old = next((c for c in (previous or []) if c.get("type") == "Ready"), None)
    transitioned = old is None or old.get("status") != status
    condition = {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message[:1024],
        "observedGeneration": generation,
        "lastTransitionTime": timestamp(now) if transitioned or old is None else old.get("lastTransitionTime"),
    }
    return [condition, *others]


def progressing(previous: Mapping[str, Any], *, phase: Phase, reason: str, message: str, generation: int,
                now: datetime) -> Patch:
    return {
        "phase": phase.value,
        "message": message,
        "observedGeneration": generation,
        "conditions": ready_condition(previous.get("conditions"), status="False", reason=reason,
                                      message=message, generation=generation, now=now),
    }


def ready(
    previous: Mapping[str, Any],
    result: CheckoutResult,
    *,
    lock_wait_seconds: float,
    volume_claim: str,
    ttl_seconds: int,
    generation: int,
    now: datetime,
) -> Patch:
    expires = timestamp(now + timedelta(seconds=ttl_seconds)) if ttl_seconds > 0 else None
    how = "reused" if result.reused else ("from cache" if result.cache_hit else "after fetch")
    where = f"worktree at {result.path}" if result.path is not None else f"pinned in the cache at {result.cache_path}"
    message = f"{where} ({result.commit[:12]}, {how})"
    return {
        "phase": Phase.READY.value,
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
        "readyAt": previous.get("readyAt") if result.reused and previous.get("readyAt") else timestamp(now),
        "expiresAt": expires,
        "message": message,
        "observedGeneration": generation,
        "conditions": ready_condition(previous.get("conditions"), status="True", reason="Materialized",
                                      message=message, generation=generation, now=now),
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
) -> Patch:
    """Ready=False with a precise reason; permanent failures end in phase Failed."""
    if retryable:
        shown = f"{message} (attempt {attempts}, retrying in {retry_in:.0f}s)" if retry_in else message
        phase = Phase.PENDING
    else:
        shown, phase = message, Phase.FAILED
    patch = progressing(previous, phase=phase, reason=reason, message=shown, generation=generation, now=now)
    patch["attempts"] = attempts
    return patch


def is_settled(status: Mapping[str, Any], generation: int) -> bool:
    """Ready or permanently Failed for this generation: a restart need not redo anything."""
    return status.get("phase") in (Phase.READY.value, Phase.FAILED.value) and \
        status.get("observedGeneration") == generation


def retry_delay(attempt: int, *, base: float = 2.0, cap: float = 300.0) -> float:
    """Exponential backoff for retryable failures: 2, 4, 8, ... capped at 5 minutes."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))
