"""This process's membership: a heartbeat Lease, the live peers, and its share.

Every `interval` (a sixth of the lease duration) the heartbeat Lease is renewed
(guarded by resourceVersion) and the member Leases are listed into a
`membership.MemberView`. A project belongs to the live member with the highest
rendezvous weight. While the heartbeat has not been confirmed within the renew
deadline (2/3 of the duration) this process is *fenced*: it owns nothing, its
project Leases refuse to start git (lock.py), and peers may take its project
Leases over as soon as its heartbeat is expired by their clocks. A fenced process
rejoins under a new identity, so no peer can mistake it for its old, dead self.

Heartbeats expired for a further lease duration are deleted (resourceVersion
precondition); on clean shutdown the process deletes its own at once, so peers
take over its share within one listing interval instead of a lease duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from workspace_operator import metrics
from workspace_operator.kube import Kube, LeaseConflict
from workspace_operator.lock import MANAGED_BY, LeaseLocks, new_identity
from workspace_operator.membership import MEMBER_LABEL, MemberView, member_lease_name, owner

log = logging.getLogger("workspace_operator.members")

SELECTOR = f"{MEMBER_LABEL}=true"


class Members:
    def __init__(
        self,
        kube: Kube,
        locks: LeaseLocks,
        *,
        namespace: str,
        prefix: str,
        duration_seconds: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube, self.locks, self.namespace, self.prefix = kube, locks, namespace, prefix
        self.duration = duration_seconds
        self.interval = max(0.5, duration_seconds / 6)
        self.deadline = duration_seconds * 2 / 3
        self.clock = clock
        self.view = MemberView(clock, forget_after_seconds=10 * duration_seconds)
        self.members: frozenset[str] = frozenset()
        self.changed = asyncio.Event()  # set on every change of `members`; consumers clear it
        self._confirmed_at: float | None = None
        self._version: str | None = None
        self._retired: set[str] = set()
        self._stopped = False
        locks.alive = self.alive
        locks.holder_gone = self.view.is_dead

    @property
    def identity(self) -> str:
        return self.locks.identity

    def alive(self) -> bool:
        """Heartbeat confirmed within the renew deadline: allowed to own and to write."""
        return (
            not self._stopped and self._confirmed_at is not None and self.clock() - self._confirmed_at <= self.deadline
        )

    def owns(self, namespace: str, project: str) -> bool:
        return self.alive() and owner(namespace, project, self.members) == self.identity

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            started = self.clock()
            await self.beat()
            if (took := self.clock() - started) > self.deadline / 2:
                log.warning("heartbeat round took %.1fs (renew deadline %.1fs): API server slow?", took, self.deadline)

    async def beat(self) -> None:
        """Renew our heartbeat, list everyone's, update the live set."""
        if self._stopped:
            return
        if self._confirmed_at is not None and not self.alive() and not self._stopped:
            await self._rejoin(f"heartbeat not confirmed for {self.clock() - self._confirmed_at:.1f}s")
        sent = self.clock()
        try:
            record = await self.kube.write_heartbeat(
                self.namespace,
                member_lease_name(self.identity),
                holder=self.identity,
                duration_seconds=self.duration,
                labels={MEMBER_LABEL: "true", **MANAGED_BY},
                resource_version=self._version,
            )
            self._version, self._confirmed_at = record.resource_version, sent
        except LeaseConflict as error:
            await self._rejoin(f"heartbeat changed or deleted by a peer ({error})")
        except Exception as error:  # noqa: BLE001 - API unreachable: retried next beat, fenced at the deadline
            log.warning("renewing heartbeat failed: %s", error)
        try:
            self.view.observe(await self.kube.list_leases(self.namespace, SELECTOR, heartbeat=True))
            for stale in self.view.stale(grace_seconds=self.duration):
                if await self.kube.delete_lease(self.namespace, stale.name, stale.resource_version, heartbeat=True):
                    log.info("deleted the heartbeat of dead member %s", stale.holder)
        except Exception as error:  # noqa: BLE001 - API trouble: the view is refreshed next beat
            log.warning("listing members failed: %s", error)
        self._update()

    async def _rejoin(self, why: str) -> None:
        old, old_version = self.identity, self._version
        self._retired.add(old)
        self.locks.identity = new_identity(self.prefix)
        self._confirmed_at, self._version = None, None
        log.warning("membership lost: %s; fenced, rejoining as %s (was %s)", why, self.identity, old)
        if old_version is not None:
            with contextlib.suppress(Exception):  # peers will delete it after expiry anyway
                await self.kube.delete_lease(self.namespace, member_lease_name(old), old_version, heartbeat=True)
        self._update()

    def _update(self) -> None:
        live = self.view.live()
        self._retired &= live  # a retired identity whose heartbeat is gone needs no more care
        peers = {m for m in live if m not in self._retired and m != self.identity}
        members = frozenset(peers | ({self.identity} if self.alive() else set()))
        if members != self.members:
            joined, left = sorted(members - self.members), sorted(self.members - members)
            log.info(
                "membership: %d live member(s)%s%s",
                len(members),
                f", joined {', '.join(joined)}" if joined else "",
                f", left {', '.join(left)}" if left else "",
            )
            self.members = members
            self.changed.set()
        metrics.MEMBERS.set(len(members))

    async def stop(self) -> None:
        """Leave: fence ourselves first, then delete the heartbeat so peers take over at once."""
        self._stopped = True
        self._update()
        version, self._version = self._version, None
        if version is not None:
            try:
                await self.kube.delete_lease(self.namespace, member_lease_name(self.identity), version, heartbeat=True)
                log.info("left the membership (heartbeat deleted)")
            except Exception as error:  # noqa: BLE001 - peers expire it anyway
                log.warning("deleting heartbeat failed (peers will expire it): %s", error)
