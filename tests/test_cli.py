"""`kubectl workspace` as a job runs it: in an emulated pod, with the minimal Role, against the real operator.

The pod (tests/pod.py) sees the project's cache read-only at `<cache root>/<status.cachePath>`,
has an empty directory as its emptyDir and runs as uid 65532; its kubeconfig holds a token of
the ServiceAccount from examples/job-rbac.yaml, so the Role shipped there is what is tested.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes.client import ApiClient

from cluster import OperatorProcess, Scene, token_kubeconfig, wait_for
from pod import EmulatedPod, job_kubeconfig, job_token, ok, tree_digest
from upstreams import StandardRepo, commit, git

pytestmark = pytest.mark.cluster

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
CLI = str(Path(sys.executable).parent / "kubectl-workspace")
GC_EVERY_SECOND = {
    "WORKSPACE_GC_INTERVAL_SECONDS": "1",
    "WORKSPACE_CACHE_QUIET_SECONDS": "0",
    "WORKSPACE_ORPHAN_GRACE_SECONDS": "3600",
    "WORKSPACE_CACHE_UNUSED_SECONDS": "100000",
}


def gc_count(op: OperatorProcess, action: str) -> float:
    found = re.search(
        rf'^workspace_operator_gc_actions_total{{action="{re.escape(action)}"}} (\S+)$', op.metrics(), re.M
    )
    return float(found.group(1)) if found else 0.0


def cache_has(cache: Path, sha: str) -> bool:
    return (
        subprocess.run(
            ["git", "-C", str(cache), "cat-file", "-e", f"{sha}^{{commit}}"], capture_output=True, timeout=30
        ).returncode
        == 0
    )


def test_checkout_into_emptydir_in_a_pod(
    scene: Scene, kubectl: Kubectl, kubeconfig: Path, api_client: ApiClient, pod: EmulatedPod, tmp_path: Path
) -> None:
    op = scene.start(env=GC_EVERY_SECOND)
    url = scene.http.url("repo")
    pod.kubeconfig(
        job_kubeconfig(
            kubeconfig, job_token(kubectl, api_client, scene.namespace), scene.namespace, tmp_path / "job-kubeconfig"
        )
    )
    name = ok(
        pod.run(
            "kubectl-workspace",
            "create",
            "--generate-name",
            "job-",
            "--project",
            "p",
            "--repository",
            url,
            "--branch",
            StandardRepo.FEATURE_BRANCH,
            "--tags",
            "--ttl",
            "0",
        )
    )
    assert name.startswith("job-")
    ok(pod.run("kubectl-workspace", "wait", name, "--timeout", "60"))
    status = scene.workspaces.status(name)
    assert status["commit"] == scene.repo.feature and "path" not in status
    cache = op.root / status["cachePath"]
    # The operator's gc after the first fetch, before the job starts: afterwards nothing may change the cache.
    wait_for(lambda: gc_count(op, "gc-cache") >= 1, timeout=30, message="first gc of the cache")
    before = tree_digest(cache)

    pod.mount_cache(op.root, status["cachePath"])
    workdir = ok(pod.run("kubectl-workspace", "checkout", name, "--into", str(pod.empty_dir)))
    assert workdir == str(pod.empty_dir)
    src = pod.empty_dir
    assert src.stat().st_uid == 65532 and (src / ".git").is_dir() and (src / "README.md").stat().st_uid == 65532
    alternates = (src / ".git" / "objects" / "info" / "alternates").read_text().strip()
    assert alternates == str(pod.cache_root / status["cachePath"] / "objects")
    assert not list((src / ".git" / "objects" / "pack").glob("*.pack")), "objects were copied"
    config = (src / ".git" / "config").read_text()
    assert f"url = {url}" in config and "credential" not in config

    job = pod.sh(
        """
        set -eu
        echo changed >> README.md
        rm libs/util.py
        echo new > services/new.py
        mkdir -p node_modules/left-pad && echo 'module.exports = 1' > node_modules/left-pad/index.js
        echo node_modules/ > .gitignore
        echo "STATUS $(git status --porcelain | tr '\\n' ';')"
        echo "DESCRIBE $(git describe --always --tags)"
        echo "HEAD $(git log -1 --format=%H)"
        git diff --stat >/dev/null
        git add -A
        git -c user.name=job -c user.email=job@example.com commit -q -m "local work"
        echo "PARENT $(git log -1 --format=%P)"
        echo "OWNER $(stat -c %u node_modules/left-pad/index.js .git/index)"
        if touch "$WORKSPACE_CACHE_ROOT/CACHE_PATH/objects/probe" 2>/dev/null; then echo CACHE-WRITABLE; fi
        if git -C "$WORKSPACE_CACHE_ROOT/CACHE_PATH" -c safe.directory='*' update-ref refs/heads/x HEAD 2>/dev/null
        then echo CACHE-REF-WRITABLE; fi
        git fsck --no-progress 2>&1 && echo FSCK-OK
        """.replace("CACHE_PATH", status["cachePath"])
    )
    out = ok(job)
    changes = out.split("STATUS ")[1].split("\n")[0].split(";")
    assert {" M README.md", " D libs/util.py", "?? .gitignore", "?? services/new.py"} <= set(changes), changes
    assert not any("node_modules" in change for change in changes)
    assert f"DESCRIBE v1.1-1-g{scene.repo.feature[:7]}" in out  # tags from the cache (spec.tags)
    assert f"HEAD {scene.repo.feature}" in out and f"PARENT {scene.repo.feature}" in out
    assert "OWNER 65532\n65532" in out
    assert "WRITABLE" not in out and "FSCK-OK" in out
    assert tree_digest(cache) == before, "the job changed the cache"

    # The branch moves away upstream (force push): only the pin keeps the job's commit in the cache.
    git(scene.repo.src, "checkout", "-q", "-B", StandardRepo.FEATURE_BRANCH, scene.repo.main)
    rewritten = commit(scene.repo.src, {"services/api/feature.py": "FEATURE = 2\n"}, "feature rewritten")
    scene.repo.republish()
    # A planted pin of a Workspace that does not exist: GC removes it.
    subprocess.run(["git", "-C", str(cache), "update-ref", "refs/workspaces/ghost", scene.repo.old], check=True)
    gcs = gc_count(op, "gc-cache")
    scene.workspaces.create(
        "later",
        {"project": "p", "repository": url, "mode": "CacheOnly", "ref": {"branch": StandardRepo.FEATURE_BRANCH}},
    )
    assert scene.workspaces.wait_ready("later")["commit"] == rewritten
    wait_for(
        lambda: gc_count(op, "gc-cache") > gcs and gc_count(op, "remove-pin") >= 1,
        timeout=30,
        message="gc --prune=now and removal of the ghost pin",
    )
    assert not (cache / "refs" / "workspaces" / "ghost").exists() and "ghost" not in (cache / "packed-refs").read_text()
    assert cache_has(cache, scene.repo.feature), "a live Workspace's pinned commit was pruned"
    fsck = pod.sh("git fsck --no-progress --full 2>&1 && git log --oneline -2 >/dev/null && echo FSCK-OK")
    assert "FSCK-OK" in ok(fsck), fsck.stdout

    # Deleting the Workspace removes its pin (finalizer): the next gc prunes what only it kept.
    ok(pod.run("kubectl-workspace", "delete", name))
    scene.workspaces.wait_gone(name)
    assert (
        subprocess.run(
            ["git", "-C", str(cache), "rev-parse", "--verify", "-q", f"refs/workspaces/{name}"], capture_output=True
        ).returncode
        != 0
    )
    gcs = gc_count(op, "gc-cache")
    scene.workspaces.create(
        "fetch-again", {"project": "p", "repository": url, "mode": "CacheOnly", "ref": {"name": StandardRepo.PULL_REF}}
    )
    scene.workspaces.wait_ready("fetch-again")
    wait_for(lambda: gc_count(op, "gc-cache") > gcs, timeout=30, message="another gc")
    wait_for(lambda: not cache_has(cache, scene.repo.feature), timeout=10, message="unpinned commit pruned")


def test_wait_fails_at_once_on_a_permanent_failure_and_succeeds_on_ready(
    scene: Scene, kubectl: Kubectl, kubeconfig: Path
) -> None:
    scene.start()
    url = scene.http.url("repo")
    env = {"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin"}
    scene.workspaces.create(
        "missing-ref", {"project": "p", "repository": url, "mode": "CacheOnly", "ref": {"branch": "no-such-branch"}}
    )
    waiting = subprocess.Popen(
        [CLI, "-n", scene.namespace, "wait", "missing-ref", "--timeout", "120"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: scene.workspaces.status("missing-ref").get("phase") == "Failed",
            timeout=60,
            message="RefNotFound reported",
        )
        failed_at = time.monotonic()
        _, stderr = waiting.communicate(timeout=5)
        assert time.monotonic() - failed_at < 5
    finally:
        waiting.kill()
    assert waiting.returncode == 5, stderr
    assert "RefNotFound" in stderr and "missing-ref" in stderr

    scene.workspaces.create("fine", {"project": "p", "repository": url, "mode": "CacheOnly"})
    done = subprocess.run(
        [CLI, "-n", scene.namespace, "wait", "fine", "--timeout", "60"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert scene.workspaces.status("fine")["phase"] == "Ready"


def test_clear_errors_with_documented_exit_codes(
    scene: Scene, kubectl: Kubectl, kubeconfig: Path, api_client: ApiClient, tmp_path: Path
) -> None:
    op = scene.start()
    url = scene.http.url("repo")

    def cli(*args: str, config: Path = kubeconfig) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CLI, "--kubeconfig", str(config), "-n", scene.namespace, *args], capture_output=True, text=True, timeout=90
        )

    nobody = token_kubeconfig(
        kubeconfig, job_token(kubectl, api_client, scene.namespace, "nobody", rbac=False), tmp_path / "nobody"
    )
    denied = cli("wait", "anything", config=nobody)
    assert denied.returncode == 4 and "not allowed to get" in denied.stderr, denied.stderr
    absent = cli("wait", "absent")
    assert absent.returncode == 3 and f"Workspace {scene.namespace}/absent not found" in absent.stderr

    scene.workspaces.create("cached", {"project": "p", "repository": url, "mode": "CacheOnly"})
    scene.workspaces.create("tree", {"project": "p", "repository": url, "subPath": "services/api"})
    status = scene.workspaces.wait_ready("cached")
    assert cli("wait", "tree").returncode == 0
    assert (
        cli("path", "tree", "--cache-root", "/mnt/ws").stdout.strip()
        == f"/mnt/ws/{scene.namespace}/p/tree/services/api"
    )
    wrong_mode = cli("path", "cached")
    assert wrong_mode.returncode == 12 and "CacheOnly" in wrong_mode.stderr

    unmounted = cli("checkout", "cached", "--into", str(tmp_path / "a"), "--cache-root", str(tmp_path / "empty"))
    assert unmounted.returncode == 7 and "no git cache at" in unmounted.stderr
    other = tmp_path / "other-volume"  # a cache of the same repository without the commit
    subprocess.run(["git", "init", "-q", "--bare", str(other / status["cachePath"])], check=True)
    subprocess.run(["git", "-C", str(other / status["cachePath"]), "config", "remote.origin.url", url], check=True)
    missing = cli("checkout", "cached", "--into", str(tmp_path / "b"), "--cache-root", str(other))
    assert missing.returncode == 8 and status["commit"] in missing.stderr
    assert not (tmp_path / "b").exists()  # asked of the cache before DIR is made
    linked = tmp_path / "linked-volume"  # <cachePath> a link to the real cache: never followed
    (linked / status["cachePath"]).parent.mkdir(parents=True)
    (linked / status["cachePath"]).symlink_to(op.root / status["cachePath"])
    unsafe = cli("checkout", "cached", "--into", str(tmp_path / "b2"), "--cache-root", str(linked))
    assert unsafe.returncode == 13 and "the cache is a symlink" in unsafe.stderr, unsafe.stderr
    assert not (tmp_path / "b2").exists()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "old.txt").write_text("x")
    busy = cli("checkout", "cached", "--into", str(tmp_path / "c"), "--cache-root", str(op.root))
    assert busy.returncode == 9 and "--clean" in busy.stderr
    notes = tmp_path / "notes.txt"  # --into an existing file: a bad flag, not a traceback
    notes.write_text("mine\n")
    into_file = cli("checkout", "cached", "--into", str(notes), "--cache-root", str(op.root), "--clean")
    assert into_file.returncode == 2 and "exists and is not a directory" in into_file.stderr, into_file.stderr
    assert "Traceback" not in into_file.stderr and notes.read_text() == "mine\n"
    cleaned = cli("checkout", "cached", "--into", str(tmp_path / "c"), "--cache-root", str(op.root), "--clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert not (tmp_path / "c" / "old.txt").exists() and (tmp_path / "c" / "README.md").is_file()

    conflict = cli("create", "--name", "cached", "--project", "p", "--repository", url, "--branch", "other")
    assert conflict.returncode == 11
    same = cli("create", "--name", "cached", "--project", "p", "--repository", url)
    assert same.returncode == 0 and same.stdout.strip() == "cached"  # a retried init container
