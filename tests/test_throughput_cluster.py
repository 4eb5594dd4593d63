"""Bursts end to end: one operator, real API server, a counting loopback git daemon."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cluster import OperatorProcess, Workspaces
from upstreams import GitDaemon, StandardRepo

pytestmark = pytest.mark.cluster
StartOperator = Callable[..., OperatorProcess]


def create_together(workspaces: Workspaces, specs: dict[str, dict[str, object]]) -> None:
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda item: workspaces.create(*item), specs.items()))


def test_burst_of_one_branch_asks_upstream_at_most_twice(
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    git_daemon: GitDaemon,
) -> None:
    op = operator_factory(env={"WORKSPACE_CHECKOUT_CONCURRENCY": "4"})
    url = git_daemon.url("repo")
    names = [f"ci-{i}" for i in range(20)]
    create_together(
        workspaces, {name: {"project": "matrix", "repository": url, "ref": {"branch": "main"}} for name in names}
    )
    for name in names:
        assert workspaces.wait_ready(name, timeout=120)["commit"] == upstream_repo.main
    assert git_daemon.count() <= 2, git_daemon.requests()
    for name in names[::5]:
        assert (op.root / namespace / "matrix" / name / "README.md").is_file()
        assert (op.root / namespace / "matrix" / ".ready" / name).is_file()


def test_deleting_a_burst_removes_every_worktree(
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    git_daemon: GitDaemon,
) -> None:
    op = operator_factory()
    url = git_daemon.url("repo")
    names = [f"job-{i}" for i in range(10)]
    create_together(
        workspaces, {name: {"project": "jobs", "repository": url, "ref": {"tag": "v1.0"}} for name in names}
    )
    for name in names:
        workspaces.wait_ready(name, timeout=120)
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(workspaces.delete, names))
    for name in names:
        workspaces.wait_gone(name, timeout=120)
    project: Path = op.root / namespace / "jobs"
    assert sorted(p.name for p in project.iterdir() if not p.name.startswith(".")) == []
    assert sorted(p.name for p in (project / ".cache" / "worktrees").glob("*")) == []
