"""Operation: make a Workspace Ready (spec → lock → cache → worktree → status).

Called by the thin kopf handlers on create and on resume. Returns normally when
the Workspace is Ready; raises `Retry` (transient) or `Fatal` (permanent) after
writing a status that says why.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

from workspace_operator import metrics, status
from workspace_operator.git import CheckoutResult, Credentials, GitError, Reason
from workspace_operator.lock import LeaseLost, LockTimeout
from workspace_operator.runtime import Runtime
from workspace_operator.spec import (
    ALLOWED_REPOSITORIES,
    checkout_request,
    credentials_allowed,
    credentials_from_secret,
    secret_name,
    ttl_seconds,
)

log = logging.getLogger("workspace_operator.materialize")


UNKNOWN_FAILURE_ATTEMPTS = 8


class Retry(Exception):
    def __init__(self, reason: str, message: str, delay: float) -> None:
        super().__init__(message)
        self.reason, self.message, self.delay = reason, message, delay


class Fatal(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


async def materialize(
    rt: Runtime,
    *,
    namespace: str,
    name: str,
    generation: int,
    spec: Mapping[str, Any],
    current: Mapping[str, Any],
    attempt: int,
) -> CheckoutResult | None:
    """Bring one Workspace to Ready; None if it already was (nothing touched)."""
    now = datetime.now(UTC)
    try:
        request = checkout_request(namespace, name, spec)
        valid = rt.engine.validate(request)
    except GitError as error:
        await _fail(rt, namespace, name, current, generation, error.reason.value, str(error.message), False, attempt)
        raise Fatal(error.reason.value, error.message) from None

    # Resume after a restart: an intact, completed worktree at the reported commit is the
    # proof; re-running must not fetch, lock or patch anything.
    if current.get("phase") == status.Phase.READY.value and current.get("commit") and \
            rt.engine.is_complete(valid, str(current["commit"])):
        return None

    if attempt == 0 or current.get("phase") != status.Phase.MATERIALIZING.value:
        await rt.kube.patch_status(namespace, name, status.progressing(
            current, phase=status.Phase.MATERIALIZING, reason="Materializing",
            message="waiting for the project lock", generation=generation, now=now))

    try:
        credentials = await _credentials(rt, namespace, spec, request.repository)
        valid = replace(valid, request=replace(request, credentials=credentials))
        async with _locked(rt, namespace, request.project) as waited:
            result = await rt.engine.checkout(valid)
    except GitError as error:
        # Unknown failures are retried, but not forever: after a while they are
        # as permanent as they look (e.g. a .gitmodules git refuses to honour).
        retryable = error.retryable and not (error.reason is Reason.GIT_FAILED
                                             and attempt + 1 >= UNKNOWN_FAILURE_ATTEMPTS)
        await _fail(rt, namespace, name, current, generation, error.reason.value, str(error), retryable, attempt)
        if retryable:
            raise Retry(error.reason.value, str(error), _backoff(rt, attempt + 1)) from None
        raise Fatal(error.reason.value, str(error)) from None
    except (LockTimeout, LeaseLost) as error:
        reason = "LockTimeout" if isinstance(error, LockTimeout) else "LeaseLost"
        await _fail(rt, namespace, name, current, generation, reason, str(error), True, attempt)
        raise Retry(reason, str(error), _backoff(rt, attempt + 1)) from None

    ttl = ttl_seconds(spec, rt.config.default_ttl_seconds)
    await rt.kube.patch_status(namespace, name, status.ready(
        current, result, lock_wait_seconds=waited, volume_claim=rt.config.volume_claim,
        ttl_seconds=ttl, generation=generation, now=datetime.now(UTC)))
    _observe(result, waited)
    log.info(
        "materialized %s/%s project=%s commit=%s cache_hit=%s fetched=%s reused=%s "
        "lock_wait=%.3fs fetch=%.3fs checkout=%.3fs total=%.3fs",
        namespace, name, request.project, result.commit[:12], result.cache_hit, result.fetched, result.reused,
        waited, result.fetch_seconds, result.checkout_seconds, result.total_seconds + waited,
    )
    return result


async def _credentials(rt: Runtime, namespace: str, spec: Mapping[str, Any], repository: str
                       ) -> Credentials | None:
    """The Secret named by the spec, if it lends itself to this repository."""
    secret = secret_name(spec)
    if secret is None:
        return None
    found = await rt.kube.read_secret(namespace, secret)
    if found is None:
        raise GitError(Reason.AUTH_FAILED, f"credentials Secret {secret!r} not found", step="credentials")
    data, annotations = found
    if not credentials_allowed(annotations, repository):
        raise GitError(Reason.CREDENTIALS_NOT_ALLOWED, f"Secret {secret!r} does not list this repository in its "
                       f"{ALLOWED_REPOSITORIES} annotation", step="credentials")
    return credentials_from_secret(data)


@contextlib.asynccontextmanager
async def _locked(rt: Runtime, namespace: str, project: str) -> AsyncIterator[float]:
    """The project lock, counted as queued while waited for and in flight while held."""
    waiting = True
    metrics.QUEUED.inc()
    try:
        async with rt.locks.hold(namespace, project, wait_seconds=rt.config.lock_wait_seconds) as waited:
            metrics.QUEUED.dec()
            waiting = False
            with metrics.IN_FLIGHT.track_inprogress():
                yield waited
    finally:
        if waiting:
            metrics.QUEUED.dec()


def _backoff(rt: Runtime, attempt: int) -> float:
    return status.retry_delay(attempt, base=rt.config.retry_base_seconds, cap=rt.config.retry_max_seconds)


def _observe(result: CheckoutResult, waited: float) -> None:
    metrics.MATERIALIZATIONS.labels("reused" if result.reused else "ready").inc()
    metrics.LOCK_WAIT.observe(waited)
    metrics.CACHE_LOOKUPS.labels("hit" if result.cache_hit else "miss").inc()
    if result.fetched:
        metrics.FETCH.observe(result.fetch_seconds)
    if result.cache_repaired:
        metrics.CACHE_REPAIRS.inc()
    metrics.CHECKOUT.observe(result.checkout_seconds)
    metrics.TOTAL.observe(result.total_seconds + waited)


async def _fail(rt: Runtime, namespace: str, name: str, current: Mapping[str, Any], generation: int,
                reason: str, message: str, retryable: bool, attempt: int) -> None:
    metrics.GIT_FAILURES.labels(reason).inc()
    metrics.MATERIALIZATIONS.labels("retrying" if retryable else "failed").inc()
    log.warning("workspace %s/%s failed (%s, %s): %s", namespace, name, reason,
                "retryable" if retryable else "permanent", message)
    await rt.kube.patch_status(namespace, name, status.failed(
        current, reason=reason, message=message, retryable=retryable,
        retry_in=_backoff(rt, attempt + 1) if retryable else None,
        attempts=attempt + 1, generation=generation, now=datetime.now(UTC)))
