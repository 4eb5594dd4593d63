"""Operation: remove a deleted Workspace's worktree (or pin) under the project Lease, in its queue.

Deletion must never wedge: a missing volume, directory or cache is success, and
if the lock cannot be had after many attempts the finalizer is released anyway —
the directory is then an orphan that GC removes after its grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from workspace_operator import metrics, status
from workspace_operator.git import DNS1123_LABEL, GitError, Reason
from workspace_operator.lock import LeaseLost, LockTimeout
from workspace_operator.logs import fields
from workspace_operator.runtime import Runtime
from workspace_operator.spec import FINALIZER

log = logging.getLogger("workspace_operator.teardown")

GIVE_UP_AFTER_ATTEMPTS = 10


class RetryDeletion(Exception):
    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


async def teardown(
    rt: Runtime,
    *,
    namespace: str,
    name: str,
    spec: Mapping[str, Any],
    attempt: int,
    current: Mapping[str, Any] | None = None,
    generation: int = 0,
) -> str:
    """Returns what happened, for the Event; raises RetryDeletion to be called again."""
    if attempt == 0 and current is not None and current.get("phase") != status.Phase.TERMINATING.value:
        await rt.kube.patch_status(
            namespace, name, status.terminating(current, generation=generation, now=datetime.now(UTC)), missing_ok=True
        )
    project = str(spec.get("project", ""))
    if not DNS1123_LABEL.match(project) or not DNS1123_LABEL.match(name):
        metrics.DELETIONS.labels("nothing").inc()
        return "nothing to remove (invalid spec was never materialized)"
    rt.kube.forget_namespace(namespace)  # it may be on its way out: look its UID up afresh
    try:
        existed, _waited = await rt.queues.run(
            namespace,
            project,
            lambda: rt.engine.remove(namespace, project, name),
            wait_seconds=rt.config.lock_wait_seconds,
        )
    except (GitError, LockTimeout, LeaseLost, OSError) as error:
        if isinstance(error, GitError) and error.reason is Reason.UNSAFE_PATH:
            # A link planted where the project directory belongs: what it points at is
            # not this Workspace's to delete. Nothing was touched.
            metrics.UNSAFE_PATHS.labels("teardown").inc()
            metrics.DELETIONS.labels("unsafe").inc()
            log.error("not removing worktree %s/%s/%s: %s", namespace, project, name, error)
            return f"worktree left alone: {error}"
        if attempt + 1 >= GIVE_UP_AFTER_ATTEMPTS:
            metrics.DELETIONS.labels("abandoned").inc()
            log.error(
                "giving up removing worktree %s/%s/%s after %d attempts (GC will collect it): %s",
                namespace,
                project,
                name,
                attempt + 1,
                error,
                extra=fields(namespace, name, project=project, reason="Abandoned"),
            )
            return f"worktree left for garbage collection: {error}"
        raise RetryDeletion(str(error), rt.backoff(attempt + 1)) from None
    metrics.DELETIONS.labels("removed" if existed else "absent").inc()
    log.info(
        "removed worktree %s/%s/%s (existed=%s)",
        namespace,
        project,
        name,
        existed,
        extra=fields(namespace, name, project=project, reason="Removed" if existed else "Absent"),
    )
    return "worktree or pin removed" if existed else "no worktree or pin on the volume"


def finalize_soon(rt: Runtime, obj: Mapping[str, Any]) -> bool:
    """Start removing a deleted Workspace's worktree, then its finalizer; False if already running.

    The operator owns its finalizer (kopf's would be stripped by every replica whose
    ownership filter hides the object), so deletions are driven from here: by the
    owner's event handler, or by the takeover path for a dead owner's deletions.
    """
    meta = obj["metadata"]
    key = f"{meta['uid']}/delete"
    if key in rt.runs_by_uid or FINALIZER not in (meta.get("finalizers") or []):
        return False
    rt.runs_by_uid[key] = asyncio.Event()
    task = asyncio.create_task(_finalize(rt, obj, key), name=f"finalize {meta['namespace']}/{meta['name']}")
    rt.takeovers.add(task)
    task.add_done_callback(rt.takeovers.discard)
    return True


async def _finalize(rt: Runtime, obj: Mapping[str, Any], key: str) -> None:
    meta = obj["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    outcome = "worktree left for garbage collection"
    try:
        for attempt in range(GIVE_UP_AFTER_ATTEMPTS + 1):
            try:
                outcome = await teardown(
                    rt,
                    namespace=namespace,
                    name=name,
                    spec=obj.get("spec") or {},
                    attempt=attempt,
                    current=obj.get("status") or {},
                    generation=int(meta.get("generation") or 0),
                )
                break
            except RetryDeletion as error:
                log.info("removing worktree of %s/%s: %s; retrying", namespace, name, error)
                await asyncio.sleep(error.delay)
        await rt.kube.remove_finalizer(namespace, name, FINALIZER)
        with contextlib.suppress(Exception):
            await rt.kube.post_event(obj, reason="Cleaned", message=outcome)
    except asyncio.CancelledError:
        raise
    except Exception:  # the next event or takeover starts over
        log.exception("finalizing %s/%s failed", namespace, name)
    finally:
        rt.runs_by_uid.pop(key).set()
