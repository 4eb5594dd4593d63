"""What the engine has left on the volume, for garbage collection to decide on.

GC must not know the on-disk layout or the engine's stamp files; it asks here. Reads
only: nothing is created, changed or locked, and a project that vanishes meanwhile
reads as empty. Symlinks are never followed: a link where a directory belongs is
passed to `on_link` (GC counts and logs it) and otherwise left alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workspace_operator.git import pins, safepath
from workspace_operator.git.errors import GitError
from workspace_operator.git.layout import (
    CACHE_DIR,
    DNS1123_LABEL,
    QUARANTINE_PREFIX,
    READY_DIR,
    STAGING_PREFIX,
    is_worktree_name,
)
from workspace_operator.git.markers import LAST_FETCH, LAST_GC, LAST_USED, stamp_time

OnLink = Callable[[Path], None]


def _ignore(_: Path) -> None:
    pass


@dataclass(frozen=True)
class ProjectState:
    """One project directory: its cache's stamps (mtimes, None if absent), the mtimes of its
    worktree directories and of debris (staging and quarantine leftovers), and its pins."""

    has_cache: bool = False
    last_used: float | None = None
    last_fetch: float | None = None
    last_gc: float | None = None
    worktrees: dict[str, float] = field(default_factory=dict)
    debris: dict[str, float] = field(default_factory=dict)
    pins: frozenset[str] = frozenset()


def list_projects(root: Path, on_link: OnLink = _ignore) -> list[tuple[str, str]]:
    """(namespace, project) of every real directory pair below root named like the engine names them."""
    return [
        (ns_dir.name, project_dir.name)
        for ns_dir in _subdirs(root, on_link)
        if DNS1123_LABEL.match(ns_dir.name)
        for project_dir in _subdirs(ns_dir, on_link)
        if DNS1123_LABEL.match(project_dir.name)
    ]


def project_present(root: Path, namespace: str, project: str) -> bool:
    """Anything at the project's path (a link too, never followed): its Lease is still needed."""
    return os.path.lexists(root / namespace / project)


def project_state(root: Path, namespace: str, project: str, on_link: OnLink = _ignore) -> ProjectState:
    project_dir = root / namespace / project
    cache = project_dir / CACHE_DIR
    try:
        safepath.check_real_dirs(root, project_dir)
    except (FileNotFoundError, GitError):
        return ProjectState()  # gone, or not a real directory
    worktrees: dict[str, float] = {}
    debris: dict[str, float] = {}
    for entry in _entries(project_dir):
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue
        if entry.name.startswith((STAGING_PREFIX, QUARANTINE_PREFIX)):
            debris[entry.name] = mtime  # a link here is removed as a link
        elif entry.is_symlink() and (is_worktree_name(entry.name) or entry.name == CACHE_DIR):
            on_link(Path(entry.path))
        elif is_worktree_name(entry.name) and entry.is_dir(follow_symlinks=False):
            worktrees[entry.name] = mtime
    has_cache = safepath.is_real_dir(cache)
    return ProjectState(
        has_cache=has_cache,
        last_used=stamp_time(root, cache, LAST_USED),
        last_fetch=stamp_time(root, cache, LAST_FETCH),
        last_gc=stamp_time(root, cache, LAST_GC),
        worktrees=worktrees,
        debris=debris,
        pins=pins.names(cache) if has_cache else frozenset(),
    )


def completed_worktrees(root: Path, namespace: str) -> set[str]:
    """Names of the namespace's completed worktrees (their completion records); symlinks are never followed."""
    names: set[str] = set()
    for project in _entries(root / namespace, links=False):
        if project.is_dir(follow_symlinks=False) and DNS1123_LABEL.match(project.name):
            names.update(
                record.name
                for record in _entries(Path(project.path) / READY_DIR, links=False)
                if record.is_file(follow_symlinks=False) and DNS1123_LABEL.match(record.name)
            )
    return names


def cache_bytes(root: Path, namespace: str, project: str) -> int:
    """Disk space the project's cache takes (allocated blocks): costly, a full walk."""
    return safepath.disk_usage(root, root / namespace / project / CACHE_DIR)


def _entries(path: Path, *, links: bool = True) -> list[os.DirEntry[str]]:
    """Entries of a directory, sorted; with links=False, nothing when path itself is a link."""
    try:
        if not links and path.is_symlink():
            return []
        with os.scandir(path) as listing:
            return sorted(listing, key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []  # removed meanwhile (a cache deletion takes an empty project dir with it)


def _subdirs(path: Path, on_link: OnLink) -> list[Path]:
    """Real subdirectories; a link in their place is reported and left alone."""
    found = []
    for entry in _entries(path):
        if entry.is_symlink():
            on_link(Path(entry.path))
        elif entry.is_dir(follow_symlinks=False):
            found.append(Path(entry.path))
    return found
