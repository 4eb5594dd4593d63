"""What the engine has left on the volume, for garbage collection to decide on.

GC must not know the on-disk layout or the engine's stamp files; it asks here. Reads
only: nothing is created, changed or locked, and a project that vanishes meanwhile
reads as empty.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from workspace_operator.git.cache import LAST_FETCH, LAST_GC, LAST_USED, stamp_time
from workspace_operator.git.layout import (
    CACHE_DIR,
    DNS1123_LABEL,
    QUARANTINE_PREFIX,
    READY_DIR,
    STAGING_PREFIX,
    is_worktree_name,
)


@dataclass(frozen=True)
class ProjectState:
    """One project directory: its cache's stamps (mtimes, None if absent), and the mtimes
    of its worktree directories and of debris (staging and quarantine leftovers)."""

    has_cache: bool = False
    last_used: float | None = None
    last_fetch: float | None = None
    last_gc: float | None = None
    worktrees: dict[str, float] = field(default_factory=dict)
    debris: dict[str, float] = field(default_factory=dict)


def list_projects(root: Path) -> list[tuple[str, str]]:
    """(namespace, project) of every directory pair below root named like the engine names them."""
    return [
        (ns_dir.name, project_dir.name)
        for ns_dir in _subdirs(root)
        if DNS1123_LABEL.match(ns_dir.name)
        for project_dir in _subdirs(ns_dir)
        if DNS1123_LABEL.match(project_dir.name)
    ]


def project_state(root: Path, namespace: str, project: str) -> ProjectState:
    project_dir = root / namespace / project
    cache = project_dir / CACHE_DIR
    worktrees: dict[str, float] = {}
    debris: dict[str, float] = {}
    try:
        entries = list(project_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    for entry in entries:
        mtime = _mtime(entry)
        if mtime is None:
            continue
        if is_worktree_name(entry.name) and entry.is_dir():
            worktrees[entry.name] = mtime
        elif entry.name.startswith((STAGING_PREFIX, QUARANTINE_PREFIX)):
            debris[entry.name] = mtime
    return ProjectState(
        has_cache=cache.is_dir(),
        last_used=stamp_time(cache, LAST_USED),
        last_fetch=stamp_time(cache, LAST_FETCH),
        last_gc=stamp_time(cache, LAST_GC),
        worktrees=worktrees,
        debris=debris,
    )


def completed_worktrees(root: Path, namespace: str) -> set[str]:
    """Names of the namespace's completed worktrees (their completion records); symlinks are never followed."""
    names: set[str] = set()
    for project in _entries(root / namespace):
        if project.is_dir(follow_symlinks=False) and DNS1123_LABEL.match(project.name):
            names.update(
                record.name
                for record in _entries(Path(project.path) / READY_DIR)
                if record.is_file(follow_symlinks=False) and DNS1123_LABEL.match(record.name)
            )
    return names


def _entries(path: Path) -> list[os.DirEntry[str]]:
    try:
        if path.is_symlink():
            return []
        with os.scandir(path) as listing:
            return list(listing)
    except (FileNotFoundError, NotADirectoryError):
        return []


def cache_bytes(root: Path, namespace: str, project: str) -> int:
    """Disk space the project's cache takes (allocated blocks): costly, a full walk."""
    total = 0
    for dirpath, _dirs, files in os.walk(root / namespace / project / CACHE_DIR):
        for file in files:
            try:
                total += os.lstat(os.path.join(dirpath, file)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(entry for entry in path.iterdir() if entry.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []  # removed meanwhile (a cache deletion takes an empty project dir with it)
