"""status.py without a cluster: every transition's phase, conditions (Ready, Reconciling,
Stalled, kstatus-style) and timestamps, on plain dicts and a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any

import pytest

from workspace_operator import status
from workspace_operator.git import CheckoutResult

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
T1 = T0 + timedelta(seconds=30)
T2 = T0 + timedelta(seconds=90)
SHA = "a" * 40


def result(*, reused: bool = False, cache_hit: bool = True) -> CheckoutResult:
    return CheckoutResult(
        commit=SHA,
        path=PurePosixPath("ns/p/w"),
        workdir=PurePosixPath("ns/p/w"),
        cache_hit=cache_hit,
        fetched=not cache_hit,
        reused=reused,
        cache_repaired=None,
        fetch_seconds=0.5,
        checkout_seconds=0.25,
        total_seconds=1.0,
    )


def cond(patch: dict[str, Any], kind: str) -> dict[str, Any]:
    [found] = [c for c in patch["conditions"] if c["type"] == kind]
    return dict(found)


def summary(patch: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in patch["conditions"]}


def merged(previous: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """What the API server stores after a merge patch of status (None deletes a field)."""
    out = {**previous, **patch}
    return {k: v for k, v in out.items() if v is not None}


def test_progressing_is_reconciling_not_ready_not_stalled() -> None:
    patch = status.progressing(
        {},
        phase=status.Phase.MATERIALIZING,
        reason="Materializing",
        message="waiting for the project lock",
        generation=1,
        now=T0,
    )
    assert patch["phase"] == "Materializing"
    assert summary(patch) == {
        "Ready": ("False", "Materializing"),
        "Reconciling": ("True", "Materializing"),
        "Stalled": ("False", "Materializing"),
    }
    for kind in ("Ready", "Reconciling", "Stalled"):
        assert cond(patch, kind)["observedGeneration"] == 1
        assert cond(patch, kind)["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    assert patch["observedGeneration"] == 1


def test_ready_sets_times_and_clears_reconciling_and_stalled() -> None:
    before = status.progressing(
        {}, phase=status.Phase.MATERIALIZING, reason="Materializing", message="", generation=1, now=T0
    )
    patch = status.ready(
        before, result(), lock_wait_seconds=0.1234, volume_claim="vol", expires_after=3600, generation=1, now=T1
    )
    assert patch["phase"] == "Ready" and patch["commit"] == SHA and patch["shortCommit"] == SHA[:12]
    assert summary(patch) == {
        "Ready": ("True", "Materialized"),
        "Reconciling": ("False", "Materialized"),
        "Stalled": ("False", "Materialized"),
    }
    assert patch["readyAt"] == "2026-01-02T03:04:35Z"
    assert patch["expiresAt"] == "2026-01-02T04:04:35Z"
    assert patch["timings"]["lockWaitSeconds"] == 0.123 and patch["timings"]["totalSeconds"] == 1.123
    # Ready and Reconciling flipped: their transition time moves; Stalled stayed False: it keeps T0.
    assert cond(patch, "Ready")["lastTransitionTime"] == "2026-01-02T03:04:35Z"
    assert cond(patch, "Reconciling")["lastTransitionTime"] == "2026-01-02T03:04:35Z"
    assert cond(patch, "Stalled")["lastTransitionTime"] == "2026-01-02T03:04:05Z"


@pytest.mark.parametrize("expires_after", [None, 0])
def test_ready_without_ttl_has_no_expiry(expires_after: int | None) -> None:
    patch = status.ready(
        {}, result(), lock_wait_seconds=0, volume_claim="v", expires_after=expires_after, generation=1, now=T0
    )
    assert patch["expiresAt"] is None  # a merge patch with None removes a stale value


def test_repair_keeps_ready_at_so_the_ttl_still_counts_from_the_first_ready() -> None:
    first = status.ready(
        {}, result(cache_hit=False), lock_wait_seconds=0, volume_claim="v", expires_after=60, generation=1, now=T0
    )
    lost = merged(first, status.worktree_lost(first, message="gone", generation=1, now=T1))
    assert lost["phase"] == "Materializing"
    assert summary(lost)["Ready"] == ("False", "WorktreeLost")
    assert summary(lost)["Reconciling"] == ("True", "WorktreeLost")
    assert status.reason_of(lost) == "WorktreeLost"
    assert lost["readyAt"] == first["readyAt"]  # untouched by the lost patch
    again = status.ready(
        lost, result(), lock_wait_seconds=0, volume_claim="v", expires_after=60, generation=1, now=T2, repaired=True
    )
    assert again["readyAt"] == first["readyAt"] and again["expiresAt"] == first["expiresAt"]
    assert "rebuilt" in again["message"]
    assert cond(again, "Ready")["lastTransitionTime"] == status.timestamp(T2)


def test_reused_keeps_ready_at_but_a_fresh_ready_does_not() -> None:
    previous = {"readyAt": "2020-01-01T00:00:00Z"}
    reused = status.ready(
        previous, result(reused=True), lock_wait_seconds=0, volume_claim="v", expires_after=None, generation=1, now=T0
    )
    assert reused["readyAt"] == "2020-01-01T00:00:00Z"
    fresh = status.ready(
        previous, result(), lock_wait_seconds=0, volume_claim="v", expires_after=None, generation=1, now=T0
    )
    assert fresh["readyAt"] == status.timestamp(T0)


def test_retryable_failure_is_pending_and_reconciling() -> None:
    patch = status.failed(
        {}, reason="UpstreamUnavailable", message="503", retryable=True, retry_in=4.0, attempts=2, generation=1, now=T0
    )
    assert patch["phase"] == "Pending" and patch["attempts"] == 2
    assert summary(patch) == {
        "Ready": ("False", "UpstreamUnavailable"),
        "Reconciling": ("True", "UpstreamUnavailable"),
        "Stalled": ("False", "UpstreamUnavailable"),
    }
    assert "attempt 2, retrying in 4s" in patch["message"]
    assert "expiresAt" not in patch  # a Workspace still being retried never expires


def test_permanent_failure_is_failed_and_stalled_with_the_reason_and_an_expiry() -> None:
    before = status.progressing(
        {}, phase=status.Phase.MATERIALIZING, reason="Materializing", message="", generation=3, now=T0
    )
    patch = status.failed(
        before,
        reason="RefNotFound",
        message="no refs/heads/x",
        retryable=False,
        retry_in=None,
        attempts=1,
        generation=3,
        now=T1,
        expires_after=600,
    )
    assert patch["phase"] == "Failed"
    assert summary(patch) == {
        "Ready": ("False", "RefNotFound"),
        "Reconciling": ("False", "RefNotFound"),
        "Stalled": ("True", "RefNotFound"),
    }
    stalled = cond(patch, "Stalled")
    assert stalled["observedGeneration"] == 3 and stalled["lastTransitionTime"] == status.timestamp(T1)
    assert cond(patch, "Ready")["lastTransitionTime"] == status.timestamp(T0)  # was False already
    assert patch["expiresAt"] == status.timestamp(T1 + timedelta(seconds=600))
    kept = status.failed(
        before,
        reason="RefNotFound",
        message="",
        retryable=False,
        retry_in=None,
        attempts=1,
        generation=3,
        now=T1,
        expires_after=None,
    )
    assert kept["expiresAt"] is None


def test_terminating() -> None:
    ready = status.ready({}, result(), lock_wait_seconds=0, volume_claim="v", expires_after=None, generation=1, now=T0)
    patch = status.terminating(ready, generation=1, now=T1)
    assert patch["phase"] == "Terminating"
    assert summary(patch)["Ready"] == ("False", "Terminating")


def test_retimed_moves_only_expiry_and_generations() -> None:
    ready = status.ready({}, result(), lock_wait_seconds=0, volume_claim="v", expires_after=60, generation=1, now=T0)
    patch = status.retimed(ready, expires_at="2030-01-01T00:00:00Z", generation=2)
    assert set(patch) == {"expiresAt", "observedGeneration", "conditions"}
    assert patch["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in patch["conditions"])
    assert [(c["type"], c["status"], c["reason"], c["lastTransitionTime"]) for c in patch["conditions"]] == [
        (c["type"], c["status"], c["reason"], c["lastTransitionTime"]) for c in ready["conditions"]
    ]


def test_unknown_condition_types_are_kept() -> None:
    previous = {
        "conditions": [
            {
                "type": "Custom",
                "status": "True",
                "reason": "X",
                "message": "",
                "lastTransitionTime": "2020-01-01T00:00:00Z",
            }
        ]
    }
    patch = status.progressing(previous, phase=status.Phase.PENDING, reason="R", message="", generation=1, now=T0)
    assert summary(patch)["Custom"] == ("True", "X")


def test_long_messages_are_cut_in_conditions() -> None:
    patch = status.progressing({}, phase=status.Phase.PENDING, reason="R", message="x" * 5000, generation=1, now=T0)
    assert len(cond(patch, "Ready")["message"]) == 1024


@pytest.mark.parametrize(
    ("current", "generation", "settled"),
    [
        ({"phase": "Ready", "observedGeneration": 1}, 1, True),
        ({"phase": "Failed", "observedGeneration": 1}, 1, True),
        ({"phase": "Ready", "observedGeneration": 1}, 2, False),  # the TTL changed while the operator was away
        ({"phase": "Pending", "observedGeneration": 1}, 1, False),
        ({}, 1, False),
    ],
)
def test_is_settled(current: dict[str, Any], generation: int, settled: bool) -> None:
    assert status.is_settled(current, generation) is settled


def test_one_backoff_policy() -> None:
    assert [status.retry_delay(n, base=0.5, cap=4) for n in range(1, 7)] == [0.5, 1, 2, 4, 4, 4]
    assert status.retry_delay(0) == 2.0
    assert status.retry_delay(20) == 300.0


def test_time_helpers() -> None:
    assert status.parse_time("2026-01-02T03:04:05Z") == T0
    assert status.parse_time(None) is None and status.parse_time("garbage") is None
    assert status.expiry("2026-01-02T03:04:05Z", 55) == "2026-01-02T03:05:00Z"
    assert status.expiry("2026-01-02T03:04:05Z", 0) is None and status.expiry(None, 5) is None
