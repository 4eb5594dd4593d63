"""Keeping a cache in shape: worktree metadata, packs, refs. Callers hold the project lock.

Two kinds of upkeep:
* `gc` — git's full gc, run by garbage collection once a cache has been quiet;
* `step` — small, time-boxed steps for busy caches, run between queued work:
  roll up loose objects and small packs geometrically (never rewriting the big
  pack), pack loose refs, extend the commit-graph. Each is decided from file
  counts (no git call) and killed at the time box; a step that cannot finish
  within it is left to the quiet-time gc.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from workspace_operator.git.errors import GitError, Reason
from workspace_operator.git.markers import LAST_FETCH, LAST_GC, entries, stamp, stamp_time, unlock_crashed_worktrees
from workspace_operator.git.runner import GitRunner

log = logging.getLogger("workspace_operator.housekeeping")

# Thresholds of the busy-cache steps: below them a step costs more than it saves.
MAX_PACKS = 8
MAX_LOOSE_OBJECTS = 128  # small roll-ups: each fits the time box, the big pack is never rewritten
MAX_LOOSE_REFS = 128
COMMIT_GRAPH = Path("objects/info/commit-graphs")


class Housekeeping:
    def __init__(self, runner: GitRunner, root: Path, repo: Path) -> None:
        self.runner = runner
        self.root = root  # the volume root: files below it are read and written without following links
        self.repo = repo

    async def prune_worktrees(self) -> None:
        unlock_crashed_worktrees(self.root, self.repo)
        await self.runner.run("worktree-prune", ["worktree", "prune"], cwd=self.repo)

    async def gc(self) -> None:
        # Unreachable objects go at once: nothing writes under our lock, worktrees' HEADs
        # (set when a worktree is registered, before its files are written) and the pins
        # of cache-only Workspaces (git/pins.py) keep what is in use reachable.
        await self.runner.run("gc", ["gc", "--quiet", "--prune=now"], cwd=self.repo)
        stamp(self.root, self.repo, LAST_GC)

    def due(self) -> str | None:
        """The most useful busy-cache step now, from file counts alone; None if none is due."""
        if self.pack_count() > MAX_PACKS or self.loose_object_count() > MAX_LOOSE_OBJECTS:
            return "repack"
        if self.loose_ref_count() > MAX_LOOSE_REFS:
            return "pack-refs"
        graphs = stamp_time(self.root, self.repo / COMMIT_GRAPH, "commit-graph-chain")
        fetched = stamp_time(self.root, self.repo, LAST_FETCH)
        if fetched is not None and (graphs is None or graphs < fetched):
            return "commit-graph"
        return None

    async def step(self, task: str, budget_seconds: float) -> bool:
        """Run one step within the time box; False if it was cut off (nothing is lost:
        git writes new packs and graphs aside and renames them in last)."""
        args = {
            # Loose objects are rolled in; only packs out of geometric progression are merged.
            "repack": ["repack", "-d", "-q", "--geometric=2", "--no-write-bitmap-index"],
            "pack-refs": ["pack-refs", "--all", "--prune"],
            "commit-graph": ["commit-graph", "write", "--reachable", "--split", "--size-multiple=2", "--no-progress"],
        }[task]
        try:
            await self.runner.run(f"maintenance-{task}", args, cwd=self.repo, timeout=budget_seconds)
        except GitError as error:
            if error.reason is not Reason.TIMEOUT:
                raise
            log.info("maintenance %s of %s exceeded %.1fs; left to the quiet-time gc", task, self.repo, budget_seconds)
            return False
        return True

    def pack_count(self) -> int:
        return sum(1 for entry in entries(self.repo / "objects" / "pack") if entry.name.endswith(".pack"))

    def loose_object_count(self) -> int:
        fanout = [entry for entry in entries(self.repo / "objects") if len(entry.name) == 2]
        return sum(len(entries(Path(entry.path))) for entry in fanout)

    def loose_ref_count(self) -> int:
        count = 0
        for _dirpath, _dirs, files in os.walk(self.repo / "refs"):  # os.walk never follows links
            count += len(files)
        return count
