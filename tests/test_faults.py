"""Fault injection against the whole operator: SIGKILL mid-operation, upstream faults.

Seeds are logged (pytest -rA shows them); re-run one with FAULT_SEED=<seed>.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes.client import ApiClient, CoordinationV1Api

from cluster import OperatorProcess, Workspaces, lease_spec, wait_for
from testsupport.volumes import resize, tmpfs
from upstreams import SmartHTTP, git_env, publish

pytestmark = pytest.mark.cluster

StartOperator = Callable[..., OperatorProcess]
TRIALS = int(os.environ.get("FAULT_TRIALS", "20"))


@pytest.fixture(scope="module")
def medium_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """~1,500 files in a few commits: clone and checkout take long enough to be interrupted."""
    base = tmp_path_factory.mktemp("medium")
    src = base / "src"
    subprocess.run(["git", "init", "-q", "-b", "main", str(src)], check=True, timeout=60, env=git_env())
    rng = random.Random(7)
    stream = []
    mark = 0
    for c in range(3):
        files = []
        for i in range(500):
            mark += 1
            data = "".join(rng.choice("abcdefghij \n") for _ in range(400)).encode()
            stream.append(b"blob\nmark :%d\ndata %d\n%s\n" % (mark, len(data), data))
            files.append((f"dir{i % 50}/c{c}-f{i}.txt", mark))
        msg = f"commit {c}".encode()
        stream.append(
            b"commit refs/heads/main\ncommitter A <a@b> %d +0000\ndata %d\n%s\n" % (1_700_000_000 + c, len(msg), msg)
        )
        for path, m in files:
            stream.append(b"M 100644 :%d %s\n" % (m, path.encode()))
    subprocess.run(
        ["git", "-C", str(src), "fast-import", "--quiet"],
        input=b"".join(stream),
        check=True,
        timeout=120,
        env=git_env(),
    )
    head = subprocess.run(
        ["git", "-C", str(src), "rev-parse", "main"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    served = base / "served"
    publish(src, served / "medium.git")
    return served, head


def processes_working_in(root: Path) -> list[str]:
    """Command lines of live processes whose working directory is under root."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(proc / "cwd"))
            if cwd == root or root in cwd.parents:
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def check_volume(root: Path) -> None:
    """Every cache passes fsck; no lock files; no worktree metadata without a directory."""
    for cache in root.glob("*/*/.cache"):
        fsck = subprocess.run(
            ["git", "-C", str(cache), "fsck", "--connectivity-only", "--no-progress"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert fsck.returncode == 0, fsck.stderr
        assert not list(cache.rglob("*.lock")), list(cache.rglob("*.lock"))
        listing = subprocess.run(
            ["git", "-C", str(cache), "worktree", "list", "--porcelain"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        for line in listing.splitlines():
            if line.startswith("worktree ") and line != f"worktree {cache}":
                assert Path(line.removeprefix("worktree ")).is_dir(), f"stale worktree metadata: {line}"


def test_sigkill_during_clone_fetch_checkout(
    api_client: ApiClient,
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    medium_repo: tuple[Path, str],
    tmp_path: Path,
) -> None:
    served, head = medium_repo
    server = SmartHTTP(served).start()
    try:
        env = {"WORKSPACE_LEASE_SECONDS": "3"}
        op = operator_factory(env=env)
        seed = int(os.environ.get("FAULT_SEED", str(random.randrange(1 << 30))))
        print(f"fault seed {seed}")
        rng = random.Random(seed)
        names: list[str] = []
        for trial in range(TRIALS):
            project = f"crash{trial % 4}"  # revisits: cold clones first, then warm caches
            batch = [f"t{trial}"]
            for name in batch:
                workspaces.create(
                    name,
                    {
                        "project": project,
                        "repository": server.url("medium"),
                        "ref": {"commit": head} if trial % 2 else {"branch": "main"},
                    },
                )
            names += batch
            time.sleep(rng.uniform(0.05, 1.2))  # the kill point: random, the point of the test
            op.kill()
            op = operator_factory(env=env)
        killed_at = time.monotonic()
        for name in names:
            assert workspaces.wait_ready(name, timeout=120)["commit"] == head, name
        print(f"converged {time.monotonic() - killed_at:.1f}s after the last kill")
        for name in names:
            status = workspaces.status(name)
            tree = op.root / status["path"]
            assert (tree / "dir0").is_dir() and len(list((tree / "dir0").iterdir())) == 30
        check_volume(op.root)
        coordination = CoordinationV1Api(api_client)
        # Project locks all released (heartbeat Leases of the live replica are held, by design).
        # Released once each drainer's idle upkeep is done (an expiry keeps the holder).
        wait_for(
            lambda: (
                (leases := coordination.list_namespaced_lease(namespace, label_selector="crafting.dev/project").items)
                and all(not lease_spec(lease).holder_identity for lease in leases)
            ),
            timeout=20,
            message="every project Lease released",
        )
    finally:
        server.stop()


def test_upstream_faults_recover_without_restart(
    namespace: str, workspaces: Workspaces, operator_factory: StartOperator, medium_repo: tuple[Path, str]
) -> None:
    served, head = medium_repo
    server = SmartHTTP(served).start()
    try:
        operator_factory(env={"WORKSPACE_GIT_TIMEOUT_SECONDS": "4", "WORKSPACE_LEASE_SECONDS": "5"})
        for fault, reason in (("drop", "UpstreamUnavailable"), ("500", "UpstreamUnavailable"), ("hang", "GitTimeout")):
            server.fault = fault
            name = f"fault-{fault}"
            workspaces.create(name, {"project": f"f{fault}", "repository": server.url("medium")})
            condition = workspaces.wait_reason(name, reason, timeout=60)
            assert condition["status"] == "False"
            assert workspaces.status(name)["phase"] == "Pending"
            server.fault = None
            assert workspaces.wait_ready(name, timeout=90)["commit"] == head
    finally:
        server.stop()


def test_disk_full_reports_and_recovers(
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    medium_repo: tuple[Path, str],
    tmp_path: Path,
) -> None:
    served, head = medium_repo
    with tmpfs(tmp_path / "small-volume", "6m") as volume, SmartHTTP(served) as server:
        op = operator_factory(root_dir=volume)
        workspaces.create("big", {"project": "full", "repository": server.url("medium")})
        condition = workspaces.wait_reason("big", "DiskFull", timeout=60)
        assert "no space left" in condition["message"].lower()
        check_volume(volume)
        op.stop()
        resize(volume, "200m")
        operator_factory(root_dir=volume)
        assert workspaces.wait_ready("big", timeout=120)["commit"] == head
        check_volume(volume)


def test_sigterm_kills_git_and_releases_the_lease(
    api_client: ApiClient,
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    medium_repo: tuple[Path, str],
) -> None:
    served, head = medium_repo
    server = SmartHTTP(served).start()
    try:
        server.fault = "hang"
        op = operator_factory(env={"WORKSPACE_GIT_TIMEOUT_SECONDS": "300", "WORKSPACE_LEASE_SECONDS": "30"})
        workspaces.create("term", {"project": "term", "repository": server.url("medium")})
        coordination = CoordinationV1Api(api_client)
        lease = f"ws-{namespace}.term"

        def held() -> bool:
            return bool(lease_spec(coordination.read_namespaced_lease(lease, namespace)).holder_identity)

        wait_for(held, timeout=30, message="the project lease to be held during the hung fetch")
        assert op.proc is not None
        started = time.monotonic()
        op.stop()  # SIGTERM, as the kubelet sends
        assert time.monotonic() - started < 20
        # Released at shutdown, not left to expire (30 s).
        assert not held()
        assert processes_working_in(op.root) == []
        server.fault = None
        operator_factory()
        assert workspaces.wait_ready("term", timeout=60)["commit"] == head
        check_volume(op.root)
    finally:
        server.stop()
