"""Self-healing worktrees: the per-Workspace timer and the resume check, end to end.

A Ready Workspace's worktree is damaged on the volume (directory removed, completion
record corrupted, gitdir link broken) and the operator rebuilds it at the commit its
status reports — not at what the branch points to now — without changing readyAt,
with Ready=False/WorktreeLost in between and Events saying so. Intact Workspaces
cost no API writes however often their timer runs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient, CoreV1Api

from cluster import OperatorProcess, Scene, Workspaces, wait_for
from upstreams import commit

pytestmark = pytest.mark.cluster

INTERVAL = 2.0
TIMERS = {"WORKSPACE_RECONCILE_INTERVAL_SECONDS": str(INTERVAL), "WORKSPACE_RECONCILE_JITTER_SECONDS": "0"}


def reconciles(op: OperatorProcess, decision: str = "check") -> float:
    found = re.search(rf'^workspace_operator_reconcile_total{{decision="{decision}"}} (\S+)$', op.metrics(), re.M)
    return float(found.group(1)) if found else 0.0


def head(path: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30
    ).stdout.strip()


def events(api_client: ApiClient, namespace: str, name: str) -> list[Any]:
    listing = CoreV1Api(api_client).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
    return list(listing.items)


def reasons(api_client: ApiClient, namespace: str, name: str) -> list[str]:
    return [str(e.reason) for e in events(api_client, namespace, name)]


def rebuilt(workspaces: Workspaces, op: OperatorProcess, name: str, first: dict[str, Any]) -> dict[str, Any]:
    """Ready again, the worktree intact at the first commit; returns the status."""

    def done() -> dict[str, Any] | None:
        current = workspaces.status(name)
        record = op.root / first["path"].rsplit("/", 1)[0] / ".ready" / name
        if current.get("phase") != "Ready" or "rebuilt" not in current.get("message", "") or not record.is_file():
            return None
        return current

    return wait_for(done, timeout=60, message=f"{name} rebuilt (status: {workspaces.status(name)})")


def damage(how: str, worktree: Path, record: Path) -> None:
    if how == "directory removed":
        shutil.rmtree(worktree)
    elif how == "record corrupted":
        record.write_text("{not json")
    elif how == "gitdir link broken":
        (worktree / ".git").write_text("gitdir: /nonexistent/worktrees/x\n")


@pytest.mark.parametrize("how", ["directory removed", "record corrupted", "gitdir link broken"])
def test_damaged_worktree_is_rebuilt_by_the_timer_at_the_same_commit(
    scene: Scene, how: str, api_client: ApiClient
) -> None:
    op = scene.start(env=TIMERS)
    scene.workspaces.create("heal", {**scene.spec(), "ref": {"branch": "main"}})
    first = scene.workspaces.wait_ready("heal")
    worktree = op.root / first["path"]
    record = op.root / scene.namespace / "p" / ".ready" / "heal"
    # The branch moves on: a rebuild from the spec would give another commit.
    commit(scene.repo.src, {"LATER.txt": "later\n"}, "later")
    scene.repo.republish()
    wait_for(lambda: reconciles(op) >= 1, timeout=30, message="a first timer check")

    damaged_at = time.time()
    damage(how, worktree, record)
    current = rebuilt(scene.workspaces, op, "heal", first)
    assert head(worktree) == first["commit"] == current["commit"]
    assert (worktree / "README.md").is_file() and not (worktree / "LATER.txt").exists()
    assert json.loads(record.read_text())["commit"] == first["commit"]
    assert current["readyAt"] == first["readyAt"] and current["expiresAt"] == first["expiresAt"]
    conditions = {c["type"]: c for c in current["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("True", "Materialized")
    assert conditions["Reconciling"]["status"] == "False" and conditions["Stalled"]["status"] == "False"

    lost = [e for e in events(api_client, scene.namespace, "heal") if e.reason == "WorktreeLost"]
    assert len(lost) == 1 and lost[0].type == "Warning"
    # Noticed within two timer intervals of the damage (Event times have 1 s resolution).
    noticed = (lost[0].event_time or lost[0].first_timestamp or lost[0].last_timestamp).timestamp()
    assert noticed - damaged_at <= 2 * INTERVAL + 1, noticed - damaged_at
    assert reasons(api_client, scene.namespace, "heal").count("Repaired") == 1
    assert "repaired" in op.metrics()
    assert scene.http.count() == 1, "a rebuild at a cached commit needs no fetch"


def test_lost_worktree_is_rebuilt_on_restart_by_the_resume_check(scene: Scene, api_client: ApiClient) -> None:
    # Timers far away: only the resume check can notice.
    slow = {"WORKSPACE_RECONCILE_INTERVAL_SECONDS": "3600", "WORKSPACE_RECONCILE_JITTER_SECONDS": "3600"}
    op = scene.start(env=slow)
    scene.workspaces.create("kept", scene.spec())
    scene.workspaces.create("lost", scene.spec())
    kept, first = scene.workspaces.wait_ready("kept"), scene.workspaces.wait_ready("lost")
    kept_version = scene.workspaces.get("kept")["metadata"]["resourceVersion"]  # type: ignore[index]
    op.stop()
    shutil.rmtree(op.root / first["path"])

    op = scene.start(env=slow)
    current = rebuilt(scene.workspaces, op, "lost", first)
    assert head(op.root / first["path"]) == first["commit"]
    assert current["readyAt"] == first["readyAt"]
    assert reconciles(op) == 0, "the timer ran: this test would not prove the resume check"
    # The intact one was checked on disk and left alone: not a single write.
    assert scene.workspaces.status("kept") == kept
    assert scene.workspaces.get("kept")["metadata"]["resourceVersion"] == kept_version  # type: ignore[index]


def test_intact_workspaces_cost_no_api_writes(scene: Scene, api_client: ApiClient) -> None:
    op = scene.start(env={"WORKSPACE_RECONCILE_INTERVAL_SECONDS": "1", "WORKSPACE_RECONCILE_JITTER_SECONDS": "1"})
    names = [f"idle-{i}" for i in range(10)]
    for name in names:
        scene.workspaces.create(name, {**scene.spec(), "ref": {"commit": scene.repo.main}})
    for name in names:
        scene.workspaces.wait_ready(name, timeout=120)
    versions = {name: scene.workspaces.get(name)["metadata"]["resourceVersion"] for name in names}  # type: ignore[index]
    before_events = len(CoreV1Api(api_client).list_namespaced_event(scene.namespace).items)
    checks = reconciles(op)
    # Every Workspace's timer runs at least three more times.
    wait_for(lambda: reconciles(op) >= checks + 3 * len(names), timeout=60, message="30 more timer checks")
    after = {name: scene.workspaces.get(name)["metadata"]["resourceVersion"] for name in names}  # type: ignore[index]
    assert after == versions
    assert len(CoreV1Api(api_client).list_namespaced_event(scene.namespace).items) == before_events
    assert reconciles(op, "retime") == reconciles(op, "expire") == reconciles(op, "deadline") == 0
    assert scene.http.count() == 1
    assert "Timer 'reconcile'" not in op.log(), "a log line per Workspace per timer run"
