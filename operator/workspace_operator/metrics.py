"""Prometheus series and the /metrics, /healthz, /readyz endpoint."""

from __future__ import annotations

import asyncio
import platform
import time

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler

from workspace_operator import __version__

_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

# One definition per line, full names spelled out (grep finds them): several
# changes add series here, and a flat list merges cleanly.
BUILD_INFO = Gauge("workspace_operator_build_info", "Always 1; the labels say what runs", ["version", "python"])
MATERIALIZATIONS = Counter("workspace_operator_materializations_total", "Materialization outcomes", ["result"])
IN_FLIGHT = Gauge("workspace_operator_materializations_in_flight", "Materializations holding their project lock")
QUEUED = Gauge("workspace_operator_materializations_queued", "Materializations waiting for their project lock")
DELETIONS = Counter("workspace_operator_deletions_total", "Worktree removals by the finalizer", ["result"])
LOCK_WAIT = Histogram("workspace_operator_lock_wait_seconds", "Time waiting for a project Lease", buckets=_SECONDS)
FETCH = Histogram(
    "workspace_operator_fetch_seconds", "git fetch time per materialization that fetched", buckets=_SECONDS
)
CHECKOUT = Histogram("workspace_operator_checkout_seconds", "worktree add + sparse + submodules time", buckets=_SECONDS)
TOTAL = Histogram("workspace_operator_materialize_seconds", "Lock wait + fetch + checkout", buckets=_SECONDS)
CACHE_LOOKUPS = Counter("workspace_operator_cache_lookups_total", "Was the wanted commit already cached", ["result"])
CACHE_REPAIRS = Counter("workspace_operator_cache_repairs_total", "Broken caches quarantined and re-created")
UPSTREAM_REQUESTS = Counter("workspace_operator_upstream_requests_total", "git calls to upstreams", ["kind", "result"])
GIT_FAILURES = Counter("workspace_operator_git_failures_total", "Failed materializations by reason", ["reason"])
GC_ACTIONS = Counter("workspace_operator_gc_actions_total", "Garbage collection actions", ["action"])
LEASE_TAKEOVERS = Counter("workspace_operator_lease_takeovers_total", "Expired project Leases taken over")
GC_DURATION = Histogram("workspace_operator_gc_pass_seconds", "Duration of one GC pass", buckets=_SECONDS)
MEMBERS = Gauge("workspace_operator_members", "Live operator replicas seen (heartbeat Leases), this one included")
PROJECTS_OWNED = Gauge(
    "workspace_operator_projects_owned", "Projects with Workspaces this replica owns (at the last change)"
)
TAKEOVERS = Counter("workspace_operator_takeovers_total", "Unsettled Workspaces picked up after a change of membership")
PROJECT_LEASES_DELETED = Counter(
    "workspace_operator_project_leases_deleted_total",
    "Leases of projects with no cache and no Workspaces, deleted by GC",
)
UNSAFE_PATHS = Counter(
    "workspace_operator_unsafe_paths_total",
    "Symlinks found where the operator expects its own directories (never followed)",
    ["operation"],
)
RECONCILES = Counter("workspace_operator_reconcile_total", "Per-Workspace timer runs by decision", ["decision"])
VOLUME_USAGE = Gauge("workspace_operator_volume_usage_ratio", "Used fraction of the workspace volume")
# Measured by the GC pass (every WORKSPACE_GC_INTERVAL_SECONDS), never per scrape.
WORKSPACES = Gauge("workspace_operator_workspaces", "Workspaces by phase at the last GC pass", ["phase"])
CACHE_BYTES = Gauge("workspace_operator_cache_bytes", "Disk used by a project's bare cache", ["namespace", "project"])
CACHE_LAST_FETCH = Gauge(
    "workspace_operator_cache_last_fetch_timestamp_seconds",
    "When a project's cache last fetched",
    ["namespace", "project"],
)


def publish_build_info() -> None:
    BUILD_INFO.labels(version=__version__, python=platform.python_version()).set(1)


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
        # prometheus_client's handler: content negotiation (text or OpenMetrics by
        # the Accept header), ?name[]= filtering and gzip when asked for.
        app.router.add_get("/metrics", make_aiohttp_handler())
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        publish_build_info()
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

    async def _healthz(self, _: web.Request) -> web.Response:
        stalled = time.monotonic() - self._last_tick
        if stalled > 30:
            return web.Response(status=503, text=f"event loop stalled for {stalled:.0f}s\n")
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n") if self.ready else web.Response(status=503, text="starting\n")
