"""Why a cold Workspace costs more than `git clone --bare`: the ways to create a cache, A/B.

    python -m bench.coldprobe [--size gitgit] [--reps 3]

Interleaves, over the same smart-HTTP upstream (sync before each):

* ``clone``          `git clone --bare` (the raw baseline);
* ``init+fetch``     what the operator's cache creation runs: `git init --bare`, two
                     `git config`, `git fetch --no-tags ... +refs/heads/main:refs/remotes/origin/main`;
* ``clone-single``   `git clone --bare --single-branch --no-tags --branch main`, a possible
                     replacement for init+fetch.

and reports medians plus, from GIT_TRACE2_EVENT, how long the child processes of the fetch
took: `index-pack` (receiving) and the `rev-list --objects` connectivity check that `git fetch`
runs after receiving a pack and `git clone` skips (index-pack checks a clone's self-contained
pack itself).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench import repogen
from bench.harness import Upstream, git


def _children(trace: Path) -> dict[str, float]:
    """Seconds spent in child processes by kind, from a GIT_TRACE2_EVENT file."""
    started: dict[tuple[str, int], str] = {}
    spent: dict[str, float] = defaultdict(float)
    for line in trace.read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "child_start":
            argv = event.get("argv") or []
            kind = next((a for a in argv[1:] if not a.startswith("-")), argv[0] if argv else "?")
            started[(event.get("sid", ""), event["child_id"])] = kind
        elif event.get("event") == "child_exit" and (event.get("sid", ""), event.get("child_id")) in started:
            spent[started[(event.get("sid", ""), event["child_id"])]] += float(event.get("t_rel", 0.0))
    return dict(spent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="gitgit", choices=sorted(repogen.PROFILES))
    parser.add_argument("--reps", type=int, default=3)
    opts = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]

    gen = repogen.generate(opts.size)
    run = Path(tempfile.mkdtemp(prefix="workspace-coldprobe-"))
    served = run / "served"
    served.mkdir()
    repogen.copy_for_serving(gen, served / "repo.git")
    upstream = Upstream(served).start()
    url = upstream.url("repo")
    times: dict[str, list[float]] = defaultdict(list)
    children: dict[str, list[dict[str, float]]] = defaultdict(list)
    try:
        def variant(name: str, rep: int) -> None:
            target = run / f"{name}-{rep}.git"
            trace = run / f"{name}-{rep}.trace"
            os.environ["GIT_TRACE2_EVENT"] = str(trace)
            os.sync()
            started = time.monotonic()
            if name == "clone":
                git("clone", "--bare", "--quiet", url, str(target))
            elif name == "clone-single":
                git("clone", "--bare", "--quiet", "--single-branch", "--no-tags", "--branch", "main", url,
                    str(target))
            else:
                git("init", "--bare", "--quiet", str(target))
                git("-C", str(target), "config", "remote.origin.url", url)
                git("-C", str(target), "config", "core.logAllRefUpdates", "false")
                git("-C", str(target), "-c", "gc.auto=0", "-c", "fetch.writeCommitGraph=false", "fetch",
                    "--no-tags", "--no-auto-gc", "--no-recurse-submodules", "--no-write-fetch-head", "--quiet",
                    "--", "origin", "+refs/heads/main:refs/remotes/origin/main")
            times[name].append(time.monotonic() - started)
            del os.environ["GIT_TRACE2_EVENT"]
            children[name].append(_children(trace))
            shutil.rmtree(target, ignore_errors=True)

        names = ["clone", "init+fetch", "clone-single"]
        for rep in range(opts.reps):
            for name in names if rep % 2 == 0 else names[::-1]:
                variant(name, rep)
            print(f"rep {rep + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names))
        print(f"\n{opts.size}: medians over {opts.reps} interleaved reps")
        for name in names:
            kinds = sorted({k for c in children[name] for k in c})
            detail = ", ".join(f"{k} {statistics.median([c.get(k, 0.0) for c in children[name]]):.2f}s"
                               for k in kinds)
            print(f"  {name:13s} {statistics.median(times[name]):6.2f}s   children: {detail}")
    finally:
        os.environ.pop("GIT_TRACE2_EVENT", None)
        upstream.stop()
        shutil.rmtree(run, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
