"""Slots granted fairly between namespaces: round-robin over the namespaces waiting.

Used for every git process of the operator (runner.py) and for writing worktree
files (checkouts.py), so a burst of hundreds of Workspaces in one namespace -- or
a few on an upstream that trickles until the git timeout -- does not hold up
another namespace's single Workspace behind all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Who gets a slot: round-robin over the namespaces waiting, FIFO within each.

    With `reserve` (and 3 slots or more), the last free slot goes only to a namespace
    holding fewer than half of them: a slot freed by anyone goes round-robin, but one
    tenant whose calls all hang (an upstream trickling bytes until the git timeout) can
    never hold every slot, so another namespace is not kept waiting for the timeout.
    A namespace alone uses all but one. Bookkeeping only (no asyncio, no clock):
    `acquire` says whether a waiter got a slot at once, `release` which waiter the
    freed slot goes to.
    """

    def __init__(self, limit: int, *, reserve: bool = False) -> None:
        self.limit = limit
        self.free = limit
        self.reserve = reserve and limit >= 3
        self.held: Counter[str] = Counter()
        # Namespaces with waiters, in the order they are served next (a dict keeps insertion order).
        self._waiting: dict[str, deque[T]] = {}

    def _may_take(self, namespace: str) -> bool:
        return self.free > 1 or not self.reserve or self.held[namespace] * 2 < self.limit

    def _take(self, namespace: str) -> None:
        self.free -= 1
        self.held[namespace] += 1

    def acquire(self, namespace: str, waiter: T) -> bool:
        """True: the slot is the waiter's now. False: it waits for a `release` to name it.

        A slot is free while others wait only if none of them may take it (the reserve).
        """
        if self.free and self._may_take(namespace) and namespace not in self._waiting:
            self._take(namespace)
            return True
        self._waiting.setdefault(namespace, deque()).append(waiter)
        return False

    def release(self, namespace: str) -> tuple[str, T] | None:
        """A slot `namespace` held came back: (namespace, waiter) it goes to, or None (it stays free)."""
        self.free += 1
        self.held[namespace] -= 1
        if self.held[namespace] <= 0:
            del self.held[namespace]
        for candidate in list(self._waiting):  # round-robin order
            if self._may_take(candidate):
                queue = self._waiting.pop(candidate)
                waiter = queue.popleft()
                if queue:
                    self._waiting[candidate] = queue  # its next waiter goes to the end of the round
                self._take(candidate)
                return candidate, waiter
        return None

    def withdraw(self, namespace: str, waiter: T) -> None:
        """A waiter that gave up before it was granted a slot."""
        queue = self._waiting.get(namespace)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._waiting[namespace]

    def waiting(self) -> int:
        return sum(map(len, self._waiting.values()))


class FairSlots:
    """`limit` slots for asyncio tasks, granted by a FairQueue (`reserve`: see there)."""

    def __init__(self, limit: int, *, reserve: bool = False) -> None:
        if limit < 1:
            raise ValueError("a slot limit must be at least 1")
        self.limit = limit
        self._queue: FairQueue[asyncio.Future[None]] = FairQueue(limit, reserve=reserve)

    @contextlib.asynccontextmanager
    async def slot(self, namespace: str) -> AsyncIterator[None]:
        """One of the `limit` slots, granted fairly between namespaces."""
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._queue.acquire(namespace, granted):
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release(namespace)  # granted just as it was cancelled: pass the slot on
                else:
                    self._queue.withdraw(namespace, granted)
                raise
        try:
            yield
        finally:
            self._release(namespace)

    def waiting(self) -> int:
        return self._queue.waiting()

    def _release(self, namespace: str) -> None:
        while (grant := self._queue.release(namespace)) is not None:
            namespace, waiter = grant
            if not waiter.done():
                waiter.set_result(None)
                return
            # cancelled meanwhile: the slot it was given comes straight back
