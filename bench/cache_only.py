"""Cache-only Workspaces: created→Ready p50, the job's `checkout --into` vs raw `git worktree add`,
and a burst of cache-only Workspaces of one cached commit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.harness import ControlPlane, git, now, timed_git
from bench.scenarios import Env, Result, Row, Settings, _wave, interleave, median, percentile, progress

CLI = str(Path(sys.executable).parent / "kubectl-workspace")
CACHE_ONLY = {"mode": "CacheOnly"}
BURST = 50  # no checkout involved: the full count even in --quick runs


def cache_only(cp: ControlPlane, st: Settings, size: str | None = None) -> Result:
    size = size or st.size
    reps = max(st.reps, 5)
    result = Result(f"cache-only-{size}")
    with Env(cp, st, f"cache-only-{size}", size) as env:
        env.ws.materialize("seed", "co", {"branch": "main"})  # the commit is cached from here on
        env.ws.extra_spec = dict(CACHE_ONLY)
        ready: list[float] = []
        for rep in range(reps * 2):
            sample = env.ws.materialize(f"ready-{rep}", "co", {"commit": env.head})
            assert sample.cache.get("hit") and not sample.cache.get("fetched"), sample.cache
            ready.append(sample.client_seconds)
        p50 = median(ready)
        progress(f"cache-only {size}: created→Ready p50 {p50 * 1000:.0f} ms over {len(ready)}")
        result.rows.append(
            Row(
                "cache-only: created→Ready, commit cached",
                size,
                p50,
                None,
                "—",
                "p50 ≤ 0.15 s",
                p50 <= 0.15,
                note=f"p90 {percentile(ready, 90):.3f} s over {len(ready)}",
            )
        )

        base_cache = env.raw / "cache.git"
        git("clone", "--bare", "--quiet", env.url, str(base_cache))
        jobs: list[float] = []
        raw: list[float] = []

        def job(rep: int) -> None:
            into = env.raw / f"job-{rep}"
            started = now()
            subprocess.run(
                [
                    CLI,
                    "--kubeconfig",
                    str(cp.kubeconfig),
                    "-n",
                    env.ws.namespace,
                    "checkout",
                    f"ready-{rep}",
                    "--into",
                    str(into),
                    "--cache-root",
                    str(env.operator.root),
                ],
                check=True,
                capture_output=True,
                timeout=900,
            )
            jobs.append(now() - started)
            env.drop(into)

        def baseline(rep: int) -> None:
            tree = env.raw / f"wt-{rep}"
            raw.append(
                timed_git(["-C", str(base_cache), "worktree", "add", "--detach", "--quiet", str(tree), env.head])
            )
            git("-C", str(base_cache), "worktree", "remove", "--force", str(tree))

        for rep in range(reps):
            interleave(rep, lambda: job(rep), lambda: baseline(rep))
            progress(f"checkout --into {size} rep {rep + 1}/{reps}: {jobs[-1]:.3f}s, raw {raw[-1]:.3f}s")
        op, base = median(jobs), median(raw)
        result.rows.append(
            Row(
                "job: `kubectl workspace checkout --into` (local disk)",
                size,
                op,
                base,
                "`git worktree add` of the commit",
                "≤ 1.2x",
                op <= 1.2 * base,
                note="whole command: Python start, API read, git init + alternates + checkout",
            )
        )

        items = [(f"burst-{i}", "co", {"commit": env.head}) for i in range(BURST)]
        wave = _wave(env, items, timeout=600)
        progress(f"cache-only burst {size}: {wave['ready']}/{BURST} Ready in {wave['wall']:.2f}s")
        result.rows.append(
            Row(
                f"cache-only burst: {BURST} Workspaces, one cached commit",
                size,
                wave["wall"],
                None,
                "—",
                "all Ready ≤ 2 s",
                wave["ready"] == BURST and wave["wall"] <= 2.0,
                note=f"created→Ready p50 {wave['p50']:.2f}s, p99 {wave['p99']:.2f}s",
            )
        )
        result.data = {"ready": ready, "checkout_into": jobs, "worktree_add": raw, "burst": wave}
    result.data["cpu"] = env.cpu
    return result
