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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient, CoreV1Api

from cluster import OperatorProcess, Workspaces, wait_for
from upstreams import SmartHTTP, StandardRepo, commit

pytestmark = pytest.mark.cluster

StartOperator = Callable[..., OperatorProcess]
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
    how: str,
    api_client: ApiClient,
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    smart_http: SmartHTTP,
) -> None:
    op = operator_factory(env=TIMERS)
    workspaces.create("heal", {"project": "p", "repository": smart_http.url("repo"), "ref": {"branch": "main"}})
    first = workspaces.wait_ready("heal")
    worktree = op.root / first["path"]
    record = op.root / namespace / "p" / ".ready" / "heal"
    # The branch moves on: a rebuild from the spec would give another commit.
    commit(upstream_repo.src, {"LATER.txt": "later\n"}, "later")
    upstream_repo.republish()
    wait_for(lambda: reconciles(op) >= 1, timeout=30, message="a first timer check")

    damaged_at = time.time()
    damage(how, worktree, record)
    current = rebuilt(workspaces, op, "heal", first)
    assert head(worktree) == first["commit"] == current["commit"]
    assert (worktree / "README.md").is_file() and not (worktree / "LATER.txt").exists()
    assert json.loads(record.read_text())["commit"] == first["commit"]
    assert current["readyAt"] == first["readyAt"] and current["expiresAt"] == first["expiresAt"]
    conditions = {c["type"]: c for c in current["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("True", "Materialized")
    assert conditions["Reconciling"]["status"] == "False" and conditions["Stalled"]["status"] == "False"

    lost = [e for e in events(api_client, namespace, "heal") if e.reason == "WorktreeLost"]
    assert len(lost) == 1 and lost[0].type == "Warning"
    # Noticed within two timer intervals of the damage (Event times have 1 s resolution).
    noticed = (lost[0].event_time or lost[0].first_timestamp or lost[0].last_timestamp).timestamp()
    assert noticed - damaged_at <= 2 * INTERVAL + 1, noticed - damaged_at
    assert reasons(api_client, namespace, "heal").count("Repaired") == 1
    assert "repaired" in op.metrics()
    assert smart_http.count() == 1, "a rebuild at a cached commit needs no fetch"


def test_lost_worktree_is_rebuilt_on_restart_by_the_resume_check(
    api_client: ApiClient,
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    smart_http: SmartHTTP,
) -> None:
    # Timers far away: only the resume check can notice.
    slow = {"WORKSPACE_RECONCILE_INTERVAL_SECONDS": "3600", "WORKSPACE_RECONCILE_JITTER_SECONDS": "3600"}
    op = operator_factory(env=slow)
    workspaces.create("kept", {"project": "p", "repository": smart_http.url("repo")})
    workspaces.create("lost", {"project": "p", "repository": smart_http.url("repo")})
    kept, first = workspaces.wait_ready("kept"), workspaces.wait_ready("lost")
    kept_version = workspaces.get("kept")["metadata"]["resourceVersion"]  # type: ignore[index]
    op.stop()
    shutil.rmtree(op.root / first["path"])

    op = operator_factory(env=slow)
    current = rebuilt(workspaces, op, "lost", first)
    assert head(op.root / first["path"]) == first["commit"]
    assert current["readyAt"] == first["readyAt"]
    assert reconciles(op) == 0, "the timer ran: this test would not prove the resume check"
    # The intact one was checked on disk and left alone: not a single write.
    assert workspaces.status("kept") == kept
    assert workspaces.get("kept")["metadata"]["resourceVersion"] == kept_version  # type: ignore[index]


def test_intact_workspaces_cost_no_api_writes(
    api_client: ApiClient,
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    smart_http: SmartHTTP,
) -> None:
    op = operator_factory(env={"WORKSPACE_RECONCILE_INTERVAL_SECONDS": "1", "WORKSPACE_RECONCILE_JITTER_SECONDS": "1"})
    names = [f"idle-{i}" for i in range(10)]
    for name in names:
        workspaces.create(
            name, {"project": "p", "repository": smart_http.url("repo"), "ref": {"commit": upstream_repo.main}}
        )
    for name in names:
        workspaces.wait_ready(name, timeout=120)
    versions = {name: workspaces.get(name)["metadata"]["resourceVersion"] for name in names}  # type: ignore[index]
    before_events = len(CoreV1Api(api_client).list_namespaced_event(namespace).items)
    checks = reconciles(op)
    # Every Workspace's timer runs at least three more times.
    wait_for(lambda: reconciles(op) >= checks + 3 * len(names), timeout=60, message="30 more timer checks")
    after = {name: workspaces.get(name)["metadata"]["resourceVersion"] for name in names}  # type: ignore[index]
    assert after == versions
    assert len(CoreV1Api(api_client).list_namespaced_event(namespace).items) == before_events
    assert reconciles(op, "retime") == reconciles(op, "expire") == reconciles(op, "deadline") == 0
    assert smart_http.count() == 1
    assert "Timer 'reconcile'" not in op.log(), "a log line per Workspace per timer run"
