"""Per-project mutual exclusion across operator replicas, on coordination.k8s.io Leases.

Semantics follow client-go's leader election:

* every process has a unique holder identity;
* a Lease is acquired by creating it, or by updating it (guarded by
  resourceVersion) when it is free or expired; a takeover bumps leaseTransitions;
* expiry is judged from the *local monotonic time at which this process last saw
  the record change*, never by comparing our clock with the holder's renewTime,
  so clock skew between nodes cannot cause a premature takeover;
* while held, a background task renews it; if no renewal succeeds within the
  renew deadline (2/3 of the duration) the guarded task is cancelled, which kills
  its git subprocess, and the operation fails as retryable (`LeaseLost`); renewals
  run on threads of their own, so no other work of the process delays them. Because
  the deadline is shorter than the duration, the old holder stops writing before
  anyone else may take over;
* release clears the holder so the next waiter need not wait for expiry.

Within one process an asyncio.Lock per Lease queues local contenders, so only
one of them polls the API server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes.client import CoordinationV1Api, V1Lease, V1LeaseSpec, V1ObjectMeta
from kubernetes.client.exceptions import ApiException

from workspace_operator import metrics
from workspace_operator.git import write_guard

log = logging.getLogger("workspace_operator.lock")

LABEL_NAMESPACE = "crafting.dev/namespace"
LABEL_PROJECT = "crafting.dev/project"
MANAGED_BY = {"app.kubernetes.io/managed-by": "workspace-operator"}


# Renewals run on threads of their own, never queued behind anything else: the
# default executor carries every other API call (bursts of them, as many as tenants
# create Workspaces) and the process's other blocking work.
RENEWAL_THREADS = 8
# The longest a holder waits for its release to be answered (never longer than the
# Lease's duration): a release is a courtesy to the next holder, who otherwise waits
# for the expiry.
RELEASE_SECONDS = 10.0
_renewals = concurrent.futures.ThreadPoolExecutor(RENEWAL_THREADS, thread_name_prefix="lease-renewal")


class LockTimeout(Exception):
    """The lock could not be acquired within the wait bound (retryable)."""


class LeaseLost(Exception):
    """The lock was lost while held; the guarded work was stopped (retryable)."""


def lease_name(namespace: str, project: str) -> str:
    """Deterministic, readable, and a valid object name; hash-suffixed when long."""
    name = f"ws-{namespace}.{project}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(f"{namespace}/{project}".encode()).hexdigest()[:10]
    return f"{name[:52].rstrip('.-')}-{digest}"


def new_identity(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@dataclass
class _Observed:
    """The last version of a Lease record we saw, and our local time of seeing it change."""

    key: tuple[Any, ...]
    seen_at: float


class LeaseLocks:
    """This process's project locks: queues local contenders, then holds the Lease.

    The protocol steps live in `LeaseRecords` (acquire, release) and `Renewal`
    (keep a held Lease fresh, fence the guarded task when that fails). While a
    Lease is held, every git process started under it is fenced first: it does
    not start unless the Lease was confirmed within the renew deadline.
    """

    def __init__(
        self,
        api: CoordinationV1Api,
        namespace: str,
        identity: str,
        *,
        duration_seconds: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.records = LeaseRecords(api, namespace, identity, duration_seconds, clock)
        self._local: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    # The membership heartbeat (members.py) changes the identity on rejoining and
    # wires `alive` and `holder_gone`; standalone users of the locks (tests, tools)
    # run without one.
    @property
    def identity(self) -> str:
        return self.records.identity

    @identity.setter
    def identity(self, value: str) -> None:
        self.records.identity = value

    @property
    def alive(self) -> Callable[[], bool]:
        return self.records.alive

    @alive.setter
    def alive(self, value: Callable[[], bool]) -> None:
        self.records.alive = value

    @property
    def holder_gone(self) -> Callable[[str], bool]:
        return self.records.holder_gone

    @holder_gone.setter
    def holder_gone(self, value: Callable[[str], bool]) -> None:
        self.records.holder_gone = value

    @contextlib.asynccontextmanager
    async def hold(self, namespace: str, project: str, *, wait_seconds: float) -> AsyncIterator[float]:
        """Hold the project's Lease for the block; yields the seconds spent waiting."""
        name = lease_name(namespace, project)
        labels = {LABEL_NAMESPACE: namespace, LABEL_PROJECT: project, **MANAGED_BY}
        started = self.clock()
        local = self._local.setdefault(name, asyncio.Lock())
        self._users[name] = self._users.get(name, 0) + 1
        try:
            try:
                await asyncio.wait_for(local.acquire(), timeout=wait_seconds)
            except TimeoutError:
                raise LockTimeout(f"waited {wait_seconds:.0f}s for lock {name} (held in this process)") from None
            try:
                async with self._held(name, labels, wait_seconds - (self.clock() - started)):
                    yield self.clock() - started
            finally:
                local.release()
        finally:
            # Forget a Lease nobody in this process holds or waits for: the maps stay
            # as small as the work in flight (the next acquisition observes afresh,
            # which can only make it wait longer, never shorter).
            self._users[name] -= 1
            if not self._users[name]:
                del self._users[name]
                self._local.pop(name, None)
                self.records.forget(name)

    @contextlib.asynccontextmanager
    async def _held(self, name: str, labels: dict[str, str], wait_seconds: float) -> AsyncIterator[None]:
        records = self.records
        lease, confirmed_at = await records.acquire(name, labels, wait_seconds)
        guarded = asyncio.current_task()
        assert guarded is not None
        renewal = Renewal(records, name, lease, confirmed_at, guarded)

        def guard() -> None:
            # Runs before every git process under this Lease: a process that was
            # paused past the renew deadline must not start a write on waking up,
            # before its renewer has had a chance to notice.
            if renewal.lost or not renewal.trusted():
                renewal.lost = True
                why = (
                    "this replica's membership heartbeat lapsed"
                    if not records.alive()
                    else f"not confirmed for {self.clock() - renewal.confirmed_at:.1f}s"
                )
                raise LeaseLost(f"lock {name}: {why}; not starting git")

        token = write_guard.set(guard)
        try:
            yield
        except asyncio.CancelledError:
            if renewal.lost:
                guarded.uncancel()
                raise LeaseLost(f"lost lock {name}: renewal failed for {records.renew_deadline:.0f}s") from None
            raise
        finally:
            write_guard.reset(token)
            await renewal.stop()
            # Even when lost: guarded by resourceVersion, the release only clears a
            # record nobody else has written since (e.g. we fenced ourselves while
            # the API was slow), so the next holder need not wait for expiry.
            await records.release(name, renewal.resource_version)
        if renewal.lost:
            raise LeaseLost(f"lost lock {name} while holding it")


class LeaseRecords:
    """The Lease objects in the API: acquire (create, free, expired or dead-holder takeover) and release."""

    def __init__(
        self, api: CoordinationV1Api, namespace: str, identity: str, duration_seconds: int, clock: Callable[[], float]
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.identity = identity
        self.duration = duration_seconds
        self.renew_interval = max(0.5, duration_seconds / 6)
        self.renew_deadline = duration_seconds * 2 / 3
        self.clock = clock
        self.alive: Callable[[], bool] = lambda: True
        self.holder_gone: Callable[[str], bool] = lambda holder: False
        self._observed: dict[str, _Observed] = {}

    def forget(self, name: str) -> None:
        self._observed.pop(name, None)

    async def acquire(self, name: str, labels: dict[str, str], wait_seconds: float) -> tuple[V1Lease, float]:
        """Poll until this identity holds the Lease.

        Returns (the Lease as written, local time the winning write was sent: the holding's start).
        """
        deadline = self.clock() + wait_seconds
        while True:
            acquired = await self._try_acquire(name, labels) if self.alive() else None
            if acquired is not None:
                return acquired
            if self.clock() >= deadline:
                raise LockTimeout(f"waited {wait_seconds:.0f}s for lock {name}")
            # Poll fast at first (locks are usually held for well under a second).
            await asyncio.sleep(min(deadline - self.clock(), random.uniform(0.05, 0.25)))

    async def _try_acquire(self, name: str, labels: dict[str, str]) -> tuple[V1Lease, float] | None:
        """(the Lease as written, local time the winning write was sent) or None if not acquired."""
        try:
            lease = await asyncio.to_thread(self.api.read_namespaced_lease, name, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            now = datetime.now(UTC)
            body = V1Lease(
                metadata=V1ObjectMeta(name=name, labels=labels),
                spec=V1LeaseSpec(
                    holder_identity=self.identity,
                    lease_duration_seconds=self.duration,
                    acquire_time=now,
                    renew_time=now,
                    lease_transitions=0,
                ),
            )
            sent = self.clock()
            try:
                created = await asyncio.to_thread(self.api.create_namespaced_lease, self.namespace, body)
            except ApiException as create_error:
                if create_error.status == 409:
                    return None
                raise
            return created, sent

        # acquireTime is taken after the read: never earlier than the release or expiry
        # it follows (a slow read must not date the acquisition into the previous hold).
        now = datetime.now(UTC)
        spec = _spec(lease)
        holder = spec.holder_identity or ""
        key = (holder, spec.renew_time, spec.acquire_time, spec.lease_duration_seconds)
        observed = self._observed.get(name)
        if observed is None or observed.key != key:
            observed = self._observed[name] = _Observed(key, self.clock())
        duration = spec.lease_duration_seconds or self.duration
        # A holder whose membership heartbeat is dead by our clock has fenced
        # itself (its guard trusts neither Lease past the renew deadline).
        expired = self.clock() >= observed.seen_at + duration or (
            bool(holder) and holder != self.identity and self.holder_gone(holder)
        )
        if holder and holder != self.identity and not expired:
            return None
        takeover = bool(holder) and holder != self.identity
        transitions = (spec.lease_transitions or 0) + (1 if takeover or not holder else 0)
        body = V1Lease(
            metadata=V1ObjectMeta(name=name, labels=labels, resource_version=_version(lease)),
            spec=V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=self.duration,
                acquire_time=now,
                renew_time=now,
                lease_transitions=transitions,
            ),
        )
        sent = self.clock()
        try:
            updated = await asyncio.to_thread(self.api.replace_namespaced_lease, name, self.namespace, body)
        except ApiException as error:
            if error.status in (404, 409):  # changed, or deleted by GC (then created next try)
                return None
            raise
        if takeover:
            metrics.LEASE_TAKEOVERS.inc()
            log.warning("took over expired lock %s from %s", name, holder)
        return updated, sent

    async def release(self, name: str, resource_version: str) -> None:
        for _attempt in range(2):
            body = {
                "metadata": {"name": name, "resourceVersion": resource_version},
                "spec": {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": datetime.now(UTC)},
            }
            try:
                # Best effort, and bounded: unanswered, the Lease simply expires.
                await asyncio.wait_for(
                    asyncio.to_thread(self.api.patch_namespaced_lease, name, self.namespace, body),
                    timeout=min(RELEASE_SECONDS, self.duration),
                )
                return
            except ApiException as error:
                if error.status != 409:
                    log.info("releasing lock %s: %s", name, error.reason)  # it will expire
                    return
            except Exception as error:  # noqa: BLE001 - API unreachable or silent: it will expire
                log.info("releasing lock %s: %s", name, error or type(error).__name__)
                return
            # 409: a renewal cut short by the release may have landed after all (a newer
            # resourceVersion); if the Lease is still ours, release that version.
            try:
                lease = await asyncio.to_thread(self.api.read_namespaced_lease, name, self.namespace)
            except Exception as error:  # noqa: BLE001 - gone or unreachable: nothing to do, or it will expire
                log.info("releasing lock %s: %s", name, getattr(error, "reason", error))
                return
            if _spec(lease).holder_identity != self.identity:
                return  # someone took it over after all
            resource_version = _version(lease)
        log.info("releasing lock %s: conflicts persisted; it will expire", name)


class Renewal:
    """Keeps one held Lease renewed in the background, one guarded write per renewal.

    Each renewal replaces the Lease as we last wrote it (resourceVersion
    precondition): any change by anyone else since (a takeover, a release, a
    deletion) makes it fail. If no renewal succeeds within the renew deadline,
    the membership heartbeat lapses, or someone else changed the Lease, the
    guarded task is cancelled (which kills its git) and `lost` is set.
    """

    def __init__(
        self, records: LeaseRecords, name: str, lease: V1Lease, confirmed_at: float, guarded: asyncio.Task[Any]
    ) -> None:
        self.records = records
        self.name = name
        self.lease = lease  # as we last wrote it
        self.confirmed_at = confirmed_at  # local time the last successful write (acquire or renew) was sent
        self.identity = _spec(lease).holder_identity or ""
        self.guarded = guarded
        self.lost = False
        self._task = asyncio.create_task(self._run(), name=f"renew {name}")

    @property
    def resource_version(self) -> str:
        return _version(self.lease)

    def trusted(self) -> bool:
        """May work under this Lease start now: alive, same identity, confirmed within the deadline."""
        records = self.records
        return (
            records.alive()
            and self.identity == records.identity
            and records.clock() - self.confirmed_at <= records.renew_deadline
        )

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        records, name = self.records, self.name
        while True:
            await asyncio.sleep(records.renew_interval)
            try:
                if not records.alive() or self.identity != records.identity:
                    raise LeaseLost(f"lock {name}: this replica's membership heartbeat lapsed")
                sent = records.clock()
                _spec(self.lease).renew_time = datetime.now(UTC)
                # Bounded by what is left of the renew deadline, whatever the call does
                # (a hung connection, the API server's slowness): past it the guarded
                # work is stopped, and a late answer changes nothing.
                left = self.confirmed_at + records.renew_deadline - sent
                try:
                    updated = await asyncio.wait_for(
                        asyncio.get_running_loop().run_in_executor(
                            _renewals, records.api.replace_namespaced_lease, name, records.namespace, self.lease
                        ),
                        timeout=max(left, 0.0),
                    )
                except ApiException as error:
                    if error.status in (404, 409):
                        raise LeaseLost(f"lock {name} changed or deleted by someone else ({error.reason})") from None
                    raise
                self.lease, self.confirmed_at = updated, sent
            except LeaseLost as lost:
                log.error("%s; stopping the guarded work", lost)
                self._fence()
                return
            except TimeoutError:
                log.warning("renewing lock %s: no answer within the renew deadline", name)
            except Exception as error:  # noqa: BLE001 - network, API errors: retry until the deadline
                log.warning("renewing lock %s failed: %s", name, error)
            if records.clock() - self.confirmed_at > records.renew_deadline:
                log.error("lock %s not renewed for %.0fs; stopping the guarded work", name, records.renew_deadline)
                self._fence()
                return

    def _fence(self) -> None:
        self.lost = True
        self.guarded.cancel()


def _spec(lease: V1Lease) -> V1LeaseSpec:
    if lease.spec is None:
        lease.spec = V1LeaseSpec()
    return lease.spec


def _version(lease: V1Lease) -> str:
    assert lease.metadata is not None
    return str(lease.metadata.resource_version)
