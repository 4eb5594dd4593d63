"""The long-lived objects of one operator process, built once at startup."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

from workspace_operator import metrics
from workspace_operator.batching import IdleStep, ProjectQueues
from workspace_operator.checkouts import Checkouts, default_limit
from workspace_operator.config import Config
from workspace_operator.git import UPSTREAM_STEPS, Engine
from workspace_operator.kube import Kube
from workspace_operator.lifecycle import Limits
from workspace_operator.lock import LeaseLocks, new_identity
from workspace_operator.members import Members
from workspace_operator.memory import BurstTrimmer
from workspace_operator.quota import NamespaceQuota
from workspace_operator.spec import shard_of
from workspace_operator.status import retry_delay

PROGRESS_WRITES = 4


@dataclass
class Runtime:
    config: Config
    engine: Engine
    kube: Kube
    locks: LeaseLocks
    quota: NamespaceQuota
    queues: ProjectQueues
    checkouts: Checkouts
    members: Members | None = None
    # (namespace, name) of the Workspaces a handler of this process is materializing
    # right now: the timer leaves them alone.
    in_flight: set[tuple[str, str]] = field(default_factory=set)
    # Materializations and deletions running in this process, by Workspace uid (set
    # when done): the takeover path and kopf's handlers never run one twice at once.
    runs_by_uid: dict[str, asyncio.Event] = field(default_factory=dict)
    takeovers: set[asyncio.Task[Any]] = field(default_factory=set)
    trimmer: BurstTrimmer = field(default_factory=BurstTrimmer)
    # Delayed `Materializing` writes in flight at once: a burst's all come due together,
    # and hundreds of concurrent API calls at that moment raised the operator's peak
    # memory by tens of MB. Queued ones are cancelled when their outcome comes first.
    progress_writes: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(PROGRESS_WRITES))

    @classmethod
    def create(cls, config: Config, kube: Kube | None = None) -> Runtime:
        kube = kube or Kube()
        locks = LeaseLocks(
            kube.coordination,
            config.lease_namespace,
            new_identity(config.identity),
            duration_seconds=config.lease_seconds,
        )
        quota = NamespaceQuota(config.root, config.max_workspaces_per_namespace)
        members = Members(
            kube, locks, namespace=config.lease_namespace, prefix=config.identity, duration_seconds=config.lease_seconds
        )
        engine = Engine(config.root, replace(config.git, observer=_count_upstream))
        queues = ProjectQueues(locks, idle=_maintenance(engine, config.maintenance_budget_seconds))
        checkouts = Checkouts(config.checkout_concurrency or default_limit())
        return cls(config, engine, kube, locks, quota, queues, checkouts, members)

    @property
    def fixed_shards(self) -> bool:
        """Deprecated WORKSPACE_REPLICAS > 1: a fixed share by index instead of membership."""
        return self.config.replicas > 1

    @property
    def limits(self) -> Limits:
        c = self.config
        return Limits(c.default_ttl_seconds, c.failed_ttl_seconds, c.active_deadline_seconds, c.allow_no_ttl)

    def backoff(self, attempt: int) -> float:
        """The one retry policy, for creation and deletion: exponential from the base, capped."""
        return retry_delay(attempt, base=self.config.retry_base_seconds, cap=self.config.retry_max_seconds)

    def owns(self, namespace: str, project: str) -> bool:
        """This replica's share of the work: by live membership (all of it when alone)."""
        if self.fixed_shards:
            return shard_of(namespace, project, self.config.replicas) == self.config.replica_index
        return self.members is None or self.members.owns(namespace, project)


def _maintenance(engine: Engine, budget: float) -> IdleStep | None:
    """The queue's idle step: one time-boxed maintenance step on the cache just served."""
    if budget <= 0:
        return None

    async def step(namespace: str, project: str) -> None:
        await engine.maintain(namespace, project, budget_seconds=budget)

    return step


def _count_upstream(step: str, _seconds: float, succeeded: bool) -> None:
    if step in UPSTREAM_STEPS:
        metrics.UPSTREAM_REQUESTS.labels(step, "ok" if succeeded else "error").inc()
