"""One Lease hold per burst: a replica's queue of a project's exclusive steps.

Each operation that must run under the project's Lease (resolve + fetch +
worktree registration, or a worktree's removal) is queued here as a step. The
first step of an idle project starts a drainer, which takes the Lease once and
runs every step queued meanwhile, one after another, then (queue empty) an
optional idle step such as time-boxed cache maintenance, and releases. Steps
arriving while the Lease is being released start the next drainer.

A step runs in a task of its own: its caller giving up (cancellation) kills
just that step's git; the Lease being lost kills the running step and fails
every queued one with `LeaseLost`, to be retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from workspace_operator.lock import LeaseLocks, LockTimeout, lease_name

log = logging.getLogger("workspace_operator.batching")

T = TypeVar("T")
Key = tuple[str, str]  # (namespace, project)
IdleStep = Callable[[str, str], Awaitable[None]]


@dataclass
class _Item(Generic[T]):
    step: Callable[[], Coroutine[Any, Any, T]]
    enqueued: float
    future: asyncio.Future[tuple[T, float]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    started: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[T] | None = None


class ProjectQueues:
    def __init__(
        self, locks: LeaseLocks, *, idle: IdleStep | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.locks = locks
        self.idle = idle
        self.clock = clock
        self._queues: dict[Key, deque[_Item[Any]]] = {}
        self._drainers: dict[Key, asyncio.Task[None]] = {}
        self.holds = 0  # Lease acquisitions made, for tests and metrics
        self._current: dict[Key, int] = {}  # project -> number of the hold its drainer is in

    def hold_id(self, namespace: str, project: str) -> int | None:
        """Which Lease hold the project's steps run in now (a step asks while it runs).

        Within one hold nothing else writes the project's cache, so what a step
        found out about the cache still holds for the next step of the same hold.
        """
        return self._current.get((namespace, project))

    async def run(
        self, namespace: str, project: str, step: Callable[[], Coroutine[Any, Any, T]], *, wait_seconds: float
    ) -> tuple[T, float]:
        """Run `step` under the project's Lease; its result and the seconds it waited to start.

        Raises LockTimeout if the step could not start within `wait_seconds`.
        """
        key = (namespace, project)
        item: _Item[T] = _Item(step, self.clock())
        self._queues.setdefault(key, deque()).append(item)
        if key not in self._drainers:
            self._start(key, wait_seconds)
        try:
            if not await _started(item, wait_seconds):
                item.future.cancel()  # the drainer skips it
                raise LockTimeout(
                    f"waited {wait_seconds:.0f}s for lock {lease_name(namespace, project)} (queued in this process)"
                )
            return await asyncio.shield(item.future)
        except asyncio.CancelledError:
            if item.task is not None:
                item.task.cancel()  # kills the step's git; the drainer goes on with the next
            item.future.cancel()
            raise

    def _start(self, key: Key, wait_seconds: float) -> None:
        self._drainers[key] = asyncio.create_task(self._drain(key, wait_seconds), name=f"drain {key[0]}/{key[1]}")

    async def _drain(self, key: Key, wait_seconds: float) -> None:
        namespace, project = key
        queue = self._queues[key]
        current: _Item[Any] | None = None
        try:
            async with self.locks.hold(namespace, project, wait_seconds=wait_seconds):
                self.holds += 1
                self._current[key] = self.holds
                while queue:
                    while queue:
                        current = queue.popleft()
                        await self._run(current)
                        current = None
                    if self.idle is not None:
                        try:
                            await self.idle(namespace, project)
                        except Exception:  # upkeep is optional: never fail the steps queued meanwhile
                            log.exception("idle step on %s/%s failed", namespace, project)
        except BaseException as error:
            failed = [item for item in ([current] if current else []) + list(queue) if not item.future.done()]
            queue.clear()
            for item in failed:
                if isinstance(error, Exception):
                    item.future.set_exception(error)
                else:
                    item.future.cancel()
            if not isinstance(error, Exception):
                raise
            log.info("project %s/%s: %d queued step(s) failed: %s", namespace, project, len(failed), error)
        finally:
            self._current.pop(key, None)
            del self._drainers[key]
            if queue:
                self._start(key, wait_seconds)  # arrived while the Lease was being released
            else:
                del self._queues[key]

    async def _run(self, item: _Item[Any]) -> None:
        if item.future.done():
            return  # its caller gave up
        waited = self.clock() - item.enqueued
        item.task = asyncio.create_task(item.step())
        item.started.set()
        try:
            result = await item.task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                raise  # the drainer itself is stopped (Lease lost, shutdown)
            if not item.future.done():
                item.future.cancel()
            return
        except Exception as error:  # noqa: BLE001 - handed to the step's waiter, which re-raises it
            if not item.future.done():
                item.future.set_exception(error)
            return
        if not item.future.done():
            item.future.set_result((result, waited))


async def _started(item: _Item[Any], wait_seconds: float) -> bool:
    """Wait until the item's step started (or ended); False if that took longer than allowed.

    asyncio.wait, not wait_for: it never swallows a cancellation of the caller
    that coincides with the step starting.
    """
    waiter = asyncio.ensure_future(item.started.wait())
    either: set[asyncio.Future[Any]] = {waiter, item.future}
    try:
        await asyncio.wait(either, timeout=wait_seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return item.started.is_set() or item.future.done()
