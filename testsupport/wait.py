"""Deadline-bounded waits on conditions (never bare sleeps)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError, TimeoutError):
    """The condition did not hold by the deadline (a test failure, or a script's TimeoutError)."""


def wait_for(
    predicate: Callable[[], T | None],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str = "condition",
    swallow: bool = True,
) -> T:
    """Poll until predicate returns a truthy value and return it; WaitTimeout at the deadline.

    With `swallow`, exceptions from the predicate count as "not yet" and the last one is
    reported at the deadline; without it they propagate at once.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as error:
            if not swallow:
                raise
            last_error = error
        if time.monotonic() > deadline:
            raise WaitTimeout(
                f"timed out after {timeout}s waiting for {message}"
                + (f" (last error: {last_error})" if last_error else "")
            )
        time.sleep(interval)  # poll interval, not synchronisation


async def until(predicate: Callable[[], T | None], *, timeout: float = 30.0, message: str = "condition") -> T:
    """`wait_for` inside an event loop: polls without blocking the loop's other tasks."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(0.02)  # poll interval, not synchronisation
    return value
