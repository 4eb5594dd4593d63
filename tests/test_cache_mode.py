"""Cache-only Workspaces end to end: the operator pins the commit in the cache and writes no worktree."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

from cluster import OperatorProcess, Workspaces, wait_for
from upstreams import SmartHTTP, StandardRepo

pytestmark = pytest.mark.cluster

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
StartOperator = Callable[..., OperatorProcess]


def pinned(cache_dir: object, name: str) -> str | None:
    result = subprocess.run(
        ["git", "-C", str(cache_dir), "rev-parse", "--verify", "-q", f"refs/workspaces/{name}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stdout.strip() or None


def test_cache_only_pins_the_commit_and_reports_the_cache(
    kubectl: Kubectl,
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    smart_http: SmartHTTP,
) -> None:
    op = operator_factory()
    url = smart_http.url("repo")
    workspaces.create(
        "pinned", {"project": "p", "repository": url, "mode": "CacheOnly", "ref": {"tag": "v1.0"}, "tags": True}
    )
    status = workspaces.wait_ready("pinned")
    assert status["commit"] == upstream_repo.v1_0
    assert status["cachePath"] == f"{namespace}/p/.cache"
    assert "path" not in status and "workdir" not in status
    assert "pinned in the cache" in status["message"]
    project = op.root / namespace / "p"
    assert sorted(entry.name for entry in project.iterdir()) == [".cache"], "a worktree was written"
    cache = op.root / status["cachePath"]
    assert pinned(cache, "pinned") == upstream_repo.v1_0
    tags = subprocess.run(["git", "-C", str(cache), "tag", "--list"], capture_output=True, text=True).stdout.split()
    assert tags == ["v1.0", "v1.1"]  # spec.tags: every upstream tag

    # A Worktree Workspace reports the cache too (a job may check it out just the same).
    workspaces.create("tree", {"project": "p", "repository": url})
    tree = workspaces.wait_ready("tree")
    assert tree["cachePath"] == status["cachePath"] and tree["path"] == f"{namespace}/p/tree"
    assert pinned(cache, "tree") is None

    table = kubectl("get", "ws", "-n", namespace).stdout.splitlines()
    header = table[0].split()
    assert header[:6] == ["NAME", "PROJECT", "REF", "COMMIT", "PHASE", "MODE"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert "CacheOnly" in rows["pinned"] and "Worktree" in rows["tree"]

    patched = kubectl(
        "patch",
        "ws",
        "pinned",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"mode": "Worktree"}}),
        check=False,
    )
    assert patched.returncode != 0 and "spec is immutable" in patched.stderr
    bad = kubectl(
        "apply",
        "-f",
        "-",
        check=False,
        input=json.dumps(
            {
                "apiVersion": "crafting.dev/v1",
                "kind": "Workspace",
                "metadata": {"name": "bad", "namespace": namespace},
                "spec": {"project": "p", "repository": url, "mode": "Clone"},
            }
        ),
    )
    assert bad.returncode != 0 and "Unsupported value" in bad.stderr

    workspaces.delete("pinned")
    workspaces.wait_gone("pinned")
    assert pinned(cache, "pinned") is None
    events = kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=pinned", "-o", "json"
    ).stdout
    assert "worktree or pin removed" in events


def test_cache_only_resume_after_restart_touches_nothing(
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    smart_http: SmartHTTP,
) -> None:
    op = operator_factory()
    url = smart_http.url("repo")
    workspaces.create("w", {"project": "p", "repository": url, "mode": "CacheOnly"})
    first = workspaces.wait_ready("w")
    op.stop()
    requests = len(smart_http.requests())
    version = workspaces.get("w")["metadata"]["resourceVersion"]  # type: ignore[index]
    operator_factory()
    workspaces.create(
        "probe", {"project": "p", "repository": url, "mode": "CacheOnly", "ref": {"commit": first["commit"]}}
    )
    assert workspaces.wait_ready("probe")["cache"] == {"hit": True, "fetched": False}
    assert workspaces.get("w")["metadata"]["resourceVersion"] == version  # type: ignore[index]
    assert len(smart_http.requests()) == requests
    wait_for(lambda: workspaces.status("w") == first, timeout=5, message="status unchanged")
