"""`python -m bench`: run the scenarios, print and write the report.

    python -m bench                      # full: all scenarios, writes docs/benchmarks.md
    python -m bench --quick              # small repo, few reps, reduced counts: bench/results/
    python -m bench --scenario warm      # one scenario (repeatable); results to bench/results/
    python -m bench --quick --write-docs # quick, but write docs/benchmarks.md anyway
    python -m bench --render bench/results/full-<stamp> --write-docs
                                         # re-render a saved run (e.g. after editing bench/NOTES.md)

Also: `python -m bench.repogen SIZE` (the test repositories). One-off probes that explained
the findings are described in bench/NOTES.md ("Probes").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import repogen
from bench.analysis import analyse
from bench.harness import REPO, ControlPlane, machine_info, operator_revision, write_json
from bench.report import render, summary
from bench.scenarios import QUICK_SKIP, SCENARIOS, Result, Row, Settings

DOCS = REPO / "docs" / "benchmarks.md"
RESULTS = REPO / "bench" / "results"


def settings_for(opts: argparse.Namespace, run_dir: Path, results_dir: Path) -> Settings:
    if opts.quick:
        st = Settings(
            quick=True,
            run_dir=run_dir,
            results_dir=results_dir,
            reps=2,
            size="small",
            burst=10,
            many=20,
            many_projects=4,
            memory=100,
            memory_projects=2,
            memory_batch=50,
            push_commits=5,
            monorepo_reps=1,
            settle_seconds=0.0,
        )
    else:
        st = Settings(quick=False, run_dir=run_dir, results_dir=results_dir, reps=7)
    changes = {}
    if opts.reps:
        changes["reps"] = opts.reps
    if opts.size:
        changes["size"] = opts.size
    operator_env = dict(item.split("=", 1) for item in opts.operator_env)
    st = dataclasses.replace(st, keep=opts.keep, operator_env=operator_env, **changes)
    return st


def rerender(directory: Path, write_docs: bool) -> int:
    saved = json.loads((directory / "results.json").read_text())
    fields = {f.name for f in dataclasses.fields(Row)}
    results: list[Result] = []
    for name, entry in saved["scenarios"].items():
        entry = dict(entry)
        rows = [Row(**{k: v for k, v in row.items() if k in fields}) for row in entry.pop("rows", [])]
        results.append(Result(name, rows, {k: v for k, v in entry.items() if k != "seconds"}, entry["seconds"]))
    raw = saved["settings"]
    st = Settings(
        quick=raw["quick"] == "True",
        run_dir=Path(raw["run_dir"]),
        results_dir=directory,
        reps=int(raw["reps"]),
        monorepo_reps=int(raw.get("monorepo_reps", 3)),
    )
    markdown = render(
        results, saved["machine"], st, float(saved["seconds"]), analyse(results, saved.get("failures", []))
    )
    (directory / "benchmarks.md").write_text(markdown)
    print(f"wrote {directory / 'benchmarks.md'}")
    if write_docs:
        DOCS.write_text(markdown)
        print(f"wrote {DOCS.relative_to(REPO)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small repo, 2 reps, reduced counts (~1.5 min)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--reps", type=int, help="reps per single-Workspace scenario")
    parser.add_argument(
        "--size",
        choices=sorted(repogen.PROFILES),
        help="repository for cold/warm/warm-new/burst (default: gitgit; quick: small)",
    )
    parser.add_argument(
        "--write-docs", action="store_true", help=f"write {DOCS.relative_to(REPO)} even if quick or partial"
    )
    parser.add_argument("--no-docs", action="store_true", help="never write docs/benchmarks.md")
    parser.add_argument(
        "--operator-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the operator (experiments; never written to docs)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run directory (volumes, served repos)")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_DIR",
        help="re-render benchmarks.md from a saved results.json (no run); with --write-docs also docs/benchmarks.md",
    )
    opts = parser.parse_args(argv)
    if opts.render:
        return rerender(opts.render, opts.write_docs)

    names = opts.scenario or [n for n in SCENARIOS if not (opts.quick and n in QUICK_SKIP)]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results_dir = RESULTS / f"{'quick' if opts.quick else 'full'}-{stamp}"
    run_dir = Path(tempfile.mkdtemp(prefix="workspace-bench-"))
    st = settings_for(opts, run_dir, results_dir)
    started = time.monotonic()

    sizes = {st.size, st.burst_size, st.many_size, st.memory_size} | ({"monorepo"} if "monorepo" in names else set())
    for size in sorted(sizes, key=list(repogen.PROFILES).index):
        repogen.generate(size)

    machine = machine_info()
    print(f"bench: {', '.join(names)} ({'quick' if opts.quick else 'full'}); run dir {run_dir}", flush=True)
    cp = ControlPlane(run_dir / "control-plane")
    results: list[Result] = []
    failures: list[str] = []
    try:
        cp.start()
        print(f"  control plane ready in {cp.start_seconds:.1f}s", flush=True)
        for name in names:
            print(f"scenario {name}", flush=True)
            t0 = time.monotonic()
            try:
                result = SCENARIOS[name](cp, st)
            except Exception as error:  # noqa: BLE001 - report it, run the rest
                traceback.print_exc()
                failures.append(f"{name}: {error}")
                continue
            result.seconds = time.monotonic() - t0
            print(f"  ({result.seconds:.0f}s)", flush=True)
            results.append(result)
    finally:
        cp.stop()
        if not opts.keep:
            shutil.rmtree(run_dir, ignore_errors=True)

    seconds = time.monotonic() - started
    at_end = operator_revision()
    if at_end != machine["operator"]:
        machine["operator"] += f"; CHANGED during the run to {at_end}"
        print(f"warning: operator/ changed during the run: {machine['operator']}", file=sys.stderr)
    analysis = analyse(results, failures)
    markdown = render(results, machine, st, seconds, analysis)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "benchmarks.md").write_text(markdown)
    write_json(
        results_dir / "results.json",
        {
            "machine": machine,
            "settings": {k: str(v) for k, v in dataclasses.asdict(st).items()},
            "seconds": seconds,
            "summary": summary(results),
            "failures": failures,
            "scenarios": {
                r.name: {"seconds": r.seconds, "rows": [row.__dict__ for row in r.rows], **r.data} for r in results
            },
        },
    )
    complete = not opts.scenario and not failures and not opts.operator_env
    if (opts.write_docs and not opts.operator_env) or (not opts.quick and complete and not opts.no_docs):
        DOCS.parent.mkdir(parents=True, exist_ok=True)
        DOCS.write_text(markdown)
        print(f"wrote {DOCS.relative_to(REPO)}")
    print(f"wrote {results_dir.relative_to(REPO)}/benchmarks.md and results.json ({seconds:.0f}s total)")
    print()
    from bench.report import table

    print(table(results))
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0
