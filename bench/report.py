"""Render a run as markdown: the results table, the machine, and where the time goes."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from bench import repogen
from bench.scenarios import Result, Row, Settings


def _num(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:.3f} s" if value < 1 else f"{value:.2f} s"


def _met(row: Row) -> str:
    return "—" if row.met is None else ("yes" if row.met else "**no**")


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table; empty without rows."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) if rows else ""


def table(results: list[Result]) -> str:
    header = [
        "Scenario",
        "Repo",
        "Operator (median)",
        "Baseline (median)",
        "Baseline is",
        "Ratio",
        "Target",
        "Met?",
        "Notes",
    ]
    return _table(
        header,
        [
            [
                row.scenario,
                row.repo,
                _num(row.operator, row.unit),
                _num(row.baseline, row.unit),
                row.baseline_is,
                "—" if row.ratio is None or row.unit == "MB" else f"{row.ratio:.2f}x",
                row.target,
                _met(row),
                row.note,
            ]
            for result in results
            for row in result.rows
        ],
    )


def repos_table(sizes: list[str]) -> str:
    gens = [(size, repogen.generate(size, quiet=True)) for size in sizes]
    return _table(
        ["Repo", "Files at HEAD", "Tree (checked out)", "Commits", "Packed", "Generated in"],
        [
            [
                size,
                f"{gen.files:,}",
                _bytes(gen.tree_bytes),
                f"{gen.commits:,}",
                _bytes(gen.pack_bytes),
                f"{gen.seconds:.0f} s (once; cached)",
            ]
            for size, gen in gens
        ],
    )


def _bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


def machine_table(machine: Mapping[str, str]) -> str:
    keys = ("date", "operator", "nproc", "cpu", "memory", "kernel", "git", "python", "kubernetes", "kopf", "disk")
    return _table(["", ""], [[key, machine.get(key, "unknown")] for key in keys])


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def time_table(results: list[Result]) -> str:
    """Per single-Workspace scenario: the client-observed time split by status.timings and the watch."""
    rows: list[tuple[str, Mapping[str, float], float | None]] = []
    for result in results:
        if "breakdown" in result.data:
            rows.append((result.name, result.data["breakdown"], result.data.get("api_get_roundtrip")))
        for key, value in result.data.items():
            if isinstance(value, Mapping) and "breakdown" in value:
                rows.append((key, value["breakdown"], value.get("api_get_roundtrip")))
    if not rows:
        return ""
    header = [
        "created→Ready (client)",
        "  git: fetch",
        "  git: checkout (`worktree add` + completion record)",
        "  engine: cache checks (one `git config` read, `cat-file -e`; on cold also `init`)",
        "  project Lease (lockWait: API round trips)",
        "  outside the handler (kopf pickup, finalizer, status patches, watch delivery)",
        "watch: create → finalizer seen",
        "watch: finalizer → Materializing seen",
        "watch: Materializing → Ready seen",
        "writes to the object before Ready (watch events)",
        "one API GET round trip (client)",
        "**operator overhead** = created→Ready − git (fetch + checkout)",
    ]
    keys: list[str | None] = [
        "client",
        "fetch",
        "checkout",
        "engine_other",
        "lock_wait",
        "outside_handler",
        "to_finalizer",
        "finalizer_to_materializing",
        "materializing_to_ready",
        "events_before_ready",
        None,
        "overhead",
    ]
    lines = ["| median | " + " | ".join(name for name, _b, _rt in rows) + " |", "|---|" + "---|" * len(rows)]
    for label, column in zip(header, keys, strict=True):
        cells = []
        for _name, b, roundtrip in rows:
            if column is None:
                cells.append(_ms(roundtrip) if roundtrip else "—")
            elif column == "events_before_ready":
                cells.append(f"{b[column]:.0f}")
            else:
                cells.append(_ms(b[column]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def waves_table(results: list[Result]) -> str:
    header = [
        "",
        "Workspaces",
        "all Ready after",
        "throughput",
        "created→Ready p50",
        "p99",
        "max",
        "lock wait p50",
        "checkout p50",
        "upstream fetches",
        "writes per Workspace (median)",
    ]
    rows = []
    for result in results:
        if not (wave := result.data.get("wave")):
            continue
        label = f"{result.name} (all at once)" if "at_once" in result.data else result.name
        rows.append(
            [
                label,
                f"{wave['count']}",
                f"{wave['wall']:.2f} s",
                f"{wave['throughput']:.1f}/s",
                f"{wave['p50']:.2f} s",
                f"{wave['p99']:.2f} s",
                f"{wave['max']:.2f} s",
                f"{wave['lock_wait_p50']:.2f} s",
                _ms(wave["checkout_p50"]),
                f"{wave.get('upstream_fetches', '—')}",
                f"{result.data.get('writes', {}).get('median', 0):.0f}",
            ]
        )
    return _table(header, rows)


def conditions_table(results: list[Result]) -> str:
    """CPU seconds per scenario, by whom; `others` is everything on the machine that is not this run."""
    header = [
        "scenario",
        "wall",
        "machine busy",
        "kube-apiserver + etcd",
        "operator (Python)",
        "operator's git",
        "upstream + raw git",
        "bench client",
        "others (not this run)",
    ]
    keys = (
        "system_busy",
        "apiserver_etcd",
        "operator_python",
        "operator_git",
        "upstream_and_raw_git",
        "bench_client",
        "other",
    )
    return _table(
        header,
        [
            [name, f"{cpu['wall']:.0f} s", *(f"{cpu[key]:.1f} s ({cpu[key] / cpu['wall']:.2f})" for key in keys)]
            for result in results
            for name, cpu in _cpus(result)
        ],
    )


def _cpus(result: Result) -> list[tuple[str, Mapping[str, float]]]:
    """The scenario's CPU accounting windows: its own, or its parts' (monorepo, memory)."""
    found: list[tuple[str, Mapping[str, float]]] = []
    if isinstance(result.data.get("cpu"), Mapping):
        found.append((result.name, result.data["cpu"]))
    for key, value in result.data.items():
        if key != "wave" and isinstance(value, Mapping) and isinstance(value.get("cpu"), Mapping):
            found.append(
                (f"{result.name} ({key})" if not key.startswith(result.name.split("-")[0]) else key, value["cpu"])
            )
    return [(name, cpu) for name, cpu in found if cpu.get("wall")]


def background(results: list[Result]) -> str:
    """One sentence on how busy the machine was with things that are not this run."""
    other = wall = 0.0
    for result in results:
        for _name, cpu in _cpus(result):
            other += cpu.get("other", 0.0)
            wall += cpu.get("wall", 0.0)
    if not wall:
        return ""
    return (
        f"Background load: processes that are not part of this run kept on average **{other / wall:.2f} of "
        f"the machine's {os.cpu_count()} cores** busy while the scenarios ran (see Run conditions). Absolute "
        "times are inflated by it and vary from rep to rep; the interleaved reps and medians are there so "
        "that ratios stay comparable."
    )


def render(
    results: list[Result], machine: Mapping[str, str], settings: Settings, seconds: float, analysis: str = ""
) -> str:
    mode = "quick" if settings.quick else "full"
    sizes = sorted({row.repo for r in results for row in r.rows}, key=list(repogen.PROFILES).index)
    parts = [
        "# Benchmarks",
        "",
        f"Generated by `python -m bench{' --quick' if settings.quick else ''}` ({mode} mode, "
        f"{settings.reps} reps per single-Workspace scenario"
        f"{'' if settings.quick else f' ({settings.monorepo_reps} on the monorepo)'}, after one unmeasured warm-up "
        f"each; medians; total {seconds / 60:.1f} min). "
        "Every number comes from one run on one machine: the real kube-apiserver + etcd on loopback "
        "(`hack/devcluster.py`), the operator as it ships (`python -m workspace_operator`, default "
        "settings), and the upstream served by the real `git http-backend` over HTTP on loopback. "
        "Operator and raw-git measurements are interleaved rep by rep (alternating which goes first) on the "
        "same repository, server and disk; ratios are operator ÷ baseline from the same run. "
        "Operator times are client-observed: from the create call to the watch event that shows "
        "`status.phase: Ready`.",
        "",
        "## Results",
        "",
        table(results),
        "",
        *(
            [
                (
                    "**Quick mode** runs everything on the ~200-file `small` repository with 2 reps. The targets (docs/design.md) are "
                    "stated for a git.git-sized repository; on a 0.5 MB tree the operator's fixed per-Workspace cost "
                    "(0.1–0.2 s: API round trips, a few extra git processes) dominates the ratios, so quick-mode "
                    "verdicts are a smoke test, not the verdict. `python -m bench` (full) is."
                ),
                "",
            ]
            if settings.quick
            else []
        ),
        background(results),
        "",
        "## Repositories",
        "",
        "Generated offline and deterministically by `bench/repogen.py` (`git fast-import`, seeded PRNG, fixed "
        "authors and dates), served as a forge would keep them (one pack with a bitmap, a commit-graph).",
        "",
        repos_table(sizes),
        "",
        "## Machine",
        "",
        machine_table(machine),
        "",
    ]
    times = time_table(results)
    if times:
        parts += [
            "## Where the time goes",
            "",
            "Single Workspaces, medians over the reps. `git:` and `engine:` rows come from `status.timings` "
            "(what the operator measured around its git calls); `outside the handler` is the client-observed "
            "created→Ready minus `status.timings.totalSeconds`; the `watch:` rows split the same interval at "
            "the moments the client's watch saw kopf's finalizer and `phase: Materializing` appear.",
            "",
            times,
            "",
        ]
    waves = waves_table(results)
    if waves:
        parts += ["## Many Workspaces at once", "", waves, ""]
    conditions = conditions_table(results)
    if conditions:
        parts += [
            "## Run conditions",
            "",
            "CPU seconds used during each scenario (in parentheses: average cores busy). `others` is load "
            "on the machine that is not this run (other processes, kernel writeback): on a shared machine "
            "it is the main source of noise, and why medians over interleaved reps are reported.",
            "",
            conditions,
            "",
        ]
    if analysis:
        parts += [analysis.strip(), ""]
    parts += [
        "## Reproducing",
        "",
        "```",
        "make bench          # full: writes docs/benchmarks.md (first run also generates the repos, ~4 min)",
        "make bench-quick    # small repo, few reps: writes bench/results/",
        "python -m bench --scenario warm --reps 3   # one scenario",
        "```",
        "",
    ]
    return "\n".join(parts)


def summary(results: list[Result]) -> list[dict[str, Any]]:
    return [{**row.__dict__, "ratio": row.ratio} for r in results for row in r.rows]
