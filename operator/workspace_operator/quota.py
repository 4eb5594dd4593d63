"""Per-namespace limit on materialized worktrees, so one tenant cannot fill the volume.

A worktree counts from the moment its materialization is admitted until its
Workspace is deleted: what is on the volume (completion records under
`<root>/<namespace>/*/.ready/`) plus what this process is materializing now.
Admission is decided without an `await` between counting and reserving, so
concurrent materializations in one process cannot overshoot. Replicas share
the work by project, so with N replicas a namespace can overshoot by at most
N-1 until the next admission sees their records.
"""

from __future__ import annotations

import os
from pathlib import Path

from workspace_operator.git.layout import DNS1123_LABEL, READY_DIR


def materialized(root: Path, namespace: str) -> set[str]:
    """Names of the namespace's completed worktrees; symlinks are never followed."""
    names: set[str] = set()
    for project in _entries(root / namespace):
        if project.is_dir(follow_symlinks=False) and DNS1123_LABEL.match(project.name):
            names.update(record.name for record in _entries(Path(project.path) / READY_DIR)
                         if record.is_file(follow_symlinks=False) and DNS1123_LABEL.match(record.name))
    return names


def _entries(path: Path) -> list[os.DirEntry[str]]:
    try:
        if path.is_symlink():
            return []
        with os.scandir(path) as listing:
            return list(listing)
    except (FileNotFoundError, NotADirectoryError):
        return []


class NamespaceQuota:
    def __init__(self, root: Path, limit: int) -> None:
        self.root = root
        self.limit = limit  # 0: unlimited
        self._in_flight: dict[str, set[str]] = {}

    def admit(self, namespace: str, name: str) -> bool:
        """Reserve a place for this Workspace's worktree; False if the namespace is full."""
        if not self.limit:
            return True
        flying = self._in_flight.setdefault(namespace, set())
        if name in flying:
            return True
        used = (materialized(self.root, namespace) | flying) - {name}
        if len(used) >= self.limit:
            if not flying:
                del self._in_flight[namespace]
            return False
        flying.add(name)
        return True

    def release(self, namespace: str, name: str) -> None:
        """The materialization ended: from now on its completion record (if any) counts."""
        flying = self._in_flight.get(namespace)
        if flying is not None:
            flying.discard(name)
            if not flying:
                del self._in_flight[namespace]
