"""Crash safety: kill the engine's git mid-clone, mid-fetch and mid-checkout, then repair.

Three ways to die, chosen at random per iteration (seeds are printed, and
WO_CRASH_SEED=<n> replays a run):

* cancel       the asyncio task is cancelled (lease lost, shutdown): the runner
               SIGKILLs git's process group and the engine's cleanup runs;
* sigkill-git  git processes (found via /proc, cwd below the volume) die by
               SIGKILL under a live engine, which sees a failed step;
* kill-engine  a child Python running the engine, and then every git it started,
               is SIGKILLed: no cleanup code runs at all, as on a node crash.

The kill point is found by polling /proc for the git process of the wanted
phase, plus a random delay into it. After every kill the next checkout must
succeed at the right commit and leave a cache that passes `git fsck`, with
no worktree metadata for missing directories and no lock files.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine_fixtures import (
    NAME,
    NS,
    PROJECT,
    SUBPROCESS_TIMEOUT,
    assert_cache_consistent,
    assert_worktree_at,
    checkout,
    kill_processes_under,
    layout,
    make_settings,
    processes_under,
    request,
    run_git,
    tree_files,
    wait_no_processes,
    worktree_entries,
)
from upstreams import GitDaemon, SmartHTTP, StandardRepo
from workspace_operator.git import Engine, GitError, Revision

pytestmark = [pytest.mark.upstreams, pytest.mark.usefixtures("no_leftover_processes")]

ITERATIONS = 10
FILES = 600  # enough for a checkout to take a good fraction of a second here
FILE_BYTES = 3000  # hex of random bytes: the pack stays big (~1.5 MB), so the fetch takes a while too


# -- a big upstream ----------------------------------------------------------------


@dataclass(frozen=True)
class BigRepo:
    bare: Path
    commits: tuple[str, ...]  # oldest first: full tree, then two commits rewriting a third each
    files: int


def _fast_import(bare: Path, seed: int) -> None:
    rng = random.Random(seed)
    stream = bytearray()
    for number in range(3):
        stream += b"commit refs/heads/main\ncommitter Gen <gen@test> %d +0000\n" % (1_700_000_000 + number)
        stream += b"data 3\nc%d\n" % number
        for index in range(FILES):
            if number and index % 3 != number:
                continue
            data = rng.randbytes(FILE_BYTES // 2).hex().encode()
            stream += b"M 100644 inline d%02d/f%05d.txt\ndata %d\n%s\n" % (index % 40, index, len(data), data)
    stream += b"done\n"
    subprocess.run(
        ["git", "-C", str(bare), "fast-import", "--quiet", "--done"],
        input=bytes(stream),
        check=True,
        capture_output=True,
        timeout=SUBPROCESS_TIMEOUT,
    )


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory: pytest.TempPathFactory) -> BigRepo:
    served = tmp_path_factory.mktemp("big-served")
    bare = served / "big.git"
    run_git("init", "-q", "--bare", "-b", "main", str(bare), cwd=served)
    _fast_import(bare, seed=7)
    run_git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=bare)
    commits = tuple(run_git("rev-list", "--reverse", "main", cwd=bare).stdout.split())
    return BigRepo(bare, commits, FILES)


@pytest.fixture(scope="module")
def big_daemon(big_repo: BigRepo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitDaemon]:
    with GitDaemon(big_repo.bare.parent, workdir=tmp_path_factory.mktemp("big-daemon")) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def c0_cache(big_repo: BigRepo, big_daemon: GitDaemon, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding only the first commit: copied in, it makes the next checkout fetch."""
    root = tmp_path_factory.mktemp("c0-volume")
    scratch = tmp_path_factory.mktemp("c0-scratch")
    engine = Engine(root, make_settings(scratch))
    asyncio.run(checkout(engine, request(big_daemon.url("big"), Revision(commit=big_repo.commits[0]))))
    asyncio.run(engine.remove(NS, PROJECT, NAME))
    return layout(root).cache_dir


# -- killing ---------------------------------------------------------------------


PHASES: dict[str, Callable[[str], bool]] = {
    # cmdline tests on git processes only (argv[0] is git)
    "fetch": lambda cmd: " fetch " in cmd or "index-pack" in cmd or "unpack-objects" in cmd,
    "checkout": lambda cmd: "worktree add" in cmd or "reset --hard" in cmd or " checkout " in cmd,
}
# Initial guesses of how long each phase takes; updated from every repair's own timings
# so the random kill point lands inside the phase on a fast or a loaded machine alike.
PHASE_SECONDS = {"fetch": 0.2, "checkout": 0.4}


def _short(cmd: str | None) -> str:
    """A git command line without the runner's `-c` hardening options, for the log."""
    if cmd is None:
        return "nothing (already done)"
    words, out = cmd.split(" "), []
    skip = False
    for word in words[1:]:
        if skip or word == "-c":
            skip = not skip
            continue
        out.append(word)
    return " ".join(out)[:120]


def _git_processes(root: Path) -> dict[int, str]:
    return {pid: cmd for pid, cmd in processes_under(root).items() if Path(cmd.split(" ", 1)[0]).name == "git"}


async def _wait_for_phase(root: Path, phase: str, done: Callable[[], bool], deadline_s: float = 30.0) -> str | None:
    """Poll /proc until a git process of the phase runs below root (its cmdline), or the work is done (None)."""
    deadline = time.monotonic() + deadline_s
    while not done():
        for cmd in _git_processes(root).values():
            if PHASES[phase](cmd):
                return cmd
        if time.monotonic() > deadline:
            raise AssertionError(f"no {phase} process appeared within {deadline_s}s")
        await asyncio.sleep(0.003)  # poll interval, not synchronisation
    return None


CHILD = """
import asyncio, json, sys
from pathlib import Path
from workspace_operator.git import CheckoutRequest, Engine, GitSettings, Revision
root, scratch, url, branch, commit = sys.argv[1:6]
engine = Engine(Path(root), GitSettings(allowed_schemes=frozenset({"git"}), scratch_dir=Path(scratch),
                                           allow_private_networks=True))
req = CheckoutRequest(NS, PROJECT, NAME, url, Revision(branch=branch or None, commit=commit or None))
result = asyncio.run(engine.checkout(engine.validate(req)))
print(json.dumps({"commit": result.commit}), flush=True)
""".replace("NS, PROJECT, NAME", f"{NS!r}, {PROJECT!r}, {NAME!r}")


@dataclass
class Outcome:
    interrupted: bool
    detail: str


async def _crash_cancel(
    engine: Engine, volume: Path, url: str, revision: Revision, phase: str, delay: float
) -> Outcome:
    task = asyncio.create_task(checkout(engine, request(url, revision)))
    seen = await _wait_for_phase(volume, phase, task.done)
    if seen is not None:
        await asyncio.sleep(delay)  # fault injection point inside the phase, not synchronisation
    cancelled = task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await wait_no_processes(volume, deadline_s=5)  # the runner SIGKILLed git's whole process group
    return Outcome(cancelled, f"cancelled during {_short(seen)!r}")


async def _crash_sigkill_git(
    engine: Engine, volume: Path, url: str, revision: Revision, phase: str, delay: float
) -> Outcome:
    task = asyncio.create_task(checkout(engine, request(url, revision)))
    seen = await _wait_for_phase(volume, phase, task.done)
    killed: list[str] = []
    if seen is not None:
        await asyncio.sleep(delay)  # fault injection point, not synchronisation
        for pid, cmd in _git_processes(volume).items():
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(_short(cmd))
            except ProcessLookupError:
                pass
    try:
        await task
        failed = False
    except GitError:
        failed = True
    await wait_no_processes(volume)
    return Outcome(failed, f"SIGKILLed {killed}")


async def _crash_kill_engine(
    scratch: Path, volume: Path, url: str, revision: Revision, phase: str, delay: float
) -> Outcome:
    child = subprocess.Popen(  # noqa: ASYNC220 - the child is the operator to kill, not awaited work
        [sys.executable, "-c", CHILD, str(volume), str(scratch), url, revision.branch or "", revision.commit or ""],
        cwd=volume,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        seen = await _wait_for_phase(volume, phase, lambda: child.poll() is not None)
        if seen is not None:
            await asyncio.sleep(delay)  # fault injection point, not synchronisation
        interrupted = child.poll() is None
        child.kill()  # the operator dies first: no cleanup runs, no new git starts
        killed = kill_processes_under(volume)  # then git, as the node would take it down
    finally:
        if child.poll() is None:
            child.kill()
        _, stderr = child.communicate(timeout=SUBPROCESS_TIMEOUT)
    if not interrupted:
        assert child.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return Outcome(interrupted, f"killed engine during {_short(seen)!r}; then {[_short(k) for k in killed]}")


# -- the loop ----------------------------------------------------------------------


def _prepare(rng: random.Random, volume: Path, big: BigRepo, c0_cache: Path) -> tuple[str, Revision]:
    """Pick a phase, set the volume up for it and return (phase to hit, revision to request)."""
    project = layout(volume)
    cache = project.cache_dir
    scenario = rng.choice(["clone", "fetch", "checkout"]) if cache.is_dir() else rng.choice(["clone", "fetch"])
    if scenario == "clone":  # no cache: the first clone (init + fetch into staging, rename) and checkout
        shutil.rmtree(project.project_dir, ignore_errors=True)
        return rng.choice(["fetch", "checkout"]), rng.choice(
            [Revision(branch="main"), Revision(commit=rng.choice(big.commits))]
        )
    if scenario == "fetch":  # a cache that has only the first commit: fetch into it
        shutil.rmtree(project.project_dir, ignore_errors=True)
        project.project_dir.mkdir(parents=True)
        shutil.copytree(c0_cache, cache, symlinks=True)
        return rng.choice(["fetch", "fetch", "checkout"]), rng.choice(
            [Revision(branch="main"), Revision(commit=big.commits[2]), Revision(branch="main", commit=big.commits[1])]
        )
    # The cache has every commit: replace the worktree by one at another commit.
    current = run_git("rev-parse", "HEAD", cwd=project.worktree_dir(NAME)).stdout.strip()
    return "checkout", Revision(commit=rng.choice([c for c in big.commits if c != current]))


def _expected_commit(big: BigRepo, revision: Revision) -> str:
    return revision.commit or big.commits[-1]


def _check_content(rng: random.Random, big: BigRepo, worktree: Path, sha: str) -> None:
    names = run_git("ls-tree", "-r", "--name-only", sha, cwd=big.bare).stdout.split()
    assert len(names) == big.files
    assert len(tree_files(worktree)) == big.files
    for name in rng.sample(names, 8):
        expected = run_git("cat-file", "blob", f"{sha}:{name}", cwd=big.bare).stdout
        assert (worktree / name).read_text() == expected, name


async def test_crash_loop(
    volume: Path, scratch: Path, big_repo: BigRepo, big_daemon: GitDaemon, c0_cache: Path
) -> None:
    base_seed = int(os.environ.get("WO_CRASH_SEED", random.randrange(1 << 30)))
    print(f"crash loop base seed {base_seed} (replay: WO_CRASH_SEED={base_seed})")
    url = big_daemon.url("big")
    engine = Engine(volume, make_settings(scratch, allowed_schemes=frozenset({"git"})))
    project = layout(volume)
    phase_seconds = dict(PHASE_SECONDS)
    interrupted = 0
    for iteration in range(ITERATIONS):
        seed = base_seed + iteration
        rng = random.Random(seed)
        phase, revision = _prepare(rng, volume, big_repo, c0_cache)
        mode = (
            ["cancel", "sigkill-git", "kill-engine"][iteration % 3]
            if iteration < 3
            else rng.choice(["cancel", "sigkill-git", "kill-engine"])
        )
        delay = rng.uniform(0.0, 0.8 * phase_seconds[phase])
        context = f"iteration {iteration} seed {seed}: {mode} in {phase} (+{delay:.3f}s) of {revision}"
        if mode == "cancel":
            outcome = await _crash_cancel(engine, volume, url, revision, phase, delay)
        elif mode == "sigkill-git":
            outcome = await _crash_sigkill_git(engine, volume, url, revision, phase, delay)
        else:
            outcome = await _crash_kill_engine(scratch, volume, url, revision, phase, delay)
            engine = Engine(volume, engine.settings)  # the operator restarts
        interrupted += outcome.interrupted
        leftovers = sorted(p.name for p in project.project_dir.iterdir()) if project.project_dir.is_dir() else []
        print(f"{context}: interrupted={outcome.interrupted} {outcome.detail}; left {leftovers}")

        try:
            result = await checkout(engine, request(url, revision))
            if result.fetch_seconds:
                phase_seconds["fetch"] = result.fetch_seconds
            if not result.reused:
                phase_seconds["checkout"] = result.checkout_seconds
            sha = _expected_commit(big_repo, revision)
            assert result.commit == sha
            assert_worktree_at(project, NAME, sha)
            _check_content(rng, big_repo, project.worktree_dir(NAME), sha)
            assert_cache_consistent(project, url)
            # Debris is left for GC, never used: the worktree is attached to .cache (checked above).
            assert all(
                p.name.startswith((".staging-", ".quarantine-"))
                for p in project.project_dir.iterdir()
                if p.name not in (".cache", ".ready", NAME)
            )
            assert processes_under(volume) == {}
        except (AssertionError, GitError) as error:
            raise AssertionError(f"repair after {context} failed: {error}") from error
    print(f"{interrupted}/{ITERATIONS} iterations interrupted git")
    assert interrupted >= ITERATIONS // 2, "the kills mostly missed the running git"


# -- deterministic crash leftovers ----------------------------------------------------------


async def test_worktree_add_killed_leaves_locked_metadata(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path
) -> None:
    """`git worktree add` locks its metadata ("initializing") until done; killed, the lock stays."""
    url = git_daemon.url("repo")
    project = layout(volume)
    await checkout(engine, request(url, Revision(tag="v1.0")))
    await checkout(engine, request(url, Revision(tag="v1.0"), name="dir-kept"))
    metadata = project.cache_dir / "worktrees"
    # ws: killed before its directory existed; dir-kept: killed after writing .git, mid-checkout.
    shutil.rmtree(project.worktree_dir(NAME))
    (project.worktree_dir("dir-kept") / "README.md").unlink()
    for name in (NAME, "dir-kept"):
        (metadata / name / "locked").write_text("initializing")
        project.ready_record(name).unlink()

    for name in (NAME, "dir-kept"):
        result = await checkout(engine, request(url, Revision(branch="main"), name=name))
        assert (result.commit, result.reused) == (upstream_repo.main, False)
        assert_worktree_at(project, name, upstream_repo.main)
    assert sorted(Path(e["worktree"]).name for e in worktree_entries(project.cache_dir)) == ["dir-kept", NAME]
    assert_cache_consistent(project, url)

    # Teardown of a workspace whose add was killed must not leave metadata either.
    (metadata / NAME / "locked").write_text("initializing")
    shutil.rmtree(project.worktree_dir(NAME))
    assert await engine.remove(NS, PROJECT, NAME) is False
    assert [Path(e["worktree"]).name for e in worktree_entries(project.cache_dir)] == ["dir-kept"]
    assert_cache_consistent(project, url)


async def test_staging_cache_is_never_taken_for_the_cache(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path
) -> None:
    """A crash mid-create leaves .staging-cache-*; it may even look complete. It is never used."""
    url = git_daemon.url("repo")
    project = layout(volume)
    await checkout(engine, request(url, Revision(tag="v1.0")))
    await engine.remove(NS, PROJECT, NAME)
    staging = project.project_dir / ".staging-cache-0badc0de"
    project.cache_dir.rename(staging)  # as if killed just before the final rename
    (staging / "workspace-operator.fetching").touch()

    restarted = Engine(volume, engine.settings)
    result = await restarted.checkout(restarted.validate(request(url, Revision(commit=upstream_repo.v1_0))))
    assert (result.cache_hit, result.fetched) == (False, True)  # a new cache, fetched from upstream
    assert_worktree_at(project, NAME, upstream_repo.v1_0)
    assert_cache_consistent(project, url)
    assert staging.is_dir() and not (staging / "worktrees").exists()  # untouched debris, for GC


async def test_cancellation_kills_git_at_once(
    volume: Path, scratch: Path, upstream_repo: StandardRepo, smart_http: SmartHTTP
) -> None:
    """A hung fetch with a long timeout: cancelling the task must kill git right away."""
    engine = Engine(volume, make_settings(scratch, timeout_seconds=300.0))
    smart_http.fault = "hang"
    task = asyncio.create_task(checkout(engine, request(smart_http.url("repo"))))
    deadline = time.monotonic() + 30
    while not _git_processes(volume):
        assert time.monotonic() < deadline and not task.done(), "git never started"
        await asyncio.sleep(0.01)  # poll interval, not synchronisation
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_no_processes(volume, deadline_s=2)
    assert time.monotonic() - started < 5
    assert sorted(p.name for p in layout(volume).project_dir.iterdir()) == []  # staging removed
