"""Host name lookups for the URL policy: threads of their own, a hard deadline each,
and at most a few threads per namespace.

`getaddrinfo` blocks the thread it runs on for as long as the name server takes,
and a hostile name server (any tenant's own domain) never answers. On the event
loop's default executor such lookups would take the threads every other blocking
call of the process needs (the Kubernetes API calls among them). Here:

* at most `RESOLVER_THREADS` threads ever sit in lookups;
* a lookup not answered within its deadline fails (policy.py says why); one still
  waiting for a thread at its deadline is dropped without running;
* a namespace's lookups hold at most `PER_NAMESPACE` of the threads -- counted until
  the system resolver gives up, past their deadline -- and wait for one of their own
  to finish otherwise, so one tenant's unanswered names leave the other threads to
  everyone else.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
from collections import Counter, deque
from collections.abc import Callable

RESOLVER_THREADS = 8
PER_NAMESPACE = 2

Lookup = Callable[[str, int | None], list[str]]
_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


def system_lookup(host: str, port: int | None) -> list[str]:
    """The addresses the system resolver gives for host (blocking)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


class Resolver:
    def __init__(
        self, threads: int = RESOLVER_THREADS, per_namespace: int = PER_NAMESPACE, lookup: Lookup = system_lookup
    ) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="resolve")
        self._per_namespace = per_namespace
        self._lookup = lookup
        # Threads and waiters per namespace; released from the lookup's own thread.
        self._lock = threading.Lock()
        self._holding: Counter[str] = Counter()
        self._waiting: dict[str, deque[_Waiter]] = {}

    async def addresses(self, host: str, port: int | None, *, timeout: float, namespace: str = "") -> list[str] | None:
        """host's addresses; None if it does not resolve (git reports that, or needs no
        network); TimeoutError when no answer came within `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._turn(namespace)
                job = self._pool.submit(self._lookup, host, port)
                job.add_done_callback(lambda _: self._release(namespace))  # also when dropped unstarted
                return await asyncio.wrap_future(job)
        except TimeoutError:
            raise  # an OSError too, but no answer is not "does not resolve"
        except (OSError, UnicodeError):
            return None

    async def _turn(self, namespace: str) -> None:
        """Wait until the namespace may hold one more thread; it holds it on return."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._holding[namespace] < self._per_namespace and namespace not in self._waiting:
                self._holding[namespace] += 1
                return
            granted: asyncio.Future[None] = loop.create_future()
            self._waiting.setdefault(namespace, deque()).append((loop, granted))
        try:
            await granted
        except asyncio.CancelledError:
            with self._lock:
                queue = self._waiting.get(namespace)
                if queue is not None and (loop, granted) in queue:
                    queue.remove((loop, granted))
                    if not queue:
                        del self._waiting[namespace]
                    raise
            if granted.done() and not granted.cancelled():
                self._release(namespace)  # granted just as it was cancelled: pass it on
            raise  # else `_grant`, still to run, passes it on

    def _release(self, namespace: str) -> None:
        with self._lock:
            queue = self._waiting.get(namespace)
            if not queue:
                self._holding[namespace] -= 1
                if not self._holding[namespace]:
                    del self._holding[namespace]
                return
            loop, granted = queue.popleft()  # the thread passes to it: `_holding` stays
            if not queue:
                del self._waiting[namespace]
        try:
            loop.call_soon_threadsafe(self._grant, namespace, granted)
        except RuntimeError:  # its loop is closed: the next one
            self._release(namespace)

    def _grant(self, namespace: str, granted: asyncio.Future[None]) -> None:
        if granted.done():  # cancelled meanwhile
            self._release(namespace)
        else:
            granted.set_result(None)


_shared: Resolver | None = None


def shared_resolver() -> Resolver:
    """The process's resolver: its thread bound holds whatever number of engines exist."""
    global _shared
    if _shared is None:
        _shared = Resolver()
    return _shared
