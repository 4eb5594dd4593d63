"""Files the engine keeps inside a cache: crash markers and the stamps GC decides on.

Plain files, so a crash leaves exactly what was there: a marker found at the
start of an operation is evidence, never a guess.
"""

from __future__ import annotations

from pathlib import Path

# Present while a fetch writes into the cache; found at the start of an
# operation it means the previous holder died mid-write.
OPERATION_MARKER = "workspace-operator.fetching"
# Present while a process holds the cache for exclusive work (written when the
# hold starts, removed when it ends cleanly): found by the next holder, it means
# a process stopped uncleanly while it could write, so the cache is checked in
# depth before use.
HOLD_MARKER = "workspace-operator.held"
# Timestamps (file mtimes) that garbage collection decides on.
LAST_USED = "workspace-operator.last-used"
LAST_FETCH = "workspace-operator.last-fetch"
LAST_GC = "workspace-operator.last-gc"


def stamp(repo: Path, name: str) -> None:
    (repo / name).touch()


def stamp_time(repo: Path, name: str) -> float | None:
    try:
        return (repo / name).stat().st_mtime
    except FileNotFoundError:
        return None


def unlock_crashed_worktrees(repo: Path) -> None:
    """Drop the `locked` marks that killed `git worktree add` runs left behind.

    `worktree add` locks new metadata ("initializing") until it is done. Killed
    mid-add, the mark stays: prune then keeps the entry forever, and any later
    add at that path fails ("missing but locked worktree"). The engine never
    locks a worktree itself and callers hold the project lock, so no add is in
    progress and every mark is a crash's leftover.
    """
    for locked in repo.glob("worktrees/*/locked"):
        locked.unlink(missing_ok=True)
