"""Keeping a cache in shape: worktree metadata, packs, refs. Callers hold the project lock."""

from __future__ import annotations

from pathlib import Path

from workspace_operator.git.markers import LAST_GC, stamp, unlock_crashed_worktrees
from workspace_operator.git.runner import GitRunner


class Housekeeping:
    def __init__(self, runner: GitRunner, repo: Path) -> None:
        self.runner = runner
        self.repo = repo

    async def prune_worktrees(self) -> None:
        unlock_crashed_worktrees(self.repo)
        await self.runner.run("worktree-prune", ["worktree", "prune"], cwd=self.repo)

    async def gc(self) -> None:
        # Default prune grace (2 weeks) keeps objects a concurrent reader might still need.
        await self.runner.run("gc", ["gc", "--quiet"], cwd=self.repo)
        stamp(self.repo, LAST_GC)
