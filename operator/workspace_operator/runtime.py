"""The long-lived objects of one operator process, built once at startup."""

from __future__ import annotations

from dataclasses import dataclass

from workspace_operator.batching import IdleStep, ProjectQueues
from workspace_operator.checkouts import Checkouts, default_limit
from workspace_operator.config import Config
from workspace_operator.git import Engine
from workspace_operator.kube import Kube
from workspace_operator.lock import LeaseLocks, new_identity
from workspace_operator.spec import shard_of


@dataclass
class Runtime:
    config: Config
    engine: Engine
    kube: Kube
    locks: LeaseLocks
    queues: ProjectQueues
    checkouts: Checkouts

    @classmethod
    def create(cls, config: Config, kube: Kube | None = None) -> Runtime:
        kube = kube or Kube()
        locks = LeaseLocks(kube.coordination, config.lease_namespace, new_identity(config.identity),
                           duration_seconds=config.lease_seconds)
        engine = Engine(config.root, config.git)
        queues = ProjectQueues(locks, idle=_maintenance(engine, config.maintenance_budget_seconds))
        checkouts = Checkouts(config.checkout_concurrency or default_limit())
        return cls(config, engine, kube, locks, queues, checkouts)

    def owns(self, namespace: str, project: str) -> bool:
        """This replica's share of the work (all of it when running alone)."""
        if self.config.replicas <= 1:
            return True
        return shard_of(namespace, project, self.config.replicas) == self.config.replica_index


def _maintenance(engine: Engine, budget: float) -> IdleStep | None:
    """The queue's idle step: one time-boxed maintenance step on the cache just served."""
    if budget <= 0:
        return None

    async def step(namespace: str, project: str) -> None:
        await engine.maintain(namespace, project, budget_seconds=budget)

    return step
