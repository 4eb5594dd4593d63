"""`python -m workspace_operator`: parse settings, build the runtime, run kopf."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Sequence

import kopf

from workspace_operator import config as configuration
from workspace_operator.handlers import build_registry
from workspace_operator.kube import Kube, configure_thread_pool, load_client_config
from workspace_operator.metrics import HealthServer
from workspace_operator.runtime import Runtime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(fmt: str, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
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
            standalone=True,  # kopf peering is active/standby; we shard instead (SPEC §9)
            clusterwide=not config.namespaces,
            namespaces=list(config.namespaces),
            stop_flag=stop_flag,
            ready_flag=ready,
        )
    finally:
        marker.cancel()
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
    logging.getLogger("workspace_operator").info(
        "starting: root=%s namespaces=%s lease-namespace=%s schemes=%s replica=%d/%d",
        config.root, ",".join(config.namespaces) or "(all)", config.lease_namespace,
        ",".join(sorted(config.allowed_schemes)), config.replica_index, config.replicas)
    try:
        asyncio.run(run(config))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
