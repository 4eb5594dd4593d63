"""Writing worktree files in parallel, outside the Lease, and keeping GC away meanwhile.

After its exclusive step (resolve, fetch, register) a materialization writes its
worktree's files holding only a slot here: at most `limit` at once per process
(sized from the pod's CPUs), any number of projects. Until it has written its
completion record its name is *in flight*: garbage collection treats in-flight
names as live Workspaces, so it never removes their worktree nor their cache.

Across replicas the same holds without this registry: a worktree being written
belongs to an existing Workspace (live for every replica's GC), and a directory
without one is removed only after the orphan grace period.

Slots are granted fairly between namespaces (`FairSlots` of the git engine, which
grants git process slots the same way): round-robin over the namespaces that have
someone waiting, first come first served within each, so a burst of hundreds of
Workspaces in one namespace does not hold up another namespace's single Workspace
behind all of them.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from workspace_operator.git import FairSlots


def default_limit(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """One checkout per CPU the pod may use (its cgroup quota, else the CPUs it may run on), at least 2."""
    try:
        cpus = float(len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        cpus = float(os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return max(2, math.ceil(cpus))


class Checkouts:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("checkout concurrency must be at least 1")
        self.limit = limit
        self._slots = FairSlots(limit)
        self._in_flight: Counter[tuple[str, str, str]] = Counter()

    @contextlib.contextmanager
    def in_flight(self, namespace: str, project: str, name: str) -> Iterator[None]:
        key = (namespace, project, name)
        self._in_flight[key] += 1
        try:
            yield
        finally:
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]

    def busy(self, namespace: str, project: str) -> set[str]:
        """Names of the project being materialized by this process right now."""
        return {name for ns, proj, name in self._in_flight if (ns, proj) == (namespace, project)}

    def slot(self, namespace: str) -> contextlib.AbstractAsyncContextManager[None]:
        """One of the `limit` slots, granted fairly between namespaces (FairSlots)."""
        return self._slots.slot(namespace)
