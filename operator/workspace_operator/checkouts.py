"""Writing worktree files in parallel, outside the Lease, and keeping GC away meanwhile.

After its exclusive step (resolve, fetch, register) a materialization writes its
worktree's files holding only a slot here: at most `limit` at once per process
(sized from the pod's CPUs), any number of projects. Until it has written its
completion record its name is *in flight*: garbage collection treats in-flight
names as live Workspaces, so it never removes their worktree nor their cache.

Across replicas the same holds without this registry: a worktree being written
belongs to an existing Workspace (live for every replica's GC), and a directory
without one is removed only after the orphan grace period.

Slots are granted fairly between namespaces (`FairQueue`): round-robin over the
namespaces that have someone waiting, first come first served within each, so a
burst of hundreds of Workspaces in one namespace does not hold up another
namespace's single Workspace behind all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


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


class FairQueue(Generic[T]):
    """Who gets a slot: round-robin over the namespaces waiting, FIFO within each.

    Bookkeeping only (no asyncio, no clock): `acquire` says whether a waiter got a
    slot at once, `release` which waiter the freed slot goes to.
    """

    def __init__(self, limit: int) -> None:
        self.free = limit
        # Namespaces with waiters, in the order they are served next (a dict keeps insertion order).
        self._waiting: dict[str, deque[T]] = {}

    def acquire(self, namespace: str, waiter: T) -> bool:
        """True: the slot is the waiter's now. False: it waits for a `release` to name it."""
        if self.free and not self._waiting:
            self.free -= 1
            return True
        self._waiting.setdefault(namespace, deque()).append(waiter)
        return False

    def release(self) -> T | None:
        """A slot came back: the waiter it goes to, or None (nobody waits; the slot is free)."""
        if not self._waiting:
            self.free += 1
            return None
        namespace = next(iter(self._waiting))
        queue = self._waiting.pop(namespace)
        waiter = queue.popleft()
        if queue:
            self._waiting[namespace] = queue  # the namespace's next waiter goes to the end of the round
        return waiter

    def withdraw(self, namespace: str, waiter: T) -> None:
        """A waiter that gave up before it was granted a slot."""
        queue = self._waiting.get(namespace)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._waiting[namespace]

    def waiting(self) -> int:
        return sum(map(len, self._waiting.values()))


class Checkouts:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("checkout concurrency must be at least 1")
        self.limit = limit
        self._slots: FairQueue[asyncio.Future[None]] = FairQueue(limit)
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

    @contextlib.asynccontextmanager
    async def slot(self, namespace: str) -> AsyncIterator[None]:
        """One of the `limit` slots, granted fairly between namespaces (FairQueue)."""
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._slots.acquire(namespace, granted):
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release()  # granted just as it was cancelled: pass the slot on
                else:
                    self._slots.withdraw(namespace, granted)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while (waiter := self._slots.release()) is not None:
            if not waiter.done():  # else cancelled meanwhile: the slot goes to the next one
                waiter.set_result(None)
                return
