"""How long one GC pass takes over a large volume: `python bench/gc_pass.py [--projects N --worktrees M]`.

Builds, with real git, N small project caches and N*M detached worktrees in a
scratch volume (the layout the operator writes: <root>/<ns>/<project>/.cache,
<name> worktrees, last-used/last-fetch/last-gc stamps), then times:

* snapshot     — reading the volume (gc.snapshot), the part every pass pays;
* plan         — gc_plan.plan over that snapshot and the live set;
* sizes        — gc.with_sizes (du of every idle cache), paid only above the high watermark;
* sweep        — gc.sweep end to end with the API and the Leases stubbed out in-process:
                 first with --orphans worktrees to remove (real `git worktree remove`),
                 then the steady state (nothing to do).

No cluster is needed: the API listing and Lease round trips are what a real pass
adds on top (one list call per pass, one Lease acquire/release per project with work).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "operator"))

from workspace_operator import gc, gc_plan  # noqa: E402
from workspace_operator.config import Config  # noqa: E402
from workspace_operator.git import Engine  # noqa: E402
from workspace_operator.git.cache import LAST_FETCH, LAST_GC, LAST_USED  # noqa: E402
from workspace_operator.runtime import Runtime  # noqa: E402
from workspace_operator.quota import NamespaceQuota  # noqa: E402

NAMESPACE = "bench"
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "b",
           "GIT_AUTHOR_EMAIL": "b@example.com", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.com",
           "PATH": "/usr/local/bin:/usr/bin:/bin"}


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, timeout=120)


def build(root: Path, upstream: Path, projects: int, worktrees: int, old: float) -> list[tuple[str, str, str]]:
    """The volume; returns every (namespace, project, name) it created a worktree for."""
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "main")
    for i in range(20):
        (upstream / f"file-{i}.txt").write_text(f"content {i}\n" * 50)
    (upstream / "src").mkdir()
    (upstream / "src" / "main.py").write_text("print('hello')\n")
    git(upstream, "add", ".")
    git(upstream, "commit", "-q", "-m", "initial")

    def one_project(index: int) -> list[tuple[str, str, str]]:
        project = f"p{index:03d}"
        project_dir = root / NAMESPACE / project
        project_dir.mkdir(parents=True)
        cache = project_dir / ".cache"
        git(project_dir, "clone", "-q", "--bare", "--no-hardlinks", str(upstream), str(cache))
        for stamp in (LAST_USED, LAST_FETCH, LAST_GC):
            (cache / stamp).touch()
        names = []
        for w in range(worktrees):
            name = f"ws-{w:03d}"
            git(cache, "worktree", "add", "--detach", "-q", str(project_dir / name), "main")
            names.append((NAMESPACE, project, name))
        return names

    with ThreadPoolExecutor(8) as pool:
        made = [entry for names in pool.map(one_project, range(projects)) for entry in names]
    # Old enough that a worktree without a Workspace is an orphan.
    for _ns, project, name in made:
        os.utime(root / NAMESPACE / project / name, (old, old))
    return made


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    durations, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        durations.append(time.perf_counter() - started)
    return statistics.median(durations), result


class StubKube:
    """list_workspaces from a fixed live set (what the API would return)."""

    def __init__(self, live: set[tuple[str, str, str]]) -> None:
        self.live = live

    async def list_workspaces(self, namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
        return [{"metadata": {"namespace": ns, "name": name}, "spec": {"project": project}}
                for ns, project, name in self.live if not namespaces or ns in namespaces]


class StubLocks:
    @contextlib.asynccontextmanager
    async def hold(self, namespace: str, project: str, *, wait_seconds: float) -> AsyncIterator[float]:
        yield 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", type=int, default=100)
    parser.add_argument("--worktrees", type=int, default=10, help="per project")
    parser.add_argument("--orphans", type=int, default=100, help="worktrees whose Workspace is gone")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gc-bench-") as scratch:
        root = Path(scratch) / "volume"
        now = time.time()
        started = time.perf_counter()
        made = build(root, Path(scratch) / "upstream", args.projects, args.worktrees, old=now - 7 * 86400)
        print(f"built {args.projects} caches + {len(made)} worktrees in {time.perf_counter() - started:.1f}s")

        # --orphans worktrees, spread over the projects, have lost their Workspace.
        step = max(1, len(made) // args.orphans) if args.orphans else len(made) + 1
        orphans = set(made[::step][:args.orphans]) if args.orphans else set()
        live = set(made) - orphans
        policy = gc_plan.Policy(3600, 7 * 86400, 30 * 86400, 0.85, 0.70)

        snap_s, snaps = timed(lambda: gc.snapshot(root, lambda ns, p: True), args.repeat)
        plan_s, actions = timed(lambda: gc_plan.plan(snaps, live, now=time.time(), policy=policy), args.repeat)
        sizes_s, _ = timed(lambda: gc.with_sizes(snaps, root), args.repeat)
        print(f"snapshot ({len(snaps)} projects, {sum(len(s.worktrees) for s in snaps)} worktrees): "
              f"{snap_s * 1000:.1f} ms (median of {args.repeat})")
        print(f"plan ({len(actions)} actions): {plan_s * 1000:.2f} ms")
        print(f"with_sizes (du of {len(snaps)} caches, disk pressure only): {sizes_s * 1000:.1f} ms")

        config = Config(root=root, namespaces=(NAMESPACE,), orphan_grace_seconds=3600,
                        cache_quiet_seconds=7 * 86400, cache_unused_seconds=30 * 86400)
        rt = Runtime(config, Engine(root, config.git), StubKube(live), StubLocks(),  # type: ignore[arg-type]
                     NamespaceQuota(root, 0))
        for label in (f"sweep removing {len(orphans)} orphans", "sweep, steady state (nothing to do)"):
            started = time.perf_counter()
            done = asyncio.run(gc.sweep(rt))
            elapsed = time.perf_counter() - started
            kinds: dict[str, int] = {}
            for action in done:
                kinds[action.kind.value] = kinds.get(action.kind.value, 0) + 1
            print(f"{label}: {elapsed * 1000:.0f} ms, actions {kinds or '{}'}")
        remaining = sum(1 for _ in root.glob(f"{NAMESPACE}/*/ws-*"))
        assert remaining == len(live), (remaining, len(live))
    return 0


if __name__ == "__main__":
    sys.exit(main())
