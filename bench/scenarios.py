"""The benchmark scenarios. Each runs against the real control plane, with the
operator subprocess as it ships and the upstream behind `git http-backend` on loopback.

Operator and raw-git measurements are interleaved rep by rep (their order alternating),
on the same repository, server and disk, so ratios compare like with like.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import repogen
from bench.harness import (
    ControlPlane,
    Sample,
    Upstream,
    Workspaces,
    cpu_delta,
    cpu_snapshot,
    git,
    now,
    start_operator,
    timed_git,
)


@dataclass
class Settings:
    quick: bool
    run_dir: Path
    results_dir: Path
    keep: bool = False
    reps: int = 5
    size: str = "gitgit"  # cold / warm / warm-new
    burst_size: str = "small"  # burst / many: operator costs and fetch dedup, not checkout I/O
    many_size: str = "small"
    memory_size: str = "tiny"  # RSS depends on the number of Workspaces, not on the tree
    burst: int = 50
    many: int = 200
    many_projects: int = 20
    replica_counts: tuple[int, ...] = (1, 2, 3)  # replicas: `many` shared by this many operators
    memory: int = 1000
    memory_projects: int = 4
    memory_batch: int = 50  # steady state: created this many at a time
    push_commits: int = 5
    monorepo_reps: int = 3
    settle_seconds: float = 35.0  # memory: wait for kopf's per-object timers to start
    monorepo_references: bool = False  # fresh clones of the monorepo too (slow)
    monorepo_cold: bool = False
    operator_env: dict[str, str] = field(default_factory=dict)  # experiments: e.g. MALLOC_ARENA_MAX=2


@dataclass
class Row:
    scenario: str
    repo: str
    operator: float | None
    baseline: float | None
    baseline_is: str
    target: str
    met: bool | None
    unit: str = "s"
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.operator is None or not self.baseline:
            return None
        return self.operator / self.baseline


@dataclass
class Result:
    name: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def spread(operator: list[float], raw: list[float]) -> str:
    """Ranges, and the median of per-rep ratios (each pair ran back to back, under the same load)."""
    paired = median([o / r for o, r in zip(operator, raw, strict=True) if r > 0])
    return (
        f"range: operator {min(operator):.2f}–{max(operator):.2f} s, raw {min(raw):.2f}–{max(raw):.2f} s; "
        f"median of per-rep ratios {paired:.2f}x"
    )


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(len(ordered), rank) - 1]


class Env:
    """One scenario's namespace, operator, upstream and scratch space; torn down on exit."""

    def __init__(
        self, cp: ControlPlane, settings: Settings, name: str, size: str, operator_env: Mapping[str, str] | None = None
    ) -> None:
        self.cp, self.settings, self.name, self.size = cp, settings, name, size
        self.dir = settings.run_dir / name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.gen = repogen.generate(size)
        self.head = self.gen.head
        served = self.dir / "served"
        served.mkdir()
        self.bare = repogen.copy_for_serving(self.gen, served / "repo.git")
        self.upstream = Upstream(served).start()
        self.url = self.upstream.url("repo")
        namespace = cp.namespace(f"bench-{name}-{uuid.uuid4().hex[:6]}")
        settings.results_dir.mkdir(parents=True, exist_ok=True)
        self.operator = start_operator(
            cp.kubeconfig,
            self.dir / "volume",
            namespace,
            settings.results_dir / f"operator-{name}.log",
            {**settings.operator_env, **(operator_env or {})},
        )
        self.ws = Workspaces(cp, namespace, self.url)
        self.raw = self.dir / "raw"
        self.raw.mkdir()
        self.cpu_start = cpu_snapshot(cp, self.operator)
        self.cpu: dict[str, float] = {}

    def __enter__(self) -> Env:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.operator.proc is not None and self.operator.proc.poll() is None:
            self.cpu = cpu_delta(self.cpu_start, cpu_snapshot(self.cp, self.operator))
        self.ws.close()
        self.operator.stop()
        self.upstream.stop()
        if not self.settings.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def seed(self, project: str) -> Path:
        """A Ready Workspace of the tip (the operator's cache) and a raw bare clone (the baseline's)."""
        self.ws.materialize("seed", project, {"branch": "main"})
        cache = self.raw / "cache.git"
        git("clone", "--bare", "--quiet", self.url, str(cache))
        return cache

    def volume(self, sample: Sample) -> Path:
        return self.operator.root / sample.path

    def drop(self, *paths: Path) -> None:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)


def settle() -> None:
    """Flush dirty pages (untimed) so no measurement pays for the previous one's writeback."""
    os.sync()


@dataclass
class GitCpu:
    """CPU seconds (user + sys) of all git processes of each measured step, client and server
    side: far less sensitive than wall time to other load on the machine, so a steady
    operator/raw CPU ratio with a jumpy wall-time ratio says the difference is scheduling noise."""

    env: Env
    operator: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)

    def note(self) -> str:
        return f"git CPU (client + server): operator {median(self.operator):.2f} s, raw {median(self.raw):.2f} s"


def interleave(rep: int, operator: Callable[[], None], baseline: Callable[[], None], cpu: GitCpu | None = None) -> None:
    """Alternate who goes first, so neither side always gets the warmer caches."""
    steps = ((operator, "operator"), (baseline, "raw"))
    for step, side in steps if rep % 2 == 0 else steps[::-1]:
        settle()
        before = cpu_snapshot(cpu.env.cp, cpu.env.operator) if cpu else None
        step()
        if cpu and before:
            delta = cpu_delta(before, cpu_snapshot(cpu.env.cp, cpu.env.operator))
            getattr(cpu, side).append(delta["operator_git"] + delta["upstream_and_raw_git"])


def progress(message: str) -> None:
    print(f"  {message}", flush=True)


def _samples_dict(samples: list[Sample]) -> list[dict[str, Any]]:
    return [s.as_dict() for s in samples]


def breakdown(samples: list[Sample]) -> dict[str, float]:
    """Medians of where a single Workspace's created→Ready goes."""

    def m(key: Callable[[Sample], float]) -> float:
        return median([key(s) for s in samples])

    return {
        "client": m(lambda s: s.client_seconds),
        "operator_total": m(lambda s: s.timings.get("totalSeconds", 0.0)),
        "lock_wait": m(lambda s: s.timings.get("lockWaitSeconds", 0.0)),
        "fetch": m(lambda s: s.timings.get("fetchSeconds", 0.0)),
        "checkout": m(lambda s: s.timings.get("checkoutSeconds", 0.0)),
        "engine_other": m(
            lambda s: (
                s.timings.get("totalSeconds", 0.0)
                - s.timings.get("lockWaitSeconds", 0.0)
                - s.timings.get("fetchSeconds", 0.0)
                - s.timings.get("checkoutSeconds", 0.0)
            )
        ),
        "outside_handler": m(lambda s: s.client_seconds - s.timings.get("totalSeconds", 0.0)),
        "overhead": m(
            lambda s: s.client_seconds - s.timings.get("fetchSeconds", 0.0) - s.timings.get("checkoutSeconds", 0.0)
        ),
        "to_finalizer": m(lambda s: s.to_finalizer),
        "finalizer_to_materializing": m(lambda s: s.to_materializing - s.to_finalizer),
        "materializing_to_ready": m(lambda s: s.client_seconds - s.to_materializing),
        "events_before_ready": m(lambda s: float(s.events_before_ready)),
    }


def fsync_probe(directory: Path) -> float:
    """What writing one small file durably costs right now (the operator's completion record)."""
    started = now()
    path = directory / f".fsync-probe-{uuid.uuid4().hex[:6]}"
    with open(path, "w") as handle:
        handle.write("{}")
        handle.flush()
        os.fsync(handle.fileno())
    seconds = now() - started
    path.unlink()
    return seconds


def _op_summary(sample: Sample) -> str:
    t = sample.timings
    return (
        f"operator {sample.client_seconds:.3f}s (fetch {t.get('fetchSeconds', 0):.3f}s, "
        f"checkout {t.get('checkoutSeconds', 0):.3f}s)"
    )


# -- single Workspaces: cold, warm, warm with new commits -------------------------------------


def cold(cp: ControlPlane, st: Settings, size: str | None = None, reps: int | None = None) -> Result:
    """A Workspace of a project with no cache vs `git clone --bare` + `git worktree add`."""
    size = size or st.size
    reps = reps or st.reps
    result = Result(f"cold-{size}")
    with Env(cp, st, f"cold-{size}", size) as env:
        samples: list[Sample] = []
        raw: list[float] = []
        fetches: list[int] = []

        def operator(rep: int, record: bool = True) -> None:
            before = env.upstream.fetches("repo")
            sample = env.ws.materialize(f"cold-{rep}", f"cold-{rep}", {"branch": "main"})
            assert sample.commit == env.head, (sample.commit, env.head)
            if record:
                samples.append(sample)
                fetches.append(env.upstream.fetches("repo") - before)

        def baseline(rep: int, record: bool = True) -> None:
            cache, tree = env.raw / f"cold-{rep}.git", env.raw / f"cold-{rep}"
            seconds = timed_git(
                ["clone", "--bare", "--quiet", env.url, str(cache)],
                ["-C", str(cache), "worktree", "add", "--detach", "--quiet", str(tree), env.head],
            )
            if record:
                raw.append(seconds)

        # Warm-up, unmeasured: kopf's first event, the page cache, the server.
        operator(9999, record=False)
        baseline(9999, record=False)
        cpu = GitCpu(env)
        for rep in range(reps):
            interleave(rep, lambda: operator(rep), lambda: baseline(rep), cpu)
            progress(f"cold {size} rep {rep + 1}/{reps}: {_op_summary(samples[-1])}, raw {raw[-1]:.3f}s")
        ops = [s.client_seconds for s in samples]
        op, base = median(ops), median(raw)
        result.rows.append(
            Row(
                "cold (no cache)",
                size,
                op,
                base,
                "`git clone --bare` + `git worktree add`",
                "≤ 1.1x",
                op <= 1.1 * base,
                note=f"{spread(ops, raw)}; {cpu.note()}; upstream fetches per Workspace: {max(fetches)}",
            )
        )
        result.data = {
            "samples": _samples_dict(samples),
            "raw": raw,
            "fetches": fetches,
            "git_cpu": {"operator": cpu.operator, "raw": cpu.raw},
            "breakdown": breakdown(samples),
            "api_get_roundtrip": env.ws.get_roundtrip("cold-0"),
        }
    result.data["cpu"] = env.cpu
    return result


def warm(
    cp: ControlPlane, st: Settings, size: str | None = None, reps: int | None = None, references: bool = True
) -> Result:
    """Commit already cached, pinned by commit, vs `git worktree add` of that commit.

    Alongside, for the README: a fresh `git clone` and a `git clone --depth 1` of the
    same repository from the same server, interleaved in the same reps.
    """
    size = size or st.size
    reps = reps or st.reps
    result = Result(f"warm-{size}")
    with Env(cp, st, f"warm-{size}", size) as env:
        base_cache = env.seed("warm")
        samples: list[Sample] = []
        raw: list[float] = []
        fsyncs: list[float] = []
        clones: list[float] = []
        shallow: list[float] = []

        def operator(rep: int, record: bool = True) -> None:
            sample = env.ws.materialize(f"warm-{rep}", "warm", {"commit": env.head})
            assert sample.cache.get("hit") and not sample.cache.get("fetched"), sample.cache
            if record:
                samples.append(sample)

        def baseline(rep: int, record: bool = True) -> None:
            tree = env.raw / f"wt-{rep}"
            seconds = timed_git(["-C", str(base_cache), "worktree", "add", "--detach", "--quiet", str(tree), env.head])
            probe = fsync_probe(env.raw)  # after the timing: what a durable record would have added
            if record:
                raw.append(seconds)
                fsyncs.append(probe)

        def clone_references(rep: int) -> None:
            full, thin = env.raw / f"clone-{rep}", env.raw / f"shallow-{rep}"
            settle()
            clones.append(timed_git(["clone", "--quiet", env.url, str(full)]))
            settle()
            shallow.append(timed_git(["clone", "--quiet", "--depth", "1", env.url, str(thin)]))
            env.drop(full, thin)

        operator(9999, record=False)
        baseline(9999, record=False)
        cpu = GitCpu(env)
        for rep in range(reps):
            interleave(rep, lambda: operator(rep), lambda: baseline(rep), cpu)
            extra = ""
            if references:
                clone_references(rep)
                extra = f"; clone {clones[-1]:.2f}s, --depth 1 {shallow[-1]:.2f}s"
            progress(f"warm {size} rep {rep + 1}/{reps}: {_op_summary(samples[-1])}, raw {raw[-1]:.3f}s{extra}")
        ops = [s.client_seconds for s in samples]
        op, base = median(ops), median(raw)
        result.rows.append(
            Row(
                "warm (commit cached, pinned)",
                size,
                op,
                base,
                "`git worktree add` of the commit",
                "≤ 1.5x + 0.3 s",
                op <= 1.5 * base + 0.3,
                note=f"operator − raw: {op - base:+.2f} s; {spread(ops, raw)}; {cpu.note()}",
            )
        )
        if references:
            result.rows.append(
                Row(
                    "for the README: fresh `git clone`",
                    size,
                    op,
                    median(clones),
                    "`git clone` (full history, checkout)",
                    "—",
                    None,
                    note="operator column: the warm Workspace above",
                )
            )
            result.rows.append(
                Row(
                    "for the README: `git clone --depth 1`",
                    size,
                    op,
                    median(shallow),
                    "`git clone --depth 1`",
                    "—",
                    None,
                    note="operator column: the warm Workspace above",
                )
            )
        result.data = {
            "samples": _samples_dict(samples),
            "raw": raw,
            "fsync_after_raw_checkout": fsyncs,
            "git_cpu": {"operator": cpu.operator, "raw": cpu.raw},
            "clone": clones,
            "clone_depth1": shallow,
            "breakdown": breakdown(samples),
            "api_get_roundtrip": env.ws.get_roundtrip("seed"),
        }
    result.data["cpu"] = env.cpu
    return result


def warm_new(cp: ControlPlane, st: Settings, size: str | None = None, reps: int | None = None) -> Result:
    """New commits pushed upstream; a Workspace for the new tip vs `git fetch` + `git worktree add`."""
    size = size or st.size
    reps = reps or st.reps
    result = Result(f"warm-new-{size}")
    with Env(cp, st, f"warm-new-{size}", size) as env:
        base_cache = env.seed("fresh")
        extender = repogen.Extender(env.bare, seed=4242)
        samples: list[Sample] = []
        raw: list[float] = []
        raw_fetch: list[float] = []
        fetches: list[int] = []

        def operator(rep: int, tip: str, record: bool = True) -> None:
            before = env.upstream.fetches("repo")
            sample = env.ws.materialize(f"new-{rep}", "fresh", {"branch": "main", "commit": tip})
            assert sample.commit == tip and sample.cache.get("fetched"), (sample.commit, tip, sample.cache)
            if record:
                samples.append(sample)
                fetches.append(env.upstream.fetches("repo") - before)

        def baseline(rep: int, tip: str, record: bool = True) -> None:
            tree = env.raw / f"wt-{rep}"
            started = now()
            git("-C", str(base_cache), "fetch", "--quiet", "origin", "+refs/heads/main:refs/heads/main")
            fetched = now() - started
            git("-C", str(base_cache), "worktree", "add", "--detach", "--quiet", str(tree), tip)
            if record:
                raw.append(now() - started)
                raw_fetch.append(fetched)

        tip = extender.push(st.push_commits)
        operator(9999, tip, record=False)
        baseline(9999, tip, record=False)
        cpu = GitCpu(env)
        for rep in range(reps):
            tip = extender.push(st.push_commits)
            interleave(rep, lambda: operator(rep, tip), lambda: baseline(rep, tip), cpu)
            progress(
                f"warm-new {size} rep {rep + 1}/{reps}: {_op_summary(samples[-1])}, raw {raw[-1]:.3f}s "
                f"(fetch {raw_fetch[-1]:.3f}s)"
            )
        ops = [s.client_seconds for s in samples]
        op, base = median(ops), median(raw)
        result.rows.append(
            Row(
                f"warm + {st.push_commits} new upstream commits",
                size,
                op,
                base,
                "`git fetch` + `git worktree add`",
                "≤ 1.2x",
                op <= 1.2 * base,
                note=f"{spread(ops, raw)}; {cpu.note()}; upstream fetches per Workspace: "
                f"{max(fetches)}; raw fetch "
                f"{median(raw_fetch):.3f}s, operator fetch "
                f"{median([s.timings.get('fetchSeconds', 0.0) for s in samples]):.3f}s",
            )
        )
        result.data = {
            "samples": _samples_dict(samples),
            "raw": raw,
            "raw_fetch": raw_fetch,
            "fetches": fetches,
            "git_cpu": {"operator": cpu.operator, "raw": cpu.raw},
            "breakdown": breakdown(samples),
            "push_commits": st.push_commits,
            "api_get_roundtrip": env.ws.get_roundtrip("seed"),
        }
    result.data["cpu"] = env.cpu
    return result


# -- many Workspaces: burst, many, memory ------------------------------------------------------


def _wave(env: Env, items: Sequence[tuple[str, str, Mapping[str, str]]], timeout: float) -> dict[str, Any]:
    names = [name for name, _project, _ref in items]
    settle()
    fetches_before = env.upstream.fetches("repo")
    cpu_before = cpu_snapshot(env.cp, env.operator)
    started = now()
    env.ws.create_many(items)
    created = now()
    env.ws.watcher.wait_ready(names, timeout)
    cpu = cpu_delta(cpu_before, cpu_snapshot(env.cp, env.operator))
    lat = [env.ws.latency(n) for n in names]
    first = min(env.ws.created_at[n] for n in names)
    last = max(env.ws.watcher.ready_at[n] for n in names)
    statuses = [env.ws.watcher.ready_status[n] for n in names]
    return {
        "count": len(names),
        "ready": sum(1 for n in names if n in env.ws.watcher.ready_at),
        "wall": last - first,
        "create_seconds": created - started,
        "p50": percentile(lat, 50),
        "p99": percentile(lat, 99),
        "max": max(lat),
        "throughput": len(names) / (last - first),
        "lock_wait_p50": percentile([float(s["timings"]["lockWaitSeconds"]) for s in statuses], 50),
        "checkout_p50": percentile([float(s["timings"]["checkoutSeconds"]) for s in statuses], 50),
        "fetched": sum(1 for s in statuses if s["cache"]["fetched"]),
        "upstream_fetches": env.upstream.fetches("repo") - fetches_before,
        "cpu": cpu,
    }


def _raw_serial(env: Env, projects: int, count: int, measure_at_most: int) -> tuple[float, str]:
    """`projects` x `clone --bare` + `count` x `worktree add`, one after another; measured up to
    `measure_at_most` worktrees and extrapolated beyond (said so in the label)."""
    settle()
    clone_seconds = []
    for p in range(projects):
        clone_seconds.append(timed_git(["clone", "--bare", "--quiet", env.url, str(env.raw / f"p{p}.git")]))
    measured = min(count, measure_at_most)
    adds = []
    for i in range(measured):
        adds.append(
            timed_git(
                [
                    "-C",
                    str(env.raw / f"p{i % projects}.git"),
                    "worktree",
                    "add",
                    "--detach",
                    "--quiet",
                    str(env.raw / f"wt-{i}"),
                    env.head,
                ]
            )
        )
    total = sum(clone_seconds) + sum(adds) * count / measured
    label = "" if measured == count else f" (measured {measured} adds, extrapolated)"
    return total, label


def _wave_vs_serial(
    cp: ControlPlane,
    st: Settings,
    name: str,
    size: str,
    count: int,
    projects: int,
    measure_at_most: int,
    verdict: Callable[[dict[str, Any], float, str], Row],
) -> Result:
    """`count` Workspaces over `projects` projects created at once (cold caches), against raw git
    doing the same work serially."""
    result = Result(f"{name}-{size}")
    with Env(cp, st, f"{name}-{size}", size) as env:
        items = [(f"{name}-{i}", f"{name}{i % projects}", {"branch": "main", "commit": env.head}) for i in range(count)]
        wave = _wave(env, items, timeout=1800)
        progress(
            f"{name} {size}: {wave['ready']}/{count} Ready in {wave['wall']:.2f}s ({wave['throughput']:.1f}/s), "
            f"p50 {wave['p50']:.2f}s, p99 {wave['p99']:.2f}s, {wave['upstream_fetches']} upstream fetch(es)"
        )
        raw, label = _raw_serial(env, projects, count, measure_at_most)
        result.rows.append(verdict(wave, raw, label))
        result.data = {"wave": wave, "raw_serial": raw, "writes": _writes(env)}
    result.data["cpu"] = env.cpu
    return result


def burst(cp: ControlPlane, st: Settings, size: str | None = None) -> Result:
    """N Workspaces of one project and commit, at once, cold: one upstream fetch, all Ready."""
    size, n = size or st.burst_size, st.burst

    def verdict(wave: dict[str, Any], raw: float, label: str) -> Row:
        return Row(
            f"burst: {n} Workspaces, one project+commit",
            size,
            wave["wall"],
            raw,
            f"1 `clone --bare` + {n} `worktree add`, serial{label}",
            "1 fetch, all Ready",
            wave["upstream_fetches"] == 1 and wave["ready"] == n,
            note=f"{wave['upstream_fetches']} fetch, {wave['ready']}/{n} Ready; "
            f"created→Ready p50 {wave['p50']:.2f}s, p99 {wave['p99']:.2f}s",
        )

    return _wave_vs_serial(cp, st, "burst", size, n, 1, 10 if size != "small" else n, verdict)


def many(cp: ControlPlane, st: Settings, size: str | None = None) -> Result:
    """N Workspaces over P projects at once (cold caches): throughput and created→Ready p50/p99."""
    size, n, projects = size or st.many_size, st.many, st.many_projects

    def verdict(wave: dict[str, Any], raw: float, label: str) -> Row:
        return Row(
            f"many: {n} Workspaces over {projects} projects",
            size,
            wave["wall"],
            raw,
            f"{projects} `clone --bare` + {n} `worktree add`, serial{label}",
            "reported",
            None,
            note=f"{wave['throughput']:.1f} Workspaces/s; created→Ready p50 {wave['p50']:.2f}s, "
            f"p99 {wave['p99']:.2f}s; {wave['upstream_fetches']} fetches",
        )

    return _wave_vs_serial(cp, st, "many", size, n, projects, n if size == "small" else 20, verdict)


def _writes(env: Env) -> dict[str, float]:
    writes = list(env.ws.writes_per_workspace().values())
    return {"median": median([float(w) for w in writes]), "max": float(max(writes)) if writes else 0.0}


def _memory_run(cp: ControlPlane, st: Settings, size: str, batch: int) -> tuple[Row, dict[str, Any]]:
    """One fresh operator; N Workspaces over a few projects and one cached commit, created
    `batch` at a time (each batch waited for), then its RSS."""
    how = "all at once" if batch >= st.memory else f"{batch} at a time"
    with Env(cp, st, f"memory-{size}-{'once' if batch >= st.memory else 'batched'}", size) as env:
        time.sleep(1.0)
        idle = env.operator.rss_kb()
        for p in range(st.memory_projects):  # the caches: a few projects, one commit
            env.ws.materialize(f"seed-{p}", f"m{p}", {"branch": "main", "commit": env.head})
        items = [
            (f"mem-{i}", f"m{i % st.memory_projects}", {"branch": "main", "commit": env.head}) for i in range(st.memory)
        ]
        waves = [_wave(env, items[i : i + batch], timeout=3600) for i in range(0, len(items), batch)]
        wall = sum(w["wall"] for w in waves)
        time.sleep(2.0)
        at_ready = env.operator.rss_kb()
        settled = at_ready
        writes_at_ready, idle_since = sum(env.ws.writes_per_workspace().values()), now()
        if st.settle_seconds > 0:  # kopf's per-object timers start 30 s after each object is handled
            remaining = st.settle_seconds - (now() - max(env.ws.created_at.values()))
            if remaining > 0:
                time.sleep(remaining)
            settled = env.operator.rss_kb()
        # Writes to Ready Workspaces while nothing changes (timers must not write when idle).
        idle_writes = sum(env.ws.writes_per_workspace().values()) - writes_at_ready
        worst = max(at_ready["rss"], settled["rss"]) / 1024
        progress(
            f"memory {size} ({how}): {st.memory} Ready in {wall:.1f}s; RSS idle {idle['rss'] / 1024:.0f} MB, "
            f"with {st.memory} Workspaces {worst:.0f} MB (peak {settled['hwm'] / 1024:.0f} MB)"
        )
        row = Row(
            f"memory: operator RSS with {st.memory} Workspaces, created {how}",
            size,
            worst,
            idle["rss"] / 1024,
            "the same operator, idle, no Workspaces",
            "< 150 MB",
            worst < 150,
            unit="MB",
            note=f"+{(worst * 1024 - idle['rss']) / st.memory:.0f} KB per Workspace; peak (VmHWM) "
            f"{max(at_ready['hwm'], settled['hwm']) / 1024:.0f} MB; "
            f"{st.memory / wall:.1f} Workspaces/s; {idle_writes} object writes in "
            f"{now() - idle_since:.0f} s idle",
        )
        data = {
            "idle_kb": idle,
            "at_ready_kb": at_ready,
            "settled_kb": settled,
            "batch": batch,
            "idle_writes": idle_writes,
            "wave": {**waves[-1], "count": st.memory, "wall": wall, "throughput": st.memory / wall}
            if len(waves) == 1
            else None,
            "operator_cpu_seconds": env.operator.cpu_seconds(),
            "writes": _writes(env),
        }
    data["cpu"] = env.cpu
    return row, data


def memory(cp: ControlPlane, st: Settings, size: str | None = None) -> Result:
    """Operator RSS with N Workspaces: created in batches (steady state) and all at once (peak:
    every Workspace's handler in flight together, waiting for its project's lock)."""
    size = size or st.memory_size
    result = Result(f"memory-{size}")
    for batch in (st.memory_batch, st.memory):
        row, data = _memory_run(cp, st, size, batch)
        result.rows.append(row)
        result.data["batched" if batch < st.memory else "at_once"] = data
    once = result.data["at_once"]
    result.data["wave"] = once.pop("wave")
    result.data["writes"] = once["writes"]
    result.data["batched"].pop("wave", None)
    return result


def monorepo(cp: ControlPlane, st: Settings) -> Result:
    """Warm (and cold) on the ~50k-file repository (full mode)."""
    result = Result("monorepo")
    parts = [warm(cp, st, "monorepo", st.monorepo_reps, references=st.monorepo_references)]
    if st.monorepo_cold:
        parts.append(cold(cp, st, "monorepo", st.monorepo_reps))
    for part in parts:
        result.rows += part.rows
        result.data[part.name] = part.data
    return result


def replicas(cp: ControlPlane, st: Settings) -> Result:
    """`many` (cold caches) with 1, 2 and 3 operator replicas sharing the projects by membership."""
    size = st.many_size
    result = Result(f"replicas-{size}")
    for count in st.replica_counts:
        with Env(cp, st, f"replicas-{count}-{size}", size) as env:
            extra = [
                start_operator(
                    cp.kubeconfig,
                    env.operator.root,
                    env.ws.namespace,
                    st.results_dir / f"operator-replicas-{count}-{i}.log",
                    {**st.operator_env, "WORKSPACE_IDENTITY": f"bench{i}"},
                )
                for i in range(1, count)
            ]
            try:
                ops = [env.operator, *extra]
                deadline = now() + 60
                while not all(f"workspace_operator_members {float(count)}" in op.metrics() for op in ops):
                    if now() > deadline:
                        raise TimeoutError(f"{count} replicas did not see each other in 60s")
                    time.sleep(0.2)
                items = [
                    (f"r{count}-{i}", f"p{i % st.many_projects}", {"branch": "main", "commit": env.head})
                    for i in range(st.many)
                ]
                wave = _wave(env, items, timeout=1800)
                shares = [_counter(op.metrics(), 'workspace_materializations_total{result="ready"}') for op in ops]
            finally:
                for op in extra:
                    op.stop()
        progress(
            f"replicas {count}: {wave['ready']}/{st.many} Ready in {wave['wall']:.2f}s "
            f"({wave['throughput']:.1f}/s), p50 {wave['p50']:.2f}s, p99 {wave['p99']:.2f}s, "
            f"materialized per replica {shares}"
        )
        result.rows.append(
            Row(
                f"replicas: {st.many} Workspaces over {st.many_projects} projects, {count} replica(s)",
                size,
                wave["wall"],
                None,
                "",
                "reported",
                None,
                note=f"{wave['throughput']:.1f} Workspaces/s; created→Ready p50 {wave['p50']:.2f}s, "
                f"p99 {wave['p99']:.2f}s; per replica {shares}",
            )
        )
        result.data[f"replicas-{count}"] = {"wave": wave, "per_replica": shares}
    return result


def _counter(metrics: str, series: str) -> int:
    return sum(int(float(line.split()[-1])) for line in metrics.splitlines() if line.startswith(series + " "))


SCENARIOS: dict[str, Callable[[ControlPlane, Settings], Result]] = {
    "cold": cold,
    "warm": warm,
    "warm-new": warm_new,
    "burst": burst,
    "many": many,
    "replicas": replicas,
    "memory": memory,
    "monorepo": monorepo,
}
QUICK_SKIP = {"monorepo"}


def _cache_only(cp: ControlPlane, st: Settings) -> Result:
    from bench.cache_only import cache_only  # it builds on this module

    return cache_only(cp, st)


SCENARIOS["cache-only"] = _cache_only
