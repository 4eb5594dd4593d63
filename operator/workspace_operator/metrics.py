"""Prometheus series and the /metrics, /healthz, /readyz endpoint."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

MATERIALIZATIONS = Counter("workspace_materializations_total", "Materialization outcomes", ["result"])
DELETIONS = Counter("workspace_deletions_total", "Worktree removals by the finalizer", ["result"])
LOCK_WAIT = Histogram("workspace_lock_wait_seconds", "Time waiting for a project Lease", buckets=_SECONDS)
FETCH = Histogram("workspace_fetch_seconds", "git fetch time per materialization that fetched", buckets=_SECONDS)
CHECKOUT = Histogram("workspace_checkout_seconds", "worktree add + sparse + submodules time", buckets=_SECONDS)
TOTAL = Histogram("workspace_materialize_seconds", "Lock wait + fetch + checkout", buckets=_SECONDS)
CACHE_LOOKUPS = Counter("workspace_cache_lookups_total", "Was the wanted commit already cached", ["result"])
CACHE_REPAIRS = Counter("workspace_cache_repairs_total", "Broken caches quarantined and re-created")
GIT_FAILURES = Counter("workspace_git_failures_total", "Failed materializations by reason", ["reason"])
GC_ACTIONS = Counter("workspace_gc_actions_total", "Garbage collection actions", ["action"])
LEASE_TAKEOVERS = Counter("workspace_lease_takeovers_total", "Expired project Leases taken over")
GC_DURATION = Histogram("workspace_gc_pass_seconds", "Duration of one GC pass", buckets=_SECONDS)
UNSAFE_PATHS = Counter("workspace_unsafe_paths_total",
                       "Symlinks found where the operator expects its own directories (never followed)",
                       ["operation"])
RECONCILES = Counter("workspace_reconcile_total", "Per-Workspace timer runs by decision", ["decision"])
VOLUME_USAGE = Gauge("workspace_volume_usage_ratio", "Used fraction of the workspace volume")


class HealthServer:
    """Serves metrics and probes; healthz fails if the event loop stops turning."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ready = False
        self._last_tick = time.monotonic()
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "0.0.0.0", self.port).start()
        self._ticker = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        if self._runner:
            await self._runner.cleanup()

    async def _tick(self) -> None:
        while True:
            self._last_tick = time.monotonic()
            await asyncio.sleep(1)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        stalled = time.monotonic() - self._last_tick
        if stalled > 30:
            return web.Response(status=503, text=f"event loop stalled for {stalled:.0f}s\n")
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n") if self.ready else web.Response(status=503, text="starting\n")
