"""Simulated CI on one busy cache, with and without busy-cache upkeep.

    python -m bench.ci_runs [--runs 500] [--size small] [--budget 0.5]

Each run: a new commit is pushed upstream; a Workspace of `main` is materialized the
way the operator does it (exclusive phase in the project's queue, files in a slot); the
previous run's Workspace is removed. Two caches of the same upstream are driven in
lockstep, one with the queue's upkeep step and one without, alternating which goes
first. Reported per cache: materialize p50/p99, the longest stall a queued step could
see behind an upkeep step, pack count, loose objects and size at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from bench import repogen
from bench.harness import Upstream, dir_bytes
from workspace_operator.batching import ProjectQueues
from workspace_operator.checkouts import Checkouts
from workspace_operator.git import CheckoutRequest, Engine, GitSettings, Revision
from workspace_operator.git.housekeeping import Housekeeping


class LocalLocks:
    """The Lease, minus the API server: one holder at a time in this process."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def hold(self, namespace: str, project: str, *, wait_seconds: float) -> AsyncIterator[float]:
        async with self._lock:
            yield 0.0


class Driver:
    def __init__(self, root: Path, url: str, budget: float | None) -> None:
        self.engine = Engine(root, GitSettings(allowed_schemes=frozenset({"http"}), allow_private_networks=True))
        self.url = url
        self.stalls: list[float] = []
        self.seconds: list[float] = []
        self.queues = ProjectQueues(LocalLocks(), idle=self._upkeep if budget else None)  # type: ignore[arg-type]
        self.budget = budget or 0.0
        self.checkouts = Checkouts(2)

    async def _upkeep(self, namespace: str, project: str) -> None:
        started = time.monotonic()
        await self.engine.maintain(namespace, project, budget_seconds=self.budget)
        self.stalls.append(time.monotonic() - started)

    async def run(self, index: int) -> None:
        received = time.monotonic()
        valid = self.engine.validate(CheckoutRequest("ci", "repo", f"run-{index}", self.url, Revision(branch="main")))
        prepared, _ = await self.queues.run(
            "ci",
            "repo",
            lambda: self.engine.prepare(valid, not_before=received, hold=self.queues.hold_id("ci", "repo")),
            wait_seconds=600,
        )
        async with self.checkouts.slot("ci"):
            await self.engine.populate(prepared)
        self.seconds.append(time.monotonic() - received)
        if index:
            await self.queues.run(
                "ci", "repo", lambda: self.engine.remove("ci", "repo", f"run-{index - 1}"), wait_seconds=600
            )

    def report(self, name: str, cache: Path) -> str:
        house = Housekeeping(self.engine.runner_for(None), self.engine.root, cache)
        ordered = sorted(self.seconds)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        stall = max(self.stalls, default=0.0)
        stall_p99 = sorted(self.stalls)[int(0.99 * (len(self.stalls) - 1))] if self.stalls else 0.0
        return (
            f"{name:8s} materialize p50 {statistics.median(ordered):.3f}s p99 {p99:.3f}s | "
            f"upkeep steps {sum(1 for s in self.stalls if s > 0.01)}, stall p99 {stall_p99:.3f}s max {stall:.3f}s | "
            f"packs {house.pack_count()}, loose objects {house.loose_object_count()}, "
            f"cache {dir_bytes(cache) / 1e6:.1f} MB"
        )


async def simulate(runs: int, size: str, budget: float) -> None:
    gen = repogen.generate(size)
    work = Path(tempfile.mkdtemp(prefix="workspace-ci-runs-"))
    served = work / "served"
    served.mkdir()
    bare = repogen.copy_for_serving(gen, served / "repo.git")
    upstream = Upstream(served).start()
    try:
        extender = repogen.Extender(bare, seed=7)
        drivers = {
            "without": Driver(work / "without", upstream.url("repo"), None),
            "with": Driver(work / "with", upstream.url("repo"), budget),
        }
        for path in (work / "without", work / "with"):
            path.mkdir()
        for index in range(runs):
            extender.push(1)
            order = list(drivers.values())
            for driver in order if index % 2 == 0 else order[::-1]:
                await driver.run(index)
            if (index + 1) % 50 == 0:
                print(f"{index + 1}/{runs} runs", flush=True)
        for name, driver in drivers.items():
            print(driver.report(name, work / name / "ci" / "repo" / ".cache"))
    finally:
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--size", default="small", choices=sorted(repogen.PROFILES))
    parser.add_argument("--budget", type=float, default=0.5, help="upkeep time box (s)")
    opts = parser.parse_args()
    asyncio.run(simulate(opts.runs, opts.size, opts.budget))
    return 0


if __name__ == "__main__":
    sys.exit(main())
