"""The per-project queue: one Lease hold per burst, failures and cancellation per step.

Pure asyncio against a small in-process stand-in for LeaseLocks (no control plane).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from workspace_operator.batching import ProjectQueues
from workspace_operator.checkouts import Checkouts, default_limit
from workspace_operator.git import FairQueue
from workspace_operator.lock import LeaseLost, LockTimeout


class FakeLocks:
    """Counts holds; `fail` makes the next hold raise; `held` tells whether one is open."""

    def __init__(self) -> None:
        self.holds = 0
        self.held = False
        self.fail: Exception | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    @contextlib.asynccontextmanager
    async def hold(self, namespace: str, project: str, *, wait_seconds: float) -> AsyncIterator[float]:
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        assert not self.held, "two holds of one project at once"
        self.holds += 1
        self.held = True
        try:
            yield 0.0
        finally:
            self.held = False


def queues(locks: FakeLocks, **kwargs: Any) -> ProjectQueues:
    return ProjectQueues(locks, **kwargs)  # type: ignore[arg-type]


async def test_a_burst_is_served_under_one_hold_in_arrival_order() -> None:
    locks = FakeLocks()
    q = queues(locks)
    order: list[int] = []

    async def step(i: int) -> int:
        assert locks.held
        order.append(i)
        await asyncio.sleep(0)
        return i * 10

    results = await asyncio.gather(*(q.run("ns", "p", functools.partial(step, i), wait_seconds=5) for i in range(20)))
    assert [result for result, _waited in results] == [i * 10 for i in range(20)]
    assert order == list(range(20))
    assert locks.holds == 1
    assert all(waited >= 0 for _result, waited in results)


async def test_projects_are_held_separately_and_a_later_burst_takes_a_new_hold() -> None:
    locks = FakeLocks()
    q = queues(locks)

    async def step() -> None:
        return None

    await q.run("ns", "a", step, wait_seconds=5)
    await q.run("ns", "a", step, wait_seconds=5)
    assert locks.holds == 2
    assert not locks.held


async def test_a_failing_step_fails_only_its_caller() -> None:
    q = queues(FakeLocks())

    async def boom() -> int:
        raise ValueError("bad step")

    async def fine() -> int:
        return 1

    outcomes = await asyncio.gather(
        q.run("ns", "p", boom, wait_seconds=5), q.run("ns", "p", fine, wait_seconds=5), return_exceptions=True
    )
    assert isinstance(outcomes[0], ValueError)
    assert outcomes[1] == (1, pytest.approx(outcomes[1][1]))  # type: ignore[index]


async def test_lock_failure_fails_every_queued_step() -> None:
    locks = FakeLocks()
    locks.fail = LockTimeout("busy elsewhere")
    q = queues(locks)
    ran: list[int] = []

    async def step() -> None:
        ran.append(1)

    outcomes = await asyncio.gather(*(q.run("ns", "p", step, wait_seconds=5) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(o, LockTimeout) for o in outcomes) and ran == []


async def test_lease_lost_mid_step_fails_it_and_the_queue() -> None:
    locks = FakeLocks()
    q = queues(locks)
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(30)

    async def quick() -> None:
        return None

    first = asyncio.create_task(q.run("ns", "p", slow, wait_seconds=5))
    second = asyncio.create_task(q.run("ns", "p", quick, wait_seconds=5))
    await asyncio.wait_for(started.wait(), 5)
    drainer = q._drainers[("ns", "p")]
    drainer.cancel()  # what Renewal does when the Lease is lost; LeaseLocks turns it into LeaseLost
    for task in (first, second):
        with pytest.raises((LeaseLost, asyncio.CancelledError)):
            await asyncio.wait_for(task, 5)
    assert not locks.held


async def test_a_cancelled_caller_stops_its_step_and_the_queue_goes_on() -> None:
    q = queues(FakeLocks())
    started = asyncio.Event()
    stopped = asyncio.Event()

    async def hung() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            stopped.set()

    async def next_one() -> str:
        return "served"

    first = asyncio.create_task(q.run("ns", "p", hung, wait_seconds=5))
    second = asyncio.create_task(q.run("ns", "p", next_one, wait_seconds=5))
    await asyncio.wait_for(started.wait(), 5)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(stopped.wait(), 5)
    assert (await asyncio.wait_for(second, 5))[0] == "served"


async def test_a_step_that_cannot_start_in_time_times_out_and_never_runs() -> None:
    locks = FakeLocks()
    locks.gate.clear()  # the Lease is held elsewhere
    q = queues(locks)
    ran: list[int] = []

    async def step() -> None:
        ran.append(1)

    with pytest.raises(LockTimeout):
        await q.run("ns", "p", step, wait_seconds=0.05)
    locks.gate.set()
    await q.run("ns", "p", step, wait_seconds=5)  # the next one is served; the timed-out one never ran
    assert ran == [1]


async def test_idle_step_runs_once_the_queue_is_empty_under_the_same_hold() -> None:
    locks = FakeLocks()
    idle_calls: list[tuple[str, str, bool]] = []

    async def idle(namespace: str, project: str) -> None:
        idle_calls.append((namespace, project, locks.held))

    q = queues(locks, idle=idle)

    async def step() -> None:
        return None

    await asyncio.gather(*(q.run("ns", "p", step, wait_seconds=5) for _ in range(5)))
    assert idle_calls == [("ns", "p", True)] and locks.holds == 1


async def test_checkout_slots_bound_parallelism_and_track_names_in_flight() -> None:
    checkouts = Checkouts(2)
    running = 0
    peak = 0

    async def populate(name: str) -> None:
        nonlocal running, peak
        with checkouts.in_flight("ns", "p", name):
            async with checkouts.slot("ns"):
                running += 1
                peak = max(peak, running)
                assert name in checkouts.busy("ns", "p")
                await asyncio.sleep(0.01)
                running -= 1

    await asyncio.gather(*(populate(f"w{i}") for i in range(6)))
    assert peak == 2
    assert checkouts.busy("ns", "p") == set()


def drain(queue: FairQueue[str], holders: list[str], releases: int) -> list[str | None]:
    """Each release frees the slot of the longest holder; returns who got each freed slot."""
    grants: list[str | None] = []
    for _ in range(releases):
        grant = queue.release(holders.pop(0))
        grants.append(grant[1] if grant else None)
        if grant:
            holders.append(grant[0])
    return grants


def test_one_namespace_burst_does_not_hold_up_another_namespace() -> None:
    """1 slot; 20 waiters of A queued before 1 of B: B gets the slot within the first 2 grants."""
    queue: FairQueue[str] = FairQueue(1)
    assert queue.acquire("a", "a-running")
    for index in range(20):
        assert not queue.acquire("a", f"a{index}")
    assert not queue.acquire("b", "b0")
    grants = drain(queue, ["a"], 22)
    assert "b0" in grants[:2], grants
    # FIFO within a namespace, nobody lost, and the slot is free once all are done.
    assert [g for g in grants if g and g.startswith("a")] == [f"a{index}" for index in range(20)]
    assert grants[-1] is None and queue.free == 1 and queue.waiting() == 0


def test_round_robin_over_the_namespaces_waiting() -> None:
    queue: FairQueue[str] = FairQueue(2)
    assert queue.acquire("a", "a-running") and queue.acquire("a", "a-running-too")
    for waiter in ("a1", "a2", "a3", "b1", "b2", "c1"):
        assert not queue.acquire(waiter[0], waiter)
    queue.withdraw("a", "a2")  # gave up while waiting
    holders = ["a", "a"]
    assert drain(queue, holders, 5) == ["a1", "b1", "c1", "a3", "b2"]
    assert drain(queue, holders, 1) == [None] and queue.free == 1


def test_with_the_reserve_one_namespace_never_holds_every_slot() -> None:
    """4 slots: a tenant whose calls all hang gets 3; the last goes to another namespace at
    once. Alone, the tenant still runs on 3, and nothing is stuck once its calls end."""
    queue: FairQueue[str] = FairQueue(4, reserve=True)
    assert all(queue.acquire("a", f"a{index}") for index in range(3))
    assert not queue.acquire("a", "a3") and queue.free == 1  # the last slot is kept
    assert queue.acquire("b", "b0")  # another namespace takes it at once
    assert not queue.acquire("b", "b1")  # now b waits like everyone
    holders = ["a", "a", "a", "b"]
    # a frees one and still holds half: the slot, the last free one, goes to b, not to a.
    # Then a, holding less than half, gets the next one.
    assert drain(queue, holders, 3) == ["b1", "a3", None]
    assert drain(queue, holders, 3) == [None, None, None]
    assert queue.free == 4 and not queue.held and queue.waiting() == 0


def test_without_enough_slots_there_is_no_reserve() -> None:
    queue: FairQueue[str] = FairQueue(2, reserve=True)
    assert queue.acquire("a", "a0") and queue.acquire("a", "a1")


async def test_checkout_slots_are_fair_between_namespaces_and_survive_cancellation() -> None:
    checkouts = Checkouts(1)
    order: list[str] = []
    gate = asyncio.Event()

    async def populate(namespace: str, name: str) -> None:
        async with checkouts.slot(namespace):
            order.append(name)
            await gate.wait()

    first = asyncio.create_task(populate("a", "a-first"))
    await asyncio.sleep(0)  # first holds the slot
    tasks = [asyncio.create_task(populate("a", f"a{index}")) for index in range(20)]
    quitter = asyncio.create_task(populate("b", "b-quitter"))
    late = asyncio.create_task(populate("b", "b0"))
    await asyncio.sleep(0)  # everyone is queued
    quitter.cancel()
    await asyncio.gather(quitter, return_exceptions=True)
    gate.set()
    await asyncio.gather(first, late, *tasks)
    assert order[0] == "a-first" and "b0" in order[1:3], order
    assert "b-quitter" not in order and len(order) == 22
    # The slot is free again: a newcomer gets it at once.
    async with checkouts.slot("c"):
        pass


def test_default_limit_follows_the_cgroup_quota(tmp_path: Path) -> None:
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert default_limit(quota) == 2
    quota.write_text("800000 100000\n")
    assert default_limit(quota) <= 8
    quota.write_text("max 100000\n")
    assert default_limit(quota) >= 2
    with pytest.raises(ValueError, match="at least 1"):
        Checkouts(0)
