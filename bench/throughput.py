"""Engine-level A/B against raw git, interleaved: cold, first Workspace after a restart, N of one commit.

    python -m bench.throughput [--size gitgit] [--reps 3] [--burst 10] [--concurrency 0]

The engine is driven as the operator drives it (queue under one hold, files in parallel
slots), minus the API server. Over the same smart-HTTP upstream:

* cold     Engine on an empty volume vs `git clone --bare --single-branch --no-tags` +
           `git worktree add` (the fastest raw way to the same result);
* restart  a new Engine (a restarted process) on an existing cache, a cached commit,
           vs `git worktree add` from a bare clone;
* burst    N Workspaces of one cached commit at once vs N serial `git worktree add`.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import repogen
from bench.ci_runs import LocalLocks
from bench.harness import Upstream, timed_git
from workspace_operator.batching import ProjectQueues
from workspace_operator.checkouts import Checkouts, default_limit
from workspace_operator.git import CheckoutRequest, Engine, GitSettings, Revision

SETTINGS = GitSettings(allowed_schemes=frozenset({"http"}), timeout_seconds=1800, allow_private_networks=True)


async def materialize(
    engine: Engine, queues: ProjectQueues, checkouts: Checkouts, url: str, name: str, revision: Revision
) -> None:
    received = time.monotonic()
    valid = engine.validate(CheckoutRequest("bench", "repo", name, url, revision))
    hold = queues.hold_id  # asked inside the step: the hold it runs in
    prepared, _ = await queues.run(
        "bench",
        "repo",
        lambda: engine.prepare(valid, not_before=received, hold=hold("bench", "repo")),
        wait_seconds=1800,
    )
    async with checkouts.slot("bench"):
        await engine.populate(prepared)


def timed(coro_factory: object) -> float:
    started = time.monotonic()
    asyncio.run(coro_factory())  # type: ignore[operator]
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="gitgit", choices=sorted(repogen.PROFILES))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=0, help="checkout slots; 0 = from the CPUs")
    parser.add_argument("--only", choices=["cold", "restart", "burst"], action="append")
    opts = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    only = set(opts.only or ["cold", "restart", "burst"])
    limit = opts.concurrency or default_limit()

    gen = repogen.generate(opts.size)
    work = Path(tempfile.mkdtemp(prefix="workspace-throughput-"))
    served = work / "served"
    served.mkdir()
    repogen.copy_for_serving(gen, served / "repo.git")
    upstream = Upstream(served).start()
    url = upstream.url("repo")
    results: dict[str, list[float]] = {}
    try:

        def record(key: str, seconds: float) -> None:
            results.setdefault(key, []).append(seconds)

        def op_cold(rep: int) -> None:
            root = work / f"cold-{rep}"
            root.mkdir()
            engine = Engine(root, SETTINGS)
            record(
                "cold op",
                timed(
                    lambda: materialize(
                        engine,
                        ProjectQueues(LocalLocks()),  # type: ignore[arg-type]
                        Checkouts(limit),
                        url,
                        "w",
                        Revision(branch="main"),
                    )
                ),
            )

        def raw_cold(rep: int) -> None:
            cache, tree = work / f"raw-cold-{rep}.git", work / f"raw-cold-{rep}"
            record(
                "cold raw",
                timed_git(
                    ["clone", "--bare", "--quiet", "--single-branch", "--no-tags", "--branch", "main", url, str(cache)],
                    ["-C", str(cache), "worktree", "add", "--detach", "--quiet", str(tree), gen.head],
                ),
            )

        # The volume and raw clone the restart and burst cases reuse.
        warm_root = work / "warm"
        warm_root.mkdir()
        asyncio.run(
            materialize(
                Engine(warm_root, SETTINGS),
                ProjectQueues(LocalLocks()),  # type: ignore[arg-type]
                Checkouts(limit),
                url,
                "seed",
                Revision(branch="main"),
            )
        )
        raw_cache = work / "raw.git"
        timed_git(["clone", "--bare", "--quiet", "--single-branch", "--no-tags", url, str(raw_cache)])

        def op_restart(rep: int) -> None:
            engine = Engine(warm_root, SETTINGS)  # a new process: nothing verified yet
            record(
                "restart op",
                timed(
                    lambda: materialize(
                        engine,
                        ProjectQueues(LocalLocks()),  # type: ignore[arg-type]
                        Checkouts(limit),
                        url,
                        f"r{rep}",
                        Revision(commit=gen.head),
                    )
                ),
            )

        def raw_add(name: str) -> float:
            """Seconds of one raw `git worktree add` of the head from the raw cache."""
            return timed_git(
                ["-C", str(raw_cache), "worktree", "add", "--detach", "--quiet", str(work / name), gen.head]
            )

        def raw_restart(rep: int) -> None:
            record("restart raw", raw_add(f"raw-r{rep}"))

        def op_burst(rep: int) -> None:
            engine = Engine(warm_root, SETTINGS)
            queues = ProjectQueues(LocalLocks())  # type: ignore[arg-type]
            checkouts = Checkouts(limit)

            async def all_of_them() -> None:
                await asyncio.gather(
                    *(
                        materialize(engine, queues, checkouts, url, f"b{rep}-{i}", Revision(commit=gen.head))
                        for i in range(opts.burst)
                    )
                )

            record("burst op", timed(all_of_them))

        def raw_burst(rep: int) -> None:
            record(
                "burst raw",
                sum(raw_add(f"raw-b{rep}-{i}") for i in range(opts.burst)),
            )

        cases = [
            (name, op, raw)
            for name, op, raw in (
                ("cold", op_cold, raw_cold),
                ("restart", op_restart, raw_restart),
                ("burst", op_burst, raw_burst),
            )
            if name in only
        ]
        for rep in range(opts.reps):
            for name, op, raw in cases:
                first, second = (op, raw) if rep % 2 == 0 else (raw, op)
                first(rep)
                second(rep)
                print(
                    f"rep {rep + 1} {name}: op {results[f'{name} op'][-1]:.2f}s raw {results[f'{name} raw'][-1]:.2f}s"
                )
        print(f"\n{opts.size}, {opts.reps} interleaved reps, checkout slots {limit}, medians:")
        for name, _op, _raw in cases:
            op_s, raw_s = statistics.median(results[f"{name} op"]), statistics.median(results[f"{name} raw"])
            print(f"  {name:8s} operator {op_s:7.2f}s  raw {raw_s:7.2f}s  ratio {op_s / raw_s:.2f}")
    finally:
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
