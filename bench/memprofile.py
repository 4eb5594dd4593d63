"""Where the operator's memory goes with many Workspaces: tracemalloc inside the shipped operator.

    python -m bench.memprofile [--count 1000] [--projects 4] [--env MALLOC_ARENA_MAX=2]

Runs the operator's own entry point (`workspace_operator.__main__.main`) unchanged, through
a small wrapper that starts tracemalloc once the modules are imported and dumps a snapshot
on SIGUSR1 (the operator does not use SIGUSR1).
Takes a snapshot idle and one with `count` Ready Workspaces, then prints RSS, the traced
Python heap, asyncio task and thread counts, and the biggest growth by source line and
by package. tracemalloc slows the operator down and adds its own memory: use it for
*where*, and the memory scenario for *how much*.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Any

from kubernetes.client import CoreV1Api

from bench import repogen
from bench.harness import ControlPlane, Operator, Upstream, Workspaces

WRAPPER = r"""
import asyncio, gc, os, signal, sys, threading, tracemalloc
import workspace_operator.__main__ as entry  # imported untraced: tracing 1,000 imports takes minutes
if os.environ.get("BENCH_NO_TIMERS"):
    # Experiment: register no per-object kopf timers (the expiry timer), to measure what they cost.
    import kopf
    kopf.timer = lambda *args, **kwargs: (lambda fn: fn)
if os.environ.get("BENCH_TRACE", "1") == "1":
    tracemalloc.start(int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "10")))
out = os.environ["BENCH_TRACEMALLOC_DIR"]
def dump(signum, frame):
    gc.collect()
    n = len([f for f in os.listdir(out) if f.endswith(".pickle")])
    tracemalloc.take_snapshot().dump(os.path.join(out, f"snap-{n}.pickle"))
    loop = asyncio._get_running_loop()
    tasks = len(asyncio.all_tasks(loop)) if loop else -1
    with open(os.path.join(out, f"snap-{n}.txt"), "w") as f:
        f.write(f"{tasks} {threading.active_count()} {len(gc.get_objects())}\n")
signal.signal(signal.SIGUSR1, dump)
def trim(signum, frame):
    import ctypes
    gc.collect()
    released = ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open(os.path.join(out, "trimmed.txt"), "w") as f:
        f.write(f"{released}\n")
signal.signal(signal.SIGUSR2, trim)
sys.exit(entry.main([]))
"""


def snapshot(op: Operator, out: Path, index: int) -> tuple[tracemalloc.Snapshot, str]:
    os.kill(op.pid, signal.SIGUSR1)
    path = out / f"snap-{index}.txt"
    deadline = time.monotonic() + 120
    while not path.exists() or not path.read_text().endswith("\n"):
        if time.monotonic() > deadline:
            raise TimeoutError("no snapshot from the operator")
        time.sleep(0.2)
    return tracemalloc.Snapshot.load(str(out / f"snap-{index}.pickle")), path.read_text().strip()


def package_of(filename: str) -> str:
    parts = Path(filename).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    if "workspace_operator" in parts:
        return "workspace_operator"
    return "stdlib/other"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--projects", type=int, default=4)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra operator environment (e.g. MALLOC_ARENA_MAX=2)")
    parser.add_argument("--no-trace", action="store_true", help="no tracemalloc: RSS only")
    parser.add_argument("--mid", action="store_true",
                        help="take the second snapshot mid-burst (a quarter Ready), not at the end")
    parser.add_argument("--trim", action="store_true",
                        help="experiment: afterwards, gc.collect() + malloc_trim(0) in the operator, RSS again")
    parser.add_argument("--batch", type=int, default=0,
                        help="create in batches of this many, each waited for (default: all at once)")
    parser.add_argument("--no-timers", action="store_true",
                        help="experiment: register no per-object kopf timer (the reconcile timer)")
    parser.add_argument("--idle-writes", type=float, default=0, metavar="SECONDS",
                        help="afterwards, count API writes (Workspace resourceVersion changes, Events) "
                        "over this many idle seconds")
    opts = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]

    run = Path(tempfile.mkdtemp(prefix="workspace-memprofile-"))
    cp = ControlPlane(run / "control-plane")
    upstream: Upstream | None = None
    op: Operator | None = None
    ws: Workspaces | None = None
    try:
        cp.start()
        gen = repogen.generate("tiny")
        served = run / "served"
        served.mkdir()
        repogen.copy_for_serving(gen, served / "repo.git")
        upstream = Upstream(served).start()
        namespace = cp.namespace("memprofile")
        snaps = run / "snaps"
        snaps.mkdir()
        env = dict(item.split("=", 1) for item in opts.env)
        env["BENCH_TRACEMALLOC_DIR"] = str(snaps)
        command = [sys.executable, "-m", "workspace_operator"]
        if opts.no_timers:
            env["BENCH_NO_TIMERS"] = "1"
        if opts.no_trace:
            env["BENCH_TRACE"] = "0"
        if not opts.no_trace or opts.no_timers or opts.trim:
            wrapper = run / "traced_operator.py"
            wrapper.write_text(WRAPPER)
            command = [sys.executable, str(wrapper)]
        op = Operator(cp.kubeconfig, run / "volume", namespace, run / "operator.log", env, command)
        op.start(timeout=120)
        ws = Workspaces(cp, namespace, upstream.url("repo"))
        return _profile(opts, op, ws, gen, snaps)
    finally:
        if ws is not None:
            ws.close()
        if op is not None:
            op.stop()
        if upstream is not None:
            upstream.stop()
        cp.stop()
        shutil.rmtree(run, ignore_errors=True)


def _profile(opts: argparse.Namespace, op: Operator, ws: Workspaces, gen: repogen.Generated, snaps: Path) -> int:
    time.sleep(2)
    rss0 = op.rss_kb()["rss"]
    first = None if opts.no_trace else snapshot(op, snaps, 0)
    for p in range(opts.projects):
        ws.materialize(f"seed-{p}", f"m{p}", {"commit": gen.head})
    items = [(f"w-{i}", f"m{i % opts.projects}", {"commit": gen.head}) for i in range(opts.count)]
    started = time.monotonic()
    batch = opts.batch or len(items)
    mid = None
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        ws.create_many(chunk)
        if opts.mid and mid is None and first is not None:
            while len(ws.watcher.ready_at) < len(items) // 4:
                time.sleep(0.5)
            mid = snapshot(op, snaps, 1)
            print(f"mid-burst snapshot at {len(ws.watcher.ready_at)} Ready, RSS {op.rss_kb()['rss'] / 1024:.1f} MB")
        ws.watcher.wait_ready([name for name, _p, _r in chunk], timeout=3600)
    print(f"{opts.count} Ready in {time.monotonic() - started:.0f}s"
          f"{f' (batches of {batch})' if opts.batch else ' (created at once)'}")
    time.sleep(35)  # every per-object timer started
    rss1 = op.rss_kb()["rss"]
    print(f"RSS idle {rss0 / 1024:.1f} MB -> {rss1 / 1024:.1f} MB with {opts.count} Workspaces "
          f"(+{(rss1 - rss0) / opts.count:.1f} KB per Workspace); env {opts.env or '-'}"
          f"{'; no per-object timers' if opts.no_timers else ''}{'' if opts.no_trace else '; tracemalloc on'}")
    if opts.idle_writes:
        idle_writes(ws, opts.idle_writes)
    if opts.trim:
        os.kill(op.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 60
        while not (snaps / "trimmed.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        rss2 = op.rss_kb()["rss"]
        print(f"after gc.collect() + malloc_trim(0): RSS {rss2 / 1024:.1f} MB "
              f"({(rss2 - rss1) / 1024:+.1f} MB)")
    if first is None:
        return 0
    second = mid or snapshot(op, snaps, 1)
    (s0, info0), (s1, info1) = first, second
    heap0 = sum(stat.size for stat in s0.statistics("filename"))
    heap1 = sum(stat.size for stat in s1.statistics("filename"))
    print(f"traced Python heap {heap0 / 2**20:.1f} MB -> {heap1 / 2**20:.1f} MB "
          f"(+{(heap1 - heap0) / opts.count / 1024:.1f} KB per Workspace)")
    print(f"asyncio tasks / threads / gc objects: idle {info0} -> {info1}")
    by_package: dict[str, int] = defaultdict(int)
    for stat in s1.compare_to(s0, "filename"):
        by_package[package_of(stat.traceback[0].filename)] += stat.size_diff
    print("\ngrowth by package:")
    for package, size in sorted(by_package.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {size / 2**20:8.2f} MB  {package}")
    print("\ngrowth by line (allocation site):")
    for stat in s1.compare_to(s0, "lineno")[: opts.top]:
        frame = stat.traceback[0]
        print(f"  {stat.size_diff / 2**20:8.2f} MB {stat.count_diff:+8d}  {frame.filename}:{frame.lineno}")
    print("\ngrowth by traceback (top 8, innermost frames of ours / kopf's):")
    for stat in s1.compare_to(s0, "traceback")[:8]:
        print(f"  {stat.size_diff / 2**20:8.2f} MB {stat.count_diff:+8d}")
        shown = [f for f in stat.traceback if "site-packages/kopf" in f.filename
                 or "workspace_operator" in f.filename][-4:]
        for frame in shown or list(stat.traceback)[-3:]:
            print(f"        {frame.filename.split('site-packages/')[-1]}:{frame.lineno}")
    return 0


def idle_writes(ws: Workspaces, seconds: float) -> None:
    """Writes the operator makes while nothing changes: Workspaces modified, Events posted."""
    def versions() -> dict[str, str]:
        listing: Any = ws.custom.list_namespaced_custom_object("crafting.dev", "v1", ws.namespace, "workspaces")
        return {item["metadata"]["name"]: item["metadata"]["resourceVersion"] for item in listing["items"]}

    core = CoreV1Api(ws.client)
    before, events_before = versions(), len(core.list_namespaced_event(ws.namespace).items)
    time.sleep(seconds)
    after, events_after = versions(), len(core.list_namespaced_event(ws.namespace).items)
    changed = sum(1 for name, version in after.items() if before.get(name) != version)
    per_minute = (changed + events_after - events_before) * 60 / seconds
    print(f"idle API writes over {seconds:.0f}s with {len(after)} Ready Workspaces: {changed} Workspaces "
          f"modified, {events_after - events_before} Events posted ({per_minute:.1f} writes/minute)")


if __name__ == "__main__":
    sys.exit(main())
