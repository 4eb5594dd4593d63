"""`python -m workspace_operator`: parse settings, build the runtime, run kopf."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import cast

import kopf

from workspace_operator import config as configuration
from workspace_operator.handlers import build_registry
from workspace_operator.kube import Kube, configure_thread_pool, load_client_config
from workspace_operator.metrics import HealthServer
from workspace_operator.runtime import Runtime

# kopf's text format truncates logger names to 20 characters; its formatter takes any format string.
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(fmt: str, verbose: bool) -> None:
    """kopf's own formatters: one JSON object per line (structured `extra` fields as keys, the
    Workspace under "object"), or text lines with the object as a prefix."""
    log_format = kopf.LogFormat.JSON if fmt == "json" else cast(kopf.LogFormat, TEXT_FORMAT)
    kopf.configure(verbose=verbose, log_format=log_format, log_prefix=None)
    if not verbose:
        for noisy in ("kubernetes.client.rest", "urllib3", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


async def run(config: configuration.Config, stop_flag: asyncio.Event | None = None) -> None:
    """Run the operator until stop_flag is set (or forever); usable in-process by tests."""
    configure_thread_pool(asyncio.get_running_loop())
    load_client_config()
    config.root.mkdir(parents=True, exist_ok=True)
    runtime = Runtime.create(config, Kube())
    health = HealthServer(config.metrics_port) if config.metrics_port else None
    if health:
        await health.start()
    ready = asyncio.Event()

    async def mark_ready() -> None:
        await ready.wait()
        if health:
            health.ready = True

    marker = asyncio.create_task(mark_ready())
    try:
        await kopf.operator(
            registry=build_registry(config),
            memo=kopf.Memo(runtime=runtime),
            standalone=True,  # kopf peering is active/standby; replicas share by membership instead
            clusterwide=not config.namespaces,
            namespaces=list(config.namespaces),
            stop_flag=stop_flag,
            ready_flag=ready,
        )
    finally:
        marker.cancel()
        if runtime.members is not None:  # normally done by the cleanup handler already
            await runtime.members.stop()
        if health:
            await health.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        config = configuration.parse(args)
    except configuration.ConfigError as error:
        print(f"workspace-operator: configuration error: {error}", file=sys.stderr)
        return 2
    setup_logging(config.log_format, configuration.verbose_requested(args))
    log = logging.getLogger("workspace_operator")
    log.info(
        "starting: root=%s namespaces=%s lease-namespace=%s schemes=%s shares=%s",
        config.root,
        ",".join(config.namespaces) or "(all)",
        config.lease_namespace,
        ",".join(sorted(config.allowed_schemes)),
        f"fixed {config.replica_index}/{config.replicas}" if config.replicas > 1 else "by membership",
    )
    if config.replicas > 1:
        log.warning(
            "WORKSPACE_REPLICAS/WORKSPACE_REPLICA_INDEX are deprecated: fixed shards do not move "
            "when a replica dies; unset them to share work by live membership"
        )
    try:
        asyncio.run(run(config))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
