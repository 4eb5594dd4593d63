"""A Workspace's life, Job-like, end to end: owners and Kubernetes' garbage collector, a
TTL changed after creation, Failed ones expiring, the deadline, kstatus conditions that
`kubectl wait` understands, one Event per reason, and the per-namespace quota."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from kubernetes.client import ApiClient, BatchV1Api, CoreV1Api, V1DeleteOptions

from cluster import OperatorProcess, Scene, wait_events, wait_for

pytestmark = pytest.mark.cluster

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
TIMERS = {"WORKSPACE_RECONCILE_INTERVAL_SECONDS": "1", "WORKSPACE_RECONCILE_JITTER_SECONDS": "0"}


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or []}


def reconciles(op: OperatorProcess, decision: str) -> float:
    found = re.search(rf'^workspace_operator_reconcile_total{{decision="{decision}"}} (\S+)$', op.metrics(), re.M)
    return float(found.group(1)) if found else 0.0


def wait_timer_runs(op: OperatorProcess, decision: str, count: int) -> None:
    target = reconciles(op, decision) + count
    wait_for(lambda: reconciles(op, decision) >= target, timeout=60, message=f"{count} timer runs ({decision})")


def event_reasons(api_client: ApiClient, namespace: str, name: str) -> list[str]:
    items = CoreV1Api(api_client).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return [str(e.reason) for e in items]


def patch_spec(
    kubectl: Kubectl, namespace: str, name: str, fields: dict[str, Any], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`kubectl patch` of a Workspace's spec, as a user would change its TTL."""
    patch = json.dumps({"spec": fields})
    result: subprocess.CompletedProcess[str] = kubectl(
        "patch", "ws", name, "-n", namespace, "--type=merge", "-p", patch, check=check
    )
    return result


def test_workspace_owned_by_a_job_lives_as_long_as_the_job(scene: Scene, api_client: ApiClient) -> None:
    op = scene.start(env={**TIMERS, "WORKSPACE_DEFAULT_TTL_SECONDS": "1"})
    batch = BatchV1Api(api_client)
    job: Any = {
        "metadata": {"name": "ci-build"},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "build", "image": "busybox", "command": ["true"]}],
                }
            }
        },
    }
    uid = batch.create_namespaced_job(scene.namespace, job).metadata.uid  # type: ignore[union-attr]
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": "ci-build", "uid": uid}
    scene.workspaces.api.create_namespaced_custom_object(
        "crafting.dev",
        "v1",
        scene.namespace,
        "workspaces",
        {
            "apiVersion": "crafting.dev/v1",
            "kind": "Workspace",
            "metadata": {"name": "owned", "ownerReferences": [owner]},
            "spec": scene.spec(),
        },
    )
    scene.workspaces.create("unowned", scene.spec())
    status = scene.workspaces.wait_ready("owned")
    assert "expiresAt" not in status
    worktree = op.root / status["path"]
    scene.workspaces.wait_gone("unowned", timeout=60)  # the 1 s default TTL applies to the other one
    wait_timer_runs(op, "check", 5)
    assert scene.workspaces.status("owned")["phase"] == "Ready" and worktree.is_dir()

    batch.delete_namespaced_job("ci-build", scene.namespace, body=V1DeleteOptions(propagation_policy="Background"))
    scene.workspaces.wait_gone("owned", timeout=90)  # Kubernetes' garbage collector, then our finalizer
    assert not worktree.exists()
    assert not (op.root / scene.namespace / "p" / ".ready" / "owned").exists()


def test_ttl_extended_after_creation_is_honoured(scene: Scene, kubectl: Kubectl) -> None:
    op = scene.start(env={**TIMERS, "WORKSPACE_DEFAULT_TTL_SECONDS": "6"})
    scene.workspaces.create("keep", scene.spec())
    first = scene.workspaces.wait_ready("keep")
    assert (parse(first["expiresAt"]) - parse(first["readyAt"])).total_seconds() == 6
    patch_spec(kubectl, scene.namespace, "keep", {"ttlSecondsAfterReady": 3600})
    retimed = wait_for(
        lambda: (s := scene.workspaces.status("keep")).get("observedGeneration") == 2 and s,
        message="expiresAt recomputed for generation 2",
    )
    assert (parse(retimed["expiresAt"]) - parse(first["readyAt"])).total_seconds() == 3600
    assert retimed["readyAt"] == first["readyAt"] and retimed["phase"] == "Ready"
    assert all(c["observedGeneration"] == 2 for c in retimed["conditions"])
    # Well past the original 6 s, it is still there.
    wait_for(
        lambda: datetime.now(parse(first["expiresAt"]).tzinfo) > parse(first["expiresAt"]),
        timeout=30,
        message="the original expiry passes",
    )
    wait_timer_runs(op, "check", 3)
    assert scene.workspaces.get("keep") is not None

    # Shortened again, it goes: the TTL is the one in the spec now.
    patch_spec(kubectl, scene.namespace, "keep", {"ttlSecondsAfterReady": 1})
    scene.workspaces.wait_gone("keep", timeout=60)
    assert not (op.root / first["path"]).exists()

    # Everything else in the spec stays immutable.
    scene.workspaces.create("fixed", {"project": "p", "repository": "https://example.com/r.git"})
    for patch in (
        {"ref": {"branch": "other"}},
        {"subPath": "x"},
        {"activeDeadlineSeconds": 5},
        {"repository": "https://example.com/other.git"},
        {"submodules": True},
    ):
        result = patch_spec(kubectl, scene.namespace, "fixed", patch, check=False)
        assert result.returncode != 0 and "spec is immutable" in result.stderr, (patch, result.stderr)


def test_ttl_zero_is_capped_to_the_default_unless_allowed(scene: Scene) -> None:
    scene.start(env={**TIMERS, "WORKSPACE_DEFAULT_TTL_SECONDS": "3600"})
    scene.workspaces.create("forever", {**scene.spec(), "ttlSecondsAfterReady": 0})
    status = scene.workspaces.wait_ready("forever")
    assert (parse(status["expiresAt"]) - parse(status["readyAt"])).total_seconds() == 3600


def test_stalled_on_a_permanent_failure_and_kubectl_wait_returns(scene: Scene, kubectl: Kubectl) -> None:
    scene.start(env={**TIMERS, "WORKSPACE_FAILED_TTL_SECONDS": "3600"})
    scene.workspaces.create("doomed", {**scene.spec(), "ref": {"branch": "does-not-exist"}})
    kubectl("wait", "--for=condition=Stalled", "-n", scene.namespace, "ws/doomed", "--timeout=60s", timeout=90)
    status = scene.workspaces.status("doomed")
    found = conditions(status)
    assert (found["Stalled"]["status"], found["Stalled"]["reason"]) == ("True", "RefNotFound")
    assert (found["Ready"]["status"], found["Ready"]["reason"]) == ("False", "RefNotFound")
    assert found["Reconciling"]["status"] == "False"
    assert all(c["observedGeneration"] == 1 for c in found.values())
    assert status["phase"] == "Failed" and status["attempts"] == 1
    assert (parse(status["expiresAt"]) - parse(found["Stalled"]["lastTransitionTime"])).total_seconds() == 3600
    table = kubectl("get", "ws", "-n", scene.namespace).stdout.splitlines()
    assert table[0].split()[5:9] == ["MODE", "READY", "REASON", "AGE"], table[0]
    assert table[1].split()[-5:-1] == ["Failed", "Worktree", "False", "RefNotFound"], table[1]  # COMMIT is empty


def test_failed_workspace_expires(scene: Scene, kubectl: Kubectl) -> None:
    scene.start(env={**TIMERS, "WORKSPACE_FAILED_TTL_SECONDS": "2"})
    scene.workspaces.create("bad", {**scene.spec(), "ref": {"branch": "nope"}})
    failed = scene.workspaces.wait_reason("bad", "RefNotFound")
    assert failed["status"] == "False"
    scene.workspaces.wait_gone("bad", timeout=60)
    wait_events(kubectl, scene.namespace, "bad", "Expired")


def test_deadline_exceeded_fails_and_stalls(scene: Scene, api_client: ApiClient) -> None:
    scene.start(env=TIMERS)
    scene.http.fault = "500"  # never Ready
    scene.workspaces.create("late", {**scene.spec(), "activeDeadlineSeconds": 4})
    scene.workspaces.wait_reason("late", "UpstreamUnavailable")
    condition = scene.workspaces.wait_reason("late", "DeadlineExceeded", timeout=60)
    status = scene.workspaces.status("late")
    assert status["phase"] == "Failed" and conditions(status)["Stalled"]["status"] == "True"
    assert "4s" in condition["message"]
    assert "DeadlineExceeded" in event_reasons(api_client, scene.namespace, "late")
    # Given up: over a few seconds (past the 4 s retry cap) no attempt reaches the upstream.
    scene.http.fault = None
    seen = scene.http.count()
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        assert scene.http.count() == seen
        assert scene.workspaces.status("late")["phase"] == "Failed"
        time.sleep(0.5)


def test_one_event_per_reason_not_one_per_retry(scene: Scene, api_client: ApiClient) -> None:
    scene.start(env=TIMERS)
    scene.http.fault = "500"
    scene.workspaces.create("flaky", scene.spec())
    wait_for(lambda: (scene.workspaces.status("flaky").get("attempts") or 0) >= 4, timeout=90, message="4 attempts")
    scene.http.fault = None
    assert scene.workspaces.wait_ready("flaky", timeout=60)["commit"] == scene.repo.main

    # kopf posts the handler's Event just after the handler returned.
    def materialized() -> list[str] | None:
        reasons = event_reasons(api_client, scene.namespace, "flaky")
        return reasons if "Materialized" in reasons else None

    found = wait_for(materialized, message="the Materialized Event")
    assert found.count("UpstreamUnavailable") == 1, found
    assert found.count("Materialized") == 1, found


def test_namespace_quota_keeps_the_excess_pending_then_admits_it(scene: Scene, api_client: ApiClient) -> None:
    op = scene.start(env={**TIMERS, "WORKSPACE_MAX_WORKSPACES_PER_NAMESPACE": "2"})
    spec = {**scene.spec(), "ref": {"commit": scene.repo.main}}
    scene.workspaces.create("q1", spec)
    scene.workspaces.create("q2", {**spec, "project": "other"})  # the limit is per namespace, across projects
    scene.workspaces.wait_ready("q1")
    scene.workspaces.wait_ready("q2")
    scene.workspaces.create("q3", spec)
    condition = scene.workspaces.wait_reason("q3", "QuotaExceeded")
    assert "2 materialized" in condition["message"]
    wait_for(lambda: (scene.workspaces.status("q3").get("attempts") or 0) >= 3, timeout=60, message="3 attempts")
    status = scene.workspaces.status("q3")
    assert status["phase"] == "Pending"
    assert conditions(status)["Reconciling"]["status"] == "True"
    assert conditions(status)["Stalled"]["status"] == "False"
    assert not (op.root / scene.namespace / "p" / "q3").exists()
    assert event_reasons(api_client, scene.namespace, "q3").count("QuotaExceeded") == 1
    # The quota bounds worktrees: a CacheOnly Workspace writes none, so a full namespace
    # does not hold it back, and it takes no place from the worktree waiting (below).
    assert scene.workspaces.create("pinned", {**spec, "mode": "CacheOnly"})
    assert scene.workspaces.wait_ready("pinned")["commit"] == scene.repo.main

    scene.workspaces.delete("q1")
    scene.workspaces.wait_gone("q1")
    assert scene.workspaces.wait_ready("q3", timeout=60)["commit"] == scene.repo.main
