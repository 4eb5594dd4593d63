"""Operation: make a Workspace Ready (spec → admission → lock → cache → worktree → status).

Called by the thin kopf handlers on create and on resume, and by the timer when a
Ready Workspace's worktree was found damaged (a repair: rebuilt at the commit
status already reports, readyAt kept). Returns normally when the Workspace is
Ready (None: it already was, or it already failed for good at this generation);
raises `Retry` (transient) or `Fatal` (permanent) after writing a status that says why. Both say whether the reason changed (`announce`): Events are
posted on a change of reason, not once per retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from workspace_operator import lifecycle, metrics, status
from workspace_operator.git import CheckoutResult, Credentials, GitError, Prepared, Reason, Revision, ValidRequest
from workspace_operator.lock import LeaseLost, LockTimeout
from workspace_operator.logs import fields
from workspace_operator.runtime import Runtime
from workspace_operator.spec import (
    ALLOWED_REPOSITORIES,
    checkout_request,
    credentials_allowed,
    credentials_from_secret,
    secret_name,
)

log = logging.getLogger("workspace_operator.materialize")


UNKNOWN_FAILURE_ATTEMPTS = 8


class Retry(Exception):
    def __init__(self, reason: str, message: str, delay: float, announce: bool = True) -> None:
        super().__init__(message)
        self.reason, self.message, self.delay, self.announce = reason, message, delay, announce


class Fatal(Exception):
    def __init__(self, reason: str, message: str, announce: bool = True) -> None:
        super().__init__(message)
        self.reason, self.message, self.announce = reason, message, announce


@dataclass(frozen=True)
class Target:
    """The Workspace being worked on, as the handler saw it."""

    namespace: str
    name: str
    generation: int
    spec: Mapping[str, Any]
    current: Mapping[str, Any]  # its status
    meta: Mapping[str, Any]


@dataclass(frozen=True)
class Done:
    result: CheckoutResult
    repaired: bool  # a lost worktree was rebuilt at the commit status reported

    @property
    def event(self) -> tuple[str, str]:
        """(reason, message) of the Event that says what happened."""
        r = self.result
        if self.repaired:
            return "Repaired", f"rebuilt at {r.commit[:12]} ({r.path or r.cache_path})"
        return "Materialized", (
            f"{r.commit[:12]} at {r.path or r.cache_path} (cache {'hit' if r.cache_hit else 'miss'}, "
            f"{r.total_seconds:.2f}s)"
        )


@dataclass(frozen=True)
class Failure:
    """The outcome of a failed attempt."""

    reason: str
    message: str
    retryable: bool
    attempt: int  # 0-based number of the attempt that failed


async def materialize(
    rt: Runtime,
    *,
    namespace: str,
    name: str,
    generation: int,
    spec: Mapping[str, Any],
    current: Mapping[str, Any],
    attempt: int,
    meta: Mapping[str, Any] | None = None,
) -> Done | None:
    """Bring one Workspace to Ready; None if it already was (nothing touched)."""
    target = Target(namespace, name, generation, spec, current, meta or {})
    key = (namespace, name)
    rt.in_flight.add(key)
    rt.trimmer.observe(len(rt.in_flight))
    try:
        return await _materialize(rt, target, attempt)
    finally:
        rt.in_flight.discard(key)
        rt.quota.release(namespace, name)
        rt.trimmer.observe(len(rt.in_flight))


async def reported(rt: Runtime, meta: Mapping[str, Any], run: Awaitable[Done | None]) -> Done | None:
    """A `materialize` run outside a kopf handler (the timer's repair, a takeover), with
    the Events kopf posts for the handler: what was done, or a Warning on a change of
    reason. Returns the outcome; Retry and Fatal are raised as usual."""
    ref = {"metadata": {"namespace": meta.get("namespace"), "name": meta.get("name"), "uid": meta.get("uid")}}
    try:
        done = await run
    except (Retry, Fatal) as error:
        if error.announce:
            await rt.kube.post_event(ref, reason=error.reason, message=error.message, event_type="Warning")
        raise
    if done is not None:
        reason, message = done.event
        await rt.kube.post_event(ref, reason=reason, message=message)
    return done


async def _materialize(rt: Runtime, target: Target, attempt: int) -> Done | None:
    now = datetime.now(UTC)
    received = time.monotonic()  # after the Workspace's creation: upstream answers from later serve it
    current = target.current
    if current.get("phase") == status.Phase.FAILED.value and status.is_settled(current, target.generation):
        # Failed for good at this generation: a second run (the create handler after a
        # takeover's run, or the reverse) must not ask the upstream again. A new spec
        # (a new generation) or a new Workspace is the way to try again.
        log.debug(
            "%s/%s failed permanently at generation %d: nothing to do", target.namespace, target.name, target.generation
        )
        return None
    try:
        request = checkout_request(target.namespace, target.name, target.spec)
        valid = rt.engine.validate(request)
    except GitError as error:
        raise await _fail(rt, target, Failure(error.reason.value, str(error.message), False, attempt)) from None

    # Reported Ready before (a restart, or the timer found it damaged): an intact, completed
    # worktree (CacheOnly: the pin) at the reported commit is the proof, and nothing is fetched,
    # locked or patched. Otherwise it is rebuilt at that same commit, whatever the branch points at now.
    reported = str(current.get("commit") or "")
    repair = bool(reported and current.get("readyAt"))
    if repair and current.get("phase") == status.Phase.READY.value and rt.engine.is_complete(valid, reported):
        return None
    if repair:
        valid = replace(valid, request=replace(request, revision=Revision(commit=reported)))
    elif lifecycle.deadline_passed(target.spec, target.meta, limits=rt.limits, now=now):
        raise await _fail(
            rt,
            target,
            Failure(
                status.DEADLINE_EXCEEDED,
                f"not Ready within {lifecycle.active_deadline(target.spec, rt.limits)}s of its creation",
                False,
                attempt,
            ),
        )

    # The quota bounds worktrees on the volume: a CacheOnly Workspace writes none, so it is
    # neither held back nor counted (only worktrees leave completion records).
    if not request.cache_only and not rt.quota.admit(target.namespace, target.name):
        raise await _fail(
            rt,
            target,
            Failure(
                status.QUOTA_EXCEEDED,
                f"namespace {target.namespace!r} already has "
                f"{rt.quota.limit} materialized worktrees (WORKSPACE_MAX_WORKSPACES_PER_NAMESPACE)",
                True,
                attempt,
            ),
        )

    if repair and current.get("phase") == status.Phase.READY.value:  # just found damaged
        message = f"{current.get('path') or 'the pin'} is missing or damaged: rebuilding it at {reported[:12]}"
        log.warning("%s/%s: %s", target.namespace, target.name, message)
        await rt.kube.patch_status(
            target.namespace,
            target.name,
            status.worktree_lost(current, message=message, generation=target.generation, now=now),
        )
        await rt.kube.post_event(
            {"metadata": {"namespace": target.namespace, "name": target.name, "uid": target.meta.get("uid")}},
            reason=status.WORKTREE_LOST,
            message=message,
            event_type="Warning",
        )
    progress = Deferred.nothing()
    if not repair and (attempt == 0 or current.get("phase") != status.Phase.MATERIALIZING.value):

        async def materializing() -> None:
            if not rt.owns(target.namespace, request.project):
                return  # the project moved: its new owner may have made it Ready meanwhile
            await rt.kube.patch_status(
                target.namespace,
                target.name,
                status.progressing(
                    current,
                    phase=status.Phase.MATERIALIZING,
                    reason="Materializing",
                    message="waiting for the project lock",
                    generation=target.generation,
                    now=datetime.now(UTC),
                ),
            )

        progress = await Deferred.start(rt.config.progress_delay_seconds, materializing, rt.progress_writes)

    try:
        try:
            credentials = await _credentials(rt, target.namespace, target.spec, request.repository)
            owner = await rt.kube.namespace_uid(target.namespace)
            valid = replace(valid, request=replace(valid.request, credentials=credentials, namespace_uid=owner))
            with rt.checkouts.in_flight(target.namespace, request.project, target.name):
                result, waited = await _checkout(rt, valid, received)
        finally:
            await progress.settle()  # before the outcome is written: it is always written last
    except GitError as error:
        # Unknown failures are retried, but not forever: after a while they are
        # as permanent as they look (e.g. a .gitmodules git refuses to honour).
        retryable = error.retryable and not (
            error.reason is Reason.GIT_FAILED and attempt + 1 >= UNKNOWN_FAILURE_ATTEMPTS
        )
        raise await _fail(rt, target, Failure(error.reason.value, str(error), retryable, attempt)) from None
    except (LockTimeout, LeaseLost) as error:
        reason = "LockTimeout" if isinstance(error, LockTimeout) else "LeaseLost"
        if isinstance(error, LeaseLost) and not rt.owns(target.namespace, request.project):
            # Paused, fenced or moved: whoever holds the Lease now may already have
            # made the Workspace Ready, and our stale view must not turn it back.
            metrics.MATERIALIZATIONS.labels("retrying").inc()
            log.warning(
                "workspace %s/%s: %s; retrying without touching its status", target.namespace, target.name, error
            )
            raise Retry(reason, str(error), rt.backoff(attempt + 1)) from None
        raise await _fail(rt, target, Failure(reason, str(error), True, attempt)) from None

    # Counted before Ready is written: whoever sees Ready also sees it in the metrics.
    _observe(result, waited, repair)
    await rt.kube.patch_status(
        target.namespace,
        target.name,
        status.ready(
            current,
            result,
            lock_wait_seconds=waited,
            volume_claim=rt.config.volume_claim,
            expires_after=lifecycle.expires_after(target.spec, target.meta, rt.limits),
            generation=target.generation,
            now=datetime.now(UTC),
            repaired=repair,
        ),
    )
    log.info(
        "%s %s/%s project=%s commit=%s cache_hit=%s fetched=%s reused=%s "
        "lock_wait=%.3fs fetch=%.3fs checkout=%.3fs total=%.3fs",
        "repaired" if repair else "materialized",
        target.namespace,
        target.name,
        request.project,
        result.commit[:12],
        result.cache_hit,
        result.fetched,
        result.reused,
        waited,
        result.fetch_seconds,
        result.checkout_seconds,
        result.total_seconds + waited,
        extra=fields(
            target.namespace,
            target.name,
            project=request.project,
            reason="Repaired" if repair else "Materialized",
            commit=result.commit,
        ),
    )
    return Done(result, repair)


class Deferred:
    """A status write made only if the work is still going on after `delay` seconds.

    A Workspace that is Ready (or failed) sooner never gets it: in a burst that is
    one API write, and one watch event for every watcher, less per Workspace.
    `settle` must be awaited before the outcome's own status write: it cancels the
    write if it has not started yet, else waits until it is done, so the outcome is
    always written last and the status never goes back.
    """

    def __init__(self, task: asyncio.Task[None] | None = None) -> None:
        self._task = task
        self._writing = False

    @classmethod
    def nothing(cls) -> Deferred:
        return cls()

    @classmethod
    async def start(
        cls, delay: float, write: Callable[[], Awaitable[None]], gate: asyncio.Semaphore | None = None
    ) -> Deferred:
        """Write after `delay` seconds in the background, once `gate` lets it (a burst's
        writes come due together); at once (awaited here) if delay is 0."""
        if delay <= 0:
            await write()
            return cls()
        deferred = cls()

        async def later() -> None:
            await asyncio.sleep(delay)
            async with gate or contextlib.nullcontext():
                deferred._writing = True
                await write()

        deferred._task = asyncio.create_task(later(), name="deferred status write")
        return deferred

    async def settle(self) -> None:
        task = self._task
        if task is None:
            return
        if not self._writing:
            task.cancel()  # still sleeping: nothing was sent
        await asyncio.wait({task})  # not cancelled by our own cancellation: a write in flight ends first
        if not task.cancelled() and task.exception() is not None:
            log.warning("deferred status write failed: %s", task.exception())


async def _checkout(rt: Runtime, valid: ValidRequest, received: float) -> tuple[CheckoutResult, float]:
    """The exclusive phase in the project's queue (one Lease hold per burst), then the
    files in a parallel slot; (result, seconds waited for the lock)."""

    started = False  # counted as queued until the exclusive step starts, then in flight
    metrics.QUEUED.inc()

    async def exclusive() -> Prepared | CheckoutResult:
        nonlocal started
        started = True
        metrics.QUEUED.dec()
        metrics.IN_FLIGHT.inc()
        if not rt.owns(valid.request.namespace, valid.request.project):
            # Queued (or paused) while the project moved to another replica: holding its Lease
            # now proves no ownership, and its new owner is on it. Nothing is written here.
            raise LeaseLost(f"project {valid.request.namespace}/{valid.request.project} moved to another replica")
        if valid.request.cache_only:
            return await rt.engine.pin(valid, not_before=received)
        hold = rt.queues.hold_id(valid.request.namespace, valid.request.project)
        prepared = await rt.engine.prepare(valid, not_before=received, hold=hold)
        return await rt.engine.populate(prepared) if prepared.needs_lock else prepared

    try:
        outcome, waited = await rt.queues.run(
            valid.request.namespace, valid.request.project, exclusive, wait_seconds=rt.config.lock_wait_seconds
        )
        if isinstance(outcome, CheckoutResult):
            return outcome, waited
        async with rt.checkouts.slot(valid.request.namespace):
            return await rt.engine.populate(outcome), waited
    finally:
        (metrics.IN_FLIGHT if started else metrics.QUEUED).dec()


async def _credentials(rt: Runtime, namespace: str, spec: Mapping[str, Any], repository: str) -> Credentials | None:
    """The Secret named by the spec, if it lends itself to this repository."""
    secret = secret_name(spec)
    if secret is None:
        return None
    found = await rt.kube.read_secret(namespace, secret)
    if found is None:
        raise GitError(Reason.AUTH_FAILED, f"credentials Secret {secret!r} not found", step="credentials")
    data, annotations = found
    if not credentials_allowed(annotations, repository):
        raise GitError(
            Reason.CREDENTIALS_NOT_ALLOWED,
            f"Secret {secret!r} does not list this repository in its {ALLOWED_REPOSITORIES} annotation",
            step="credentials",
        )
    return credentials_from_secret(data, annotations)


def _observe(result: CheckoutResult, waited: float, repair: bool) -> None:
    metrics.MATERIALIZATIONS.labels("repaired" if repair else ("reused" if result.reused else "ready")).inc()
    metrics.LOCK_WAIT.observe(waited)
    metrics.CACHE_LOOKUPS.labels("hit" if result.cache_hit else "miss").inc()
    if result.fetched:
        metrics.FETCH.observe(result.fetch_seconds)
    if result.cache_repaired:
        metrics.CACHE_REPAIRS.inc()
    metrics.CHECKOUT.observe(result.checkout_seconds)
    metrics.TOTAL.observe(result.total_seconds + waited)


async def _fail(rt: Runtime, target: Target, failure: Failure) -> Retry | Fatal:
    """Write the failure into status; returns the exception for the handler to raise."""
    metrics.GIT_FAILURES.labels(failure.reason).inc()
    metrics.MATERIALIZATIONS.labels("retrying" if failure.retryable else "failed").inc()
    log.warning(
        "workspace %s/%s failed (%s, %s): %s",
        target.namespace,
        target.name,
        failure.reason,
        "retryable" if failure.retryable else "permanent",
        failure.message,
        extra=fields(target.namespace, target.name, reason=failure.reason),
    )
    delay = rt.backoff(failure.attempt + 1)
    announce = status.reason_of(target.current) != failure.reason
    await rt.kube.patch_status(
        target.namespace,
        target.name,
        status.failed(
            target.current,
            reason=failure.reason,
            message=failure.message,
            retryable=failure.retryable,
            retry_in=delay if failure.retryable else None,
            attempts=failure.attempt + 1,
            generation=target.generation,
            now=datetime.now(UTC),
            expires_after=lifecycle.expires_after(target.spec, target.meta, rt.limits, failed=True),
        ),
    )
    if failure.retryable:
        return Retry(failure.reason, failure.message, delay, announce)
    return Fatal(failure.reason, failure.message, announce)
