"""The attack of a name server that never answers, run inside `unshare --mount --net`
(test_dns_tarpit.py sets up loopback and bind-mounts /etc/resolv.conf to 127.0.0.1).

    python dns_tarpit.py VOLUME WORKSPACES RESOLVE_TIMEOUT

A UDP socket on 127.0.0.1:53 reads every query and never replies. This replica
(the operator's own thread pool setup, project Lease locks and membership heartbeat
on a 3 s Lease, i.e. a 2 s renew deadline; an in-memory stand-in for the Lease API)
holds one project Lease of another tenant while WORKSPACES Workspaces of the
attacker's namespace, each its own project and host, are prepared, and then one of
that other tenant. Prints one JSON line: how the Workspaces ended, and whether the
Lease and the heartbeat stayed alive while the lookups' threads still hung.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kubernetes.client import ApiClient, V1Lease, V1ObjectMeta
from kubernetes.client.exceptions import ApiException

from workspace_operator.git import CheckoutRequest, Engine, GitError, GitSettings
from workspace_operator.kube import Kube, configure_thread_pool
from workspace_operator.lock import LeaseLocks, LeaseLost
from workspace_operator.members import Members

DURATION = 3  # seconds: renewals every 0.5 s, fenced when none succeeded for 2 s


class Leases:
    """The coordination/v1 Lease calls the operator makes, in memory (synchronous, like the client)."""

    def __init__(self) -> None:
        self.leases: dict[str, V1Lease] = {}
        self.writes: Counter[str] = Counter()  # successful replaces per Lease
        self._lock = threading.Lock()

    def _missing(self, name: str) -> None:
        if name not in self.leases:
            raise ApiException(status=404, reason="Not Found")

    def read_namespaced_lease(self, name: str, namespace: str) -> V1Lease:
        with self._lock:
            self._missing(name)
            return copy.deepcopy(self.leases[name])

    def create_namespaced_lease(self, namespace: str, body: V1Lease) -> V1Lease:
        with self._lock:
            name = str(_meta(body).name)
            if name in self.leases:
                raise ApiException(status=409, reason="Conflict")
            return self._store(name, body, version=1)

    def replace_namespaced_lease(self, name: str, namespace: str, body: V1Lease) -> V1Lease:
        with self._lock:
            self._missing(name)
            current = int(str(_meta(self.leases[name]).resource_version))
            if _meta(body).resource_version != str(current):
                raise ApiException(status=409, reason="Conflict")
            self.writes[name] += 1
            return self._store(name, body, version=current + 1)

    def patch_namespaced_lease(self, name: str, namespace: str, body: Any) -> None:
        with self._lock:
            self.leases.pop(name, None)  # released: the next holder creates it

    def list_namespaced_lease(self, namespace: str, label_selector: str) -> SimpleNamespace:
        key, _, value = label_selector.partition("=")
        with self._lock:
            found = [
                copy.deepcopy(lease) for lease in self.leases.values() if (_meta(lease).labels or {}).get(key) == value
            ]
        return SimpleNamespace(items=found)

    def delete_namespaced_lease(self, name: str, namespace: str, body: Any) -> None:
        with self._lock:
            self.leases.pop(name, None)

    def _store(self, name: str, body: V1Lease, version: int) -> V1Lease:
        stored = copy.deepcopy(body)
        _meta(stored).name, _meta(stored).resource_version = name, str(version)
        self.leases[name] = stored
        return copy.deepcopy(stored)


def _meta(lease: V1Lease) -> V1ObjectMeta:
    assert lease.metadata is not None
    return lease.metadata


def never_answer() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 53))
    threading.Thread(target=lambda: [server.recvfrom(4096) for _ in iter(int, 1)], daemon=True).start()


async def attack(volume: Path, count: int, resolve_timeout: float) -> None:
    configure_thread_pool(asyncio.get_running_loop())  # as the operator does
    api = Leases()
    locks = LeaseLocks(api, "ops", "replica", duration_seconds=DURATION)  # type: ignore[arg-type]
    kube = Kube(ApiClient())
    kube.coordination = api  # type: ignore[assignment]
    members = Members(kube, locks, namespace="ops", prefix="replica", duration_seconds=DURATION)
    await members.beat()
    heartbeat = asyncio.create_task(members.run())
    engine = Engine(volume, GitSettings(resolve_timeout_seconds=resolve_timeout))
    requests = [
        CheckoutRequest("tenant-a", f"p{i}", "ws", f"https://h{i}.attacker.example/r.git") for i in range(count)
    ]
    outcome: Counter[str] = Counter()
    result: dict[str, Any] = {"lease_lost": False}
    try:
        async with locks.hold("tenant-b", "web", wait_seconds=10):
            started = time.monotonic()
            hostile = [asyncio.ensure_future(engine.prepare(engine.validate(r))) for r in requests]
            await asyncio.sleep(0.5)  # the attacker's lookups hang on their threads
            # Another tenant's host (from /etc/hosts, no name server): its lookup is not
            # queued behind the attacker's, so the URL policy answers at once.
            try:
                await engine.prepare(
                    engine.validate(CheckoutRequest("tenant-b", "web", "ws", "https://localhost/r.git"))
                )
            except GitError as error:
                result["victim"] = f"{error.reason}: {error.message}"
            await asyncio.wait(hostile, timeout=resolve_timeout + 8)
            result["seconds"] = time.monotonic() - started
            for task in hostile:
                failure = task.exception() if task.done() else None
                outcome[f"{failure.reason}: {failure.message}" if isinstance(failure, GitError) else repr(failure)] += 1
            # The lookups' threads still hang (the name server never answers): hold on past a renew deadline.
            await asyncio.sleep(DURATION)
    except LeaseLost:
        result["lease_lost"] = True
    result.update(
        outcomes=dict(outcome),
        lease_renewals=sum(n for name, n in api.writes.items() if name.startswith("ws-")),
        heartbeat_alive=members.alive(),
    )
    heartbeat.cancel()
    print(json.dumps(result), flush=True)
    # Now, not through asyncio.run's end: threads still in getaddrinfo would hold the
    # exit until the system resolver gives up.
    os._exit(0)


def main() -> None:
    volume, count, resolve_timeout = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    never_answer()
    asyncio.run(attack(volume, count, resolve_timeout))


if __name__ == "__main__":
    main()
