"""The long-lived objects of one operator process, built once at startup."""

from __future__ import annotations

from dataclasses import dataclass, replace

from workspace_operator import metrics
from workspace_operator.config import Config
from workspace_operator.git import Engine
from workspace_operator.git.runner import UPSTREAM_STEPS
from workspace_operator.kube import Kube
from workspace_operator.lock import LeaseLocks, new_identity
from workspace_operator.spec import shard_of


@dataclass
class Runtime:
    config: Config
    engine: Engine
    kube: Kube
    locks: LeaseLocks

    @classmethod
    def create(cls, config: Config, kube: Kube | None = None) -> Runtime:
        kube = kube or Kube()
        locks = LeaseLocks(kube.coordination, config.lease_namespace, new_identity(config.identity),
                           duration_seconds=config.lease_seconds)
        return cls(config, Engine(config.root, replace(config.git, observer=_count_upstream)), kube, locks)

    def owns(self, namespace: str, project: str) -> bool:
        """This replica's share of the work (all of it when running alone)."""
        if self.config.replicas <= 1:
            return True
        return shard_of(namespace, project, self.config.replicas) == self.config.replica_index


def _count_upstream(step: str, _seconds: float, succeeded: bool) -> None:
    if step in UPSTREAM_STEPS:
        metrics.UPSTREAM_REQUESTS.labels(step, "ok" if succeeded else "error").inc()
