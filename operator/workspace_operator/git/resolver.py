"""Host name lookups for the URL policy: a few threads of their own, a hard deadline each.

`getaddrinfo` blocks the thread it runs on for as long as the name server takes,
and a hostile name server (any tenant's own domain) never answers. On the event
loop's default executor such lookups would take the threads every other blocking
call of the process needs (the Kubernetes API calls among them); here at most
`RESOLVER_THREADS` threads ever sit in them, and a lookup not answered within its
deadline fails (policy.py says why) while its thread finishes in the background.
A lookup still queued at its deadline is dropped without running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
from collections.abc import Callable

RESOLVER_THREADS = 4

Lookup = Callable[[str, int | None], list[str]]


def system_lookup(host: str, port: int | None) -> list[str]:
    """The addresses the system resolver gives for host (blocking)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


class Resolver:
    def __init__(self, threads: int = RESOLVER_THREADS, lookup: Lookup = system_lookup) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="resolve")
        self._lookup = lookup

    async def addresses(self, host: str, port: int | None, *, timeout: float) -> list[str] | None:
        """host's addresses; None if it does not resolve (git reports that, or needs no
        network); TimeoutError when no answer came within `timeout` seconds."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pool, self._lookup, host, port), timeout)
        except TimeoutError:
            raise  # an OSError too, but no answer is not "does not resolve"
        except (OSError, UnicodeError):
            return None


_shared: Resolver | None = None


def shared_resolver() -> Resolver:
    """The process's resolver: its thread bound holds whatever number of engines exist."""
    global _shared
    if _shared is None:
        _shared = Resolver()
    return _shared
