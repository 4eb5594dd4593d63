"""Per-namespace limit on materialized worktrees, so one tenant cannot fill the volume.

Worktrees only: a CacheOnly Workspace writes none (its pin is a ref in the cache),
so it is never held back here and never counted (materialize.py asks only for
Worktree Workspaces; only worktrees leave completion records).

A worktree counts from the moment its materialization is admitted until its
Workspace is deleted: what is on the volume (completion records under
`<root>/<namespace>/*/.ready/`) plus what this process is materializing now.
Admission is decided without an `await` between counting and reserving, so
concurrent materializations in one process cannot overshoot. Replicas share
the work by project, so with N replicas a namespace can overshoot by at most
N-1 until the next admission sees their records.
"""

from __future__ import annotations

from pathlib import Path

from workspace_operator.git import completed_worktrees


def materialized(root: Path, namespace: str) -> set[str]:
    """Names of the namespace's completed worktrees, as the engine reports them."""
    return completed_worktrees(root, namespace)


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
