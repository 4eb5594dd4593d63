"""Files the engine keeps inside a cache: crash markers and the stamps GC decides on.

Plain files, so a crash leaves exactly what was there: a marker found at the
start of an operation is evidence, never a guess. Read and written through
`safepath` (never following a link planted on the volume).
"""

from __future__ import annotations

import os
from pathlib import Path

from workspace_operator.git import safepath

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


def stamp(root: Path, repo: Path, name: str) -> None:
    safepath.touch(root, repo / name)


def stamp_time(root: Path, repo: Path, name: str) -> float | None:
    return safepath.mtime(root, repo / name)


def entries(path: Path) -> list[os.DirEntry[str]]:
    """Entries of a directory that is not itself a link (callers check the parents)."""
    if not safepath.is_real_dir(path):
        return []
    try:
        with os.scandir(path) as listing:
            return list(listing)
    except (FileNotFoundError, NotADirectoryError):
        return []


def unlock_crashed_worktrees(root: Path, repo: Path) -> None:
    """Drop the `locked` marks that killed `git worktree add` runs left behind.

    `worktree add` locks new metadata ("initializing") until it is done. Killed
    mid-add, the mark stays: prune then keeps the entry forever, and any later
    add at that path fails ("missing but locked worktree"). The engine never
    locks a worktree itself, registration runs under the project lock and ends
    with the mark gone, so while callers hold the lock every mark is a crash's
    leftover.
    """
    for entry in entries(repo / "worktrees"):
        if entry.is_dir(follow_symlinks=False):
            safepath.remove(root, Path(entry.path) / "locked")
