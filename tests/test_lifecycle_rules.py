"""lifecycle.decide and the namespace quota without a cluster: TTLs, the Failed TTL, the
deadline, owners, the TTL-0 policy, and admission counting on a scratch volume."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from workspace_operator.lifecycle import Decision, Do, Limits, decide, expires_after, ttl_after_ready
from workspace_operator.quota import NamespaceQuota, materialized
from workspace_operator.status import timestamp

NOW = datetime(2026, 1, 2, 12, 0, 0, tzinfo=UTC)
LIMITS = Limits(default_ttl_seconds=3600, failed_ttl_seconds=600, active_deadline_seconds=300, allow_no_ttl=False)
OWNER = [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "u-job"}]


def ago(seconds: float) -> str:
    return timestamp(NOW - timedelta(seconds=seconds))


def meta(*, created: float = 10_000, generation: int = 1, **extra: Any) -> dict[str, Any]:
    return {"creationTimestamp": ago(created), "generation": generation, "uid": "u-1", **extra}


def ready(ready_ago: float, ttl: int | None = 3600, generation: int = 1) -> dict[str, Any]:
    expires = timestamp(NOW - timedelta(seconds=ready_ago) + timedelta(seconds=ttl)) if ttl else None
    return {
        "phase": "Ready",
        "commit": "a" * 40,
        "readyAt": ago(ready_ago),
        "expiresAt": expires,
        "observedGeneration": generation,
    }


def failed(failed_ago: float, ttl: int | None = 600) -> dict[str, Any]:
    expires = timestamp(NOW - timedelta(seconds=failed_ago) + timedelta(seconds=ttl)) if ttl else None
    return {
        "phase": "Failed",
        "observedGeneration": 1,
        "expiresAt": expires,
        "conditions": [
            {"type": "Stalled", "status": "True", "reason": "RefNotFound", "lastTransitionTime": ago(failed_ago)}
        ],
    }


def run(
    spec: dict[str, Any], current: dict[str, Any], metadata: dict[str, Any] | None = None, limits: Limits = LIMITS
) -> Decision:
    return decide(spec, current, metadata or meta(), limits=limits, now=NOW)


def test_ready_within_ttl_checks_its_worktree() -> None:
    assert run({}, ready(100)).do is Do.CHECK


def test_ready_past_expiry_expires() -> None:
    decision = run({}, ready(3600))
    assert decision.do is Do.EXPIRE and "past expiresAt" in decision.why


def test_ttl_extended_after_creation_is_retimed_then_honoured() -> None:
    current = ready(3000)  # 600 s left of the 1 h default
    decision = run({"ttlSecondsAfterReady": 7200}, current, meta(generation=2))
    assert decision.do is Do.RETIME
    assert decision.expires_at == timestamp(NOW - timedelta(seconds=3000) + timedelta(seconds=7200))
    retimed = {**current, "expiresAt": decision.expires_at, "observedGeneration": 2}
    assert run({"ttlSecondsAfterReady": 7200}, retimed, meta(generation=2)).do is Do.CHECK
    # Past the old expiry, the new one holds.
    later = decide(
        {"ttlSecondsAfterReady": 7200}, retimed, meta(generation=2), limits=LIMITS, now=NOW + timedelta(seconds=1200)
    )
    assert later.do is Do.CHECK


def test_ttl_shortened_into_the_past_expires_at_once() -> None:
    assert run({"ttlSecondsAfterReady": 60}, ready(100), meta(generation=2)).do is Do.EXPIRE


def test_a_generation_bump_alone_is_acknowledged() -> None:
    # E.g. the TTL was changed and changed back while the operator was away.
    decision = run({}, ready(100), meta(generation=3))
    assert decision.do is Do.RETIME and decision.expires_at == ready(100)["expiresAt"]


@pytest.mark.parametrize(("allow", "expected"), [(False, 3600), (True, 0)])
def test_ttl_zero_only_where_allowed(allow: bool, expected: int) -> None:
    limits = replace(LIMITS, allow_no_ttl=allow)
    assert ttl_after_ready({"ttlSecondsAfterReady": 0}, limits) == expected
    assert ttl_after_ready({}, limits) == 3600
    assert ttl_after_ready({"ttlSecondsAfterReady": 5}, limits) == 5


def test_never_expiring_ready_workspace_is_only_checked() -> None:
    limits = replace(LIMITS, allow_no_ttl=True)
    assert run({"ttlSecondsAfterReady": 0}, ready(10**7, ttl=None), limits=limits).do is Do.CHECK
    # Not allowed: the default TTL applies and it is long past.
    assert run({"ttlSecondsAfterReady": 0}, ready(10**7, ttl=None)).do is Do.EXPIRE


def test_owned_workspaces_never_expire_they_live_as_long_as_their_owner() -> None:
    owned = meta(ownerReferences=OWNER)
    assert expires_after({}, owned, LIMITS) is None
    assert expires_after({}, owned, LIMITS, failed=True) is None
    assert run({}, ready(10**7, ttl=None), owned).do is Do.CHECK
    # A TTL written before the owner was added is withdrawn, not acted on.
    decision = run({}, ready(10**7), owned)
    assert decision.do is Do.RETIME and decision.expires_at is None
    assert run({}, failed(10**7, ttl=None), owned).do is Do.NOTHING


def test_failed_expires_after_the_failed_ttl() -> None:
    assert run({}, failed(100)).do is Do.NOTHING
    assert run({}, failed(600)).do is Do.EXPIRE
    kept = replace(LIMITS, failed_ttl_seconds=0)
    assert run({}, failed(10**6, ttl=None), limits=kept).do is Do.NOTHING


def test_never_ready_past_the_deadline_fails() -> None:
    pending = {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False", "reason": "LockTimeout"}]}
    assert run({}, pending, meta(created=100)).do is Do.NOTHING
    decision = run({}, pending, meta(created=300))
    assert decision.do is Do.DEADLINE and "300s" in decision.why
    assert run({"activeDeadlineSeconds": 1000}, pending, meta(created=900)).do is Do.NOTHING
    assert run({"activeDeadlineSeconds": 0}, pending, meta(created=10**7)).do is Do.NOTHING
    assert run({}, {}, meta(created=301)).do is Do.DEADLINE  # not even started


def test_a_workspace_that_was_ready_once_is_repaired_not_failed_by_the_deadline() -> None:
    rebuilding = {**ready(10**6), "phase": "Pending"}  # the rebuild hit a transient failure
    assert run({}, rebuilding, meta(created=10**7)).do is Do.CHECK


def test_being_deleted_is_left_alone() -> None:
    assert run({}, ready(10**7), meta(deletionTimestamp=ago(1))).do is Do.NOTHING


# -- namespace quota ----------------------------------------------------------------------


def record(root: Path, namespace: str, project: str, name: str) -> None:
    ready_dir = root / namespace / project / ".ready"
    ready_dir.mkdir(parents=True, exist_ok=True)
    (ready_dir / name).write_text("{}")


def test_materialized_counts_completion_records_without_following_symlinks(tmp_path: Path) -> None:
    record(tmp_path, "ns", "a", "w1")
    record(tmp_path, "ns", "b", "w2")
    (tmp_path / "ns" / "a" / ".ready" / ".w3.partial").write_text("")  # a crash mid-write: not complete
    record(tmp_path, "other", "a", "x")
    (tmp_path / "ns" / "evil").symlink_to(tmp_path / "other" / "a")  # planted: must not count x
    assert materialized(tmp_path, "ns") == {"w1", "w2"}
    assert materialized(tmp_path, "missing") == set()


def test_quota_admits_up_to_the_limit_counting_disk_and_in_flight(tmp_path: Path) -> None:
    quota = NamespaceQuota(tmp_path, 3)
    record(tmp_path, "ns", "p", "done")
    assert quota.admit("ns", "a") and quota.admit("ns", "b")
    assert not quota.admit("ns", "c")  # done + a + b
    assert quota.admit("ns", "a")  # already admitted: still in
    assert quota.admit("ns", "done")  # its own record does not count against it
    assert quota.admit("other", "c")  # namespaces are independent
    quota.release("ns", "b")
    assert quota.admit("ns", "c")
    for name in ("a", "c", "done"):
        quota.release("ns", name)
    assert quota.admit("ns", "x") and quota.admit("ns", "y") and not quota.admit("ns", "z")


def test_unlimited_quota_never_reads_the_volume(tmp_path: Path) -> None:
    quota = NamespaceQuota(tmp_path / "does-not-exist", 0)
    assert all(quota.admit("ns", f"w{i}") for i in range(100))
