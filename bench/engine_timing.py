"""Warm checkout cost: raw `git worktree add` vs Engine.checkout of a cached commit.

Standalone: `python bench/engine_timing.py [--files 5000] [--runs 5]`. Generates a
repository of ~5k files, clones it into an engine cache once, then times, in
alternation, a plain `git worktree add --detach` of the commit from a bare clone
and Engine.checkout of that (cached) commit into a new workspace. Prints the
median of each and their ratio: the engine's overhead over git on the hot path
(validation, cache checks, hardening flags, the completion record).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))  # runnable without installing

from workspace_operator.git import CheckoutRequest, Engine, GitSettings, Revision  # noqa: E402

TIMEOUT = 300
GIT_ENV = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0"}


def git(*args: str, cwd: Path, stdin: bytes | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, input=stdin, capture_output=True,
                          timeout=TIMEOUT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed:\n{proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode().strip()


def generate(bare: Path, files: int, seed: int = 5) -> str:
    """One commit with `files` text files of 0.5-3 KB in ~100 directories (git fast-import)."""
    rng = random.Random(seed)
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=bare.parent)
    stream = bytearray(b"commit refs/heads/main\ncommitter Bench <bench@example> 1700000000 +0000\ndata 5\nbench\n")
    for index in range(files):
        lines = [f"line {n}: {rng.getrandbits(64):016x}" for n in range(rng.randint(20, 120))]
        data = ("\n".join(lines) + "\n").encode()
        path = f"pkg{index % 100:03d}/mod{index // 100:03d}/file{index:05d}.txt"
        stream += b"M 100644 inline %s\ndata %d\n%s\n" % (path.encode(), len(data), data)
    stream += b"done\n"
    git("fast-import", "--quiet", "--done", cwd=bare, stdin=bytes(stream))
    return git("rev-parse", "main", cwd=bare)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="engine-timing-"))
    try:
        upstream = base / "upstream.git"
        upstream.mkdir()
        started = time.monotonic()
        sha = generate(upstream, args.files)
        print(f"generated {args.files} files at {sha[:12]} in {time.monotonic() - started:.1f}s")

        raw_cache = base / "raw.git"
        git("clone", "-q", "--bare", f"file://{upstream}", str(raw_cache), cwd=base)
        volume = base / "volume"
        volume.mkdir()
        engine = Engine(volume, GitSettings(allowed_schemes=frozenset({"file"}), scratch_dir=base,
                                            file_roots=(upstream,)))
        url = f"file://{upstream}"

        warm = await engine.checkout(engine.validate(CheckoutRequest("bench", "timing", "warmup", url,
                                                                     Revision(commit=sha))))
        assert warm.commit == sha

        raw_times: list[float] = []
        engine_times: list[float] = []
        for run in range(args.runs):
            target = base / f"raw-{run}"
            started = time.monotonic()
            git("worktree", "add", "--detach", "-q", str(target), sha, cwd=raw_cache)
            raw_times.append(time.monotonic() - started)

            request = engine.validate(CheckoutRequest("bench", "timing", f"w{run}", url, Revision(commit=sha)))
            started = time.monotonic()
            result = await engine.checkout(request)
            engine_times.append(time.monotonic() - started)
            assert result.cache_hit and not result.fetched and not result.reused

            # Clean up outside the timed sections, so every run starts from the same state.
            git("worktree", "remove", "--force", str(target), cwd=raw_cache)
            await engine.remove("bench", "timing", f"w{run}")

        raw, eng = statistics.median(raw_times), statistics.median(engine_times)
        print(f"runs: {args.runs}, files: {args.files}")
        print(f"raw git worktree add         median {raw:.3f}s  ({', '.join(f'{t:.3f}' for t in raw_times)})")
        print(f"Engine.checkout, warm cache  median {eng:.3f}s  ({', '.join(f'{t:.3f}' for t in engine_times)})")
        print(f"ratio engine/raw             {eng / raw:.2f} (median), "
              f"{min(engine_times) / min(raw_times):.2f} (best run; less sensitive to other load)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
