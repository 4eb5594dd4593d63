"""Slots granted fairly between namespaces: round-robin over the namespaces waiting.

Used for every git process of the operator (runner.py) and for writing worktree
files (checkouts.py), so a burst of hundreds of Workspaces in one namespace -- or
a few on an upstream that trickles until the git timeout -- does not hold up
another namespace's single Workspace behind all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


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


class FairSlots:
    """`limit` slots for asyncio tasks, granted by a FairQueue."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a slot limit must be at least 1")
        self.limit = limit
        self._queue: FairQueue[asyncio.Future[None]] = FairQueue(limit)

    @contextlib.asynccontextmanager
    async def slot(self, namespace: str) -> AsyncIterator[None]:
        """One of the `limit` slots, granted fairly between namespaces."""
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._queue.acquire(namespace, granted):
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release()  # granted just as it was cancelled: pass the slot on
                else:
                    self._queue.withdraw(namespace, granted)
                raise
        try:
            yield
        finally:
            self._release()

    def waiting(self) -> int:
        return self._queue.waiting()

    def _release(self) -> None:
        while (waiter := self._queue.release()) is not None:
            if not waiter.done():  # else cancelled meanwhile: the slot goes to the next one
                waiter.set_result(None)
                return
