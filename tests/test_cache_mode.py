"""Cache-only Workspaces end to end: the operator pins the commit in the cache and writes no worktree."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

from cluster import Scene, wait_events, wait_for
from upstreams import commit, git

pytestmark = pytest.mark.cluster

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def pinned(cache_dir: object, name: str) -> str | None:
    result = subprocess.run(
        ["git", "-C", str(cache_dir), "rev-parse", "--verify", "-q", f"refs/workspaces/{name}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stdout.strip() or None


def test_cache_only_pins_the_commit_and_reports_the_cache(scene: Scene, kubectl: Kubectl) -> None:
    op = scene.start()
    url = scene.http.url("repo")
    scene.workspaces.create(
        "pinned", {"project": "p", "repository": url, "mode": "CacheOnly", "ref": {"tag": "v1.0"}, "tags": True}
    )
    status = scene.workspaces.wait_ready("pinned")
    assert status["commit"] == scene.repo.v1_0
    assert status["cachePath"] == f"{scene.namespace}/p/.cache"
    assert "path" not in status and "workdir" not in status
    assert "pinned in the cache" in status["message"]
    project = op.root / scene.namespace / "p"
    assert sorted(entry.name for entry in project.iterdir()) == [".cache"], "a worktree was written"
    cache = op.root / status["cachePath"]
    assert pinned(cache, "pinned") == scene.repo.v1_0
    tags = subprocess.run(["git", "-C", str(cache), "tag", "--list"], capture_output=True, text=True).stdout.split()
    assert tags == ["v1.0", "v1.1"]  # spec.tags: every upstream tag

    # A Worktree Workspace reports the cache too (a job may check it out just the same).
    scene.workspaces.create("tree", {"project": "p", "repository": url})
    tree = scene.workspaces.wait_ready("tree")
    assert tree["cachePath"] == status["cachePath"] and tree["path"] == f"{scene.namespace}/p/tree"
    assert pinned(cache, "tree") is None

    table = kubectl("get", "ws", "-n", scene.namespace).stdout.splitlines()
    header = table[0].split()
    assert header[:6] == ["NAME", "PROJECT", "REF", "COMMIT", "PHASE", "MODE"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert "CacheOnly" in rows["pinned"] and "Worktree" in rows["tree"]

    patched = kubectl(
        "patch",
        "ws",
        "pinned",
        "-n",
        scene.namespace,
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
                "metadata": {"name": "bad", "namespace": scene.namespace},
                "spec": {"project": "p", "repository": url, "mode": "Clone"},
            }
        ),
    )
    assert bad.returncode != 0 and "Unsupported value" in bad.stderr

    scene.workspaces.delete("pinned")
    scene.workspaces.wait_gone("pinned")
    assert pinned(cache, "pinned") is None
    cleaned = wait_events(kubectl, scene.namespace, "pinned", "Cleaned")
    assert [e["message"] for e in cleaned] == ["worktree or pin removed"]


def test_cache_only_resume_after_restart_touches_nothing(scene: Scene) -> None:
    op = scene.start()
    url = scene.http.url("repo")
    scene.workspaces.create("w", {"project": "p", "repository": url, "mode": "CacheOnly"})
    first = scene.workspaces.wait_ready("w")
    op.stop()
    requests = len(scene.http.requests())
    version = scene.workspaces.get("w")["metadata"]["resourceVersion"]  # type: ignore[index]
    scene.start()
    scene.workspaces.create(
        "probe", {"project": "p", "repository": url, "mode": "CacheOnly", "ref": {"commit": first["commit"]}}
    )
    assert scene.workspaces.wait_ready("probe")["cache"] == {"hit": True, "fetched": False}
    assert scene.workspaces.get("w")["metadata"]["resourceVersion"] == version  # type: ignore[index]
    assert len(scene.http.requests()) == requests
    wait_for(lambda: scene.workspaces.status("w") == first, timeout=5, message="status unchanged")


def test_what_a_checkout_could_not_use_fails_for_good_in_both_modes(scene: Scene, kubectl: Kubectl) -> None:
    """Sparse patterns (git's cone mode refuses them on every attempt) are refused by the API
    server; a subPath that is no directory of the commit fails a CacheOnly Workspace for good,
    with the Worktree mode's reason, instead of a Ready for a `checkout` that cannot work."""
    url = scene.http.url("repo")
    for sparse in (["lib*"], ["!libs"], ["libs", "services/[ab]"]):
        for mode in ("CacheOnly", "Worktree"):
            body = {
                "apiVersion": "crafting.dev/v1",
                "kind": "Workspace",
                "metadata": {"name": "patterned", "namespace": scene.namespace},
                "spec": {"project": "p", "repository": url, "mode": mode, "sparse": sparse},
            }
            refused = kubectl("apply", "-f", "-", check=False, input=json.dumps(body))
            assert refused.returncode != 0 and "must be a directory, not a pattern" in refused.stderr, refused.stderr

    src = scene.repo.src
    (src / "up").symlink_to("../../..")
    git(src, "add", "up")
    commit(src, {}, "a link out")
    scene.repo.republish()
    op = scene.start()
    cases = {"missing": ("nope", "SubPathNotFound"), "file": ("README.md", "SubPathNotFound")}
    cases["link"] = ("up", "InvalidSpec")
    for mode in ("CacheOnly", "Worktree"):
        for name, (sub_path, _) in cases.items():
            scene.workspaces.create(f"{name}-{mode.lower()}", scene.spec(mode=mode, subPath=sub_path))
    for mode in ("CacheOnly", "Worktree"):
        for name, (_, reason) in cases.items():
            condition = scene.workspaces.wait_reason(f"{name}-{mode.lower()}", reason)
            status = scene.workspaces.status(f"{name}-{mode.lower()}")
            assert status["phase"] == "Failed" and status["attempts"] == 1, status
            assert ("goes through a symlink" if reason == "InvalidSpec" else "is not a directory") in condition[
                "message"
            ]
    cache = op.root / scene.namespace / "p" / ".cache"
    assert all(pinned(cache, f"{name}-cacheonly") is None for name in cases)  # nothing pinned for them
