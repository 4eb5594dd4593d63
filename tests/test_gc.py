"""Garbage collection end to end: the real operator, API server, git and volume, on a short clock.

Every test runs the operator with a 1 s GC interval (and 1 s per-Workspace timers) and waits on observable state
(objects, directories, metrics), never on sleeps. "Some passes went by" is
measured with the workspace_operator_gc_pass_seconds_count metric.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cluster import OperatorProcess, Scene, wait_events, wait_for
from testsupport.volumes import resize, tmpfs
from upstreams import StandardRepo, commit, init_upstream, publish

pytestmark = pytest.mark.cluster


# Short clock; each test overrides what it exercises. Large values switch a rule off.
FAST = {
    "WORKSPACE_GC_INTERVAL_SECONDS": "1",
    "WORKSPACE_ORPHAN_GRACE_SECONDS": "3600",
    "WORKSPACE_CACHE_QUIET_SECONDS": "100000",
    "WORKSPACE_CACHE_UNUSED_SECONDS": "100000",
    "WORKSPACE_DEFAULT_TTL_SECONDS": "0",
    # Expiry is each Workspace's timer: on the same short clock.
    "WORKSPACE_RECONCILE_INTERVAL_SECONDS": "1",
    "WORKSPACE_RECONCILE_JITTER_SECONDS": "0",
}
ANCIENT = time.time() - 30 * 86400


def gc_actions(op: OperatorProcess, action: str) -> float:
    found = re.search(
        rf'^workspace_operator_gc_actions_total{{action="{re.escape(action)}"}} (\S+)$', op.metrics(), re.M
    )
    return float(found.group(1)) if found else 0.0


def gc_passes(op: OperatorProcess) -> float:
    found = re.search(r"^workspace_operator_gc_pass_seconds_count (\S+)$", op.metrics(), re.M)
    return float(found.group(1)) if found else 0.0


def wait_passes(op: OperatorProcess, count: int = 1) -> None:
    """Let `count` whole GC passes run that started after this call (one in progress does not count)."""
    target = gc_passes(op) + count + 1
    wait_for(lambda: gc_passes(op) >= target, timeout=30, message=f"{count} more GC passes")


def assert_visible(op: OperatorProcess, action: str, at_least: int = 1, target: str = "") -> None:
    """The action was counted and logged as `gc: <action> <ns>/<project>[/<target>]`."""
    assert gc_actions(op, action) >= at_least, op.metrics()
    assert f"gc: {action} {target}" in op.log(), f"no log line 'gc: {action} {target}'"


def set_mtime(path: Path, when: float) -> None:
    os.utime(path, (when, when))


def make_dir(path: Path, *, mtime: float | None = None) -> Path:
    """A directory with a file in it at `path` (<root>/<ns>/<project>/<name>), appearing whole.

    Built aside and renamed into place: with a zero grace period GC may remove it
    the moment it exists. The staging name starts with '.', which GC never reads
    as a namespace.
    """
    staging = path.parents[2] / f".plant-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    (staging / "file.txt").write_text("left behind\n")
    if mtime is not None:
        set_mtime(staging, mtime)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, path)
    return path


def parse_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


# -- expiry ---------------------------------------------------------------------------------


def test_expired_workspace_is_deleted_unexpired_kept(scene: Scene, kubectl: Any) -> None:
    op = scene.start(env={**FAST, "WORKSPACE_DEFAULT_TTL_SECONDS": "2", "WORKSPACE_ALLOW_NO_TTL": "true"})
    url = scene.http.url("repo")
    scene.workspaces.create("short", {"project": "p", "repository": url})  # the default TTL: 2 s
    scene.workspaces.create("never", {"project": "p", "repository": url, "ttlSecondsAfterReady": 0})
    scene.workspaces.create("long", {"project": "p", "repository": url, "ttlSecondsAfterReady": 3600})
    short = scene.workspaces.wait_ready("short")
    never, long = scene.workspaces.wait_ready("never"), scene.workspaces.wait_ready("long")
    assert (parse_time(short["expiresAt"]) - parse_time(short["readyAt"])).total_seconds() == 2
    assert (parse_time(long["expiresAt"]) - parse_time(long["readyAt"])).total_seconds() == 3600
    assert never.get("expiresAt") is None

    scene.workspaces.wait_gone("short", timeout=30)
    wait_for(lambda: not (op.root / short["path"]).exists(), timeout=30, message="expired worktree removed")
    assert_visible(op, "expire-workspace", target=f"{scene.namespace}/short")
    wait_passes(op)
    for name, status in (("never", never), ("long", long)):
        assert scene.workspaces.status(name) == status
        assert (op.root / status["path"] / "README.md").is_file()
    assert gc_actions(op, "expire-workspace") == 1
    wait_events(kubectl, scene.namespace, "short", "Expired")


# -- orphans and debris ---------------------------------------------------------------------


def test_orphans_older_than_grace_removed_young_and_live_kept(scene: Scene) -> None:
    op = scene.start(env={**FAST, "WORKSPACE_ORPHAN_GRACE_SECONDS": "60"})
    scene.workspaces.create("alive", scene.spec())
    alive = scene.workspaces.wait_ready("alive")
    project = op.root / scene.namespace / "p"
    live_tree = op.root / alive["path"]
    set_mtime(live_tree, ANCIENT)  # its Workspace exists: age must not matter

    old = make_dir(project / "old-orphan", mtime=ANCIENT)
    young = make_dir(project / "young-orphan")  # younger than the 60 s grace
    debris = make_dir(project / ".staging-cache-dead", mtime=ANCIENT)
    young_debris = make_dir(project / ".quarantine-recent")
    stray = make_dir(op.root / scene.namespace / "nocache" / "stray", mtime=ANCIENT)  # no cache at all
    # A namespace this operator does not watch: its Workspaces are invisible to it.
    foreign = make_dir(op.root / "elsewhere" / "p" / "theirs", mtime=ANCIENT)

    for path in (old, debris, stray):
        wait_for(lambda: not path.exists(), timeout=30, message=f"{path.name} removed")
    wait_passes(op)
    for path in (young, young_debris, foreign, live_tree / "README.md"):
        assert path.exists(), f"{path} was removed"
    assert scene.workspaces.status("alive") == alive
    # The live worktree is still a working git checkout (prune kept its metadata).
    head = subprocess.run(
        ["git", "-C", str(live_tree), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30
    )
    assert head.stdout.strip() == alive["commit"], head.stderr

    assert_visible(op, "remove-orphan-worktree", 2, f"{scene.namespace}/p/old-orphan")
    assert_visible(op, "remove-orphan-worktree", 2, f"{scene.namespace}/nocache/stray")
    assert_visible(op, "remove-debris", 1, f"{scene.namespace}/p/.staging-cache-dead")
    assert_visible(op, "worktree-prune", 1, f"{scene.namespace}/p")
    assert f"{scene.namespace}/nocache (after" not in op.log()  # no prune without a cache
    assert gc_actions(op, "remove-orphan-worktree") == 2


# -- caches ---------------------------------------------------------------------------------


def loose_objects(cache: Path) -> dict[str, int]:
    out = subprocess.run(
        ["git", "-C", str(cache), "count-objects", "-v"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return {key: int(value) for key, value in (line.split(": ") for line in out.splitlines()) if value.isdigit()}


def test_quiet_cache_gcd_once_unused_cache_deleted_live_cache_kept(scene: Scene) -> None:
    op = scene.start(env={**FAST, "WORKSPACE_CACHE_QUIET_SECONDS": "1", "WORKSPACE_CACHE_UNUSED_SECONDS": "2"})
    url = scene.http.url("repo")
    scene.workspaces.create("keep", {"project": "live", "repository": url})
    scene.workspaces.create("gone", {"project": "idle", "repository": url})
    keep = scene.workspaces.wait_ready("keep")
    scene.workspaces.wait_ready("gone")
    live_cache = op.root / scene.namespace / "live" / ".cache"
    idle_project = op.root / scene.namespace / "idle"
    scene.workspaces.delete("gone")
    scene.workspaces.wait_gone("gone")
    # A live Workspace protects its cache however long ago it was last used.
    set_mtime(live_cache / "workspace-operator.last-used", ANCIENT)

    wait_for(lambda: not idle_project.exists(), timeout=30, message="unused cache (and project dir) deleted")
    wait_for(lambda: (live_cache / "workspace-operator.last-gc").exists(), timeout=30, message="live cache gc'd")
    # Small fetches are unpacked into loose objects; after gc everything is in a pack.
    counts = loose_objects(live_cache)
    assert counts["count"] == 0 and counts["in-pack"] > 0, counts
    assert_visible(op, "delete-unused-cache", 1, f"{scene.namespace}/idle (unused)")
    assert_visible(op, "gc-cache", 1, f"{scene.namespace}/live (quiet)")

    # Packed once; with no fetch since, later passes leave it alone.
    gcs = gc_actions(op, "gc-cache")
    packed_at = (live_cache / "workspace-operator.last-gc").stat().st_mtime
    wait_passes(op)
    assert gc_actions(op, "gc-cache") == gcs
    assert (live_cache / "workspace-operator.last-gc").stat().st_mtime == packed_at
    assert live_cache.is_dir() and scene.workspaces.status("keep") == keep
    assert (op.root / keep["path"] / "README.md").is_file()
    assert gc_actions(op, "delete-unused-cache") == 1


# -- watermark eviction on a real small filesystem ------------------------------------------


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs as the volume root, so usage is real `df` usage (resized by the test)."""
    with tmpfs(tmp_path / "small-volume", "200m") as volume:
        yield volume


def du(path: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in path.rglob("*"))


def test_watermark_evicts_lru_idle_caches_down_to_low_watermark(
    scene: Scene, small_volume: Path, tmp_path: Path
) -> None:
    assert scene.repo.served_dir is not None
    projects = ("a", "b", "c", "live")
    for name in projects:  # one upstream per project, each with ~1.5 MB of poorly compressible content
        src = init_upstream(tmp_path / f"src-{name}")
        commit(src, {"blob.txt": secrets.token_hex(750_000)}, f"{name} content")
        publish(src, scene.repo.served_dir / f"{name}.git")
    high, low = 0.5, 0.4
    op = scene.start(
        root_dir=small_volume,
        env={**FAST, "WORKSPACE_DISK_HIGH_WATERMARK": str(high), "WORKSPACE_DISK_LOW_WATERMARK": str(low)},
    )
    for name in projects:
        scene.workspaces.create(name, {"project": name, "repository": scene.http.url(name)})
    for name in projects:
        scene.workspaces.wait_ready(name)
    for name in projects[:3]:
        scene.workspaces.delete(name)
    for name in projects[:3]:
        scene.workspaces.wait_gone(name)

    # LRU order b < a < c (not the creation order); "live" is the least recently used of all.
    root = small_volume / scene.namespace
    now = time.time()
    for name, age in (("b", 300), ("a", 200), ("c", 100), ("live", 50_000)):
        set_mtime(root / name / ".cache" / "workspace-operator.last-used", now - age)
    assert gc_actions(op, "evict-cache") == 0  # the 200 MiB volume is nearly empty
    # Shrink the volume: over the high watermark, evicting b alone does not reach the low
    # one, evicting b and a does.
    used = shutil.disk_usage(small_volume).used
    size = {name: du(root / name / ".cache") for name in projects}
    total = int((used - size["b"] - size["a"] / 2) / low) // 4096 * 4096
    assert used / total > high and (used - size["b"]) / total > low >= (used - size["b"] - size["a"]) / total
    resize(small_volume, str(total))

    for gone in ("b", "a"):
        wait_for(lambda: not (root / gone / ".cache").exists(), timeout=30, message=f"cache {gone} evicted")
    wait_passes(op)
    assert (root / "c" / ".cache").is_dir(), "evicted past the low watermark"
    assert (root / "live" / ".cache").is_dir(), "evicted a cache with a live Workspace"
    assert (small_volume / scene.workspaces.status("live")["path"] / "blob.txt").is_file()
    log = op.log()
    assert log.index(f"gc: evict-cache {scene.namespace}/b ") < log.index(f"gc: evict-cache {scene.namespace}/a ")
    assert gc_actions(op, "evict-cache") == 2
    assert shutil.disk_usage(small_volume).used <= low * total
    ratio = re.search(r"^workspace_operator_volume_usage_ratio (\S+)$", op.metrics(), re.M)
    assert ratio and float(ratio.group(1)) <= low


# -- GC and materialization never overlap on a project ---------------------------------------


WRAPPER = """#!/bin/bash
# Journals every git run (start/end, pid, cwd, args) and runs the real git.
exec 9>>{journal}
flock 9; printf 'start\\t%s\\t%s\\t%s\\t%s\\n' "$$" "$EPOCHREALTIME" "$PWD" "$*" >&9; flock -u 9
{git} "$@" 9>&-
rc=$?
flock 9; printf 'end\\t%s\\t%s\\t%s\\t%s\\n' "$$" "$EPOCHREALTIME" "$PWD" "$*" >&9; flock -u 9
exit $rc
"""


def git_subcommand(args: str) -> str:
    words = args.split()
    while words and words[0] == "-c":
        words = words[2:]
    return " ".join(words[:2]) if words[:1] == ["worktree"] else (words[0] if words else "")


def journal_intervals(journal: Path, root: Path) -> dict[tuple[str, str], list[tuple[float, float, str]]]:
    """(namespace, project) -> [(start, end, command)] of every git run on a project's shared store."""
    started: dict[str, tuple[float, str, str]] = {}
    spans: dict[tuple[str, str], list[tuple[float, float, str]]] = defaultdict(list)
    end_of_journal = 0.0
    for line in journal.read_text().splitlines():
        event, pid, moment, cwd, args = line.split("\t", 4)
        end_of_journal = max(end_of_journal, float(moment))
        if event == "start":
            started[pid] = (float(moment), cwd, args)
        else:
            begin, cwd, args = started.pop(pid)
            _record(spans, root, cwd, begin, float(moment), args)
    for begin, cwd, args in started.values():  # killed mid-run: assume it ran to the end
        _record(spans, root, cwd, begin, end_of_journal, args)
    return spans


def _record(
    spans: dict[tuple[str, str], list[tuple[float, float, str]]],
    root: Path,
    cwd: str,
    begin: float,
    end: float,
    args: str,
) -> None:
    try:
        parts = Path(cwd).resolve().relative_to(root.resolve()).parts
    except ValueError:
        return  # not on the volume (the test's own git)
    # Runs inside a worktree (writing its own files, outside the Lease, in parallel) touch
    # no shared state: only runs in the project dir, the cache or a staging dir count.
    if len(parts) == 2 or (len(parts) > 2 and parts[2].startswith(".")):
        spans[(parts[0], parts[1])].append((begin, end, git_subcommand(args)))


def test_gc_and_materialization_never_overlap_on_a_project(scene: Scene, tmp_path: Path) -> None:
    journal = tmp_path / "git-journal.tsv"
    journal.touch()
    bindir = tmp_path / "gitwrap"
    bindir.mkdir()
    wrapper = bindir / "git"
    wrapper.write_text(WRAPPER.format(journal=journal, git=shutil.which("git")))
    wrapper.chmod(0o755)
    # Everything as eager as it gets: orphans at once, gc after every fetch, idle caches deleted at once.
    op = scene.start(
        env={
            **FAST,
            "PATH": f"{bindir}:{os.environ['PATH']}",
            "WORKSPACE_ORPHAN_GRACE_SECONDS": "0",
            "WORKSPACE_CACHE_QUIET_SECONDS": "0",
            "WORKSPACE_CACHE_UNUSED_SECONDS": "0",
        }
    )
    url = scene.http.url("repo")
    refs = [
        {"commit": scene.repo.main},
        {"commit": scene.repo.old},
        {"branch": "main"},
        {"branch": StandardRepo.FEATURE_BRANCH},
        {"name": StandardRepo.PULL_REF},
    ]
    project = op.root / scene.namespace / "race"
    previous: list[str] = []
    everyone: list[str] = []
    for wave in range(3):
        for name in previous:  # their teardown races the next wave's materializations and GC
            scene.workspaces.delete(name)
        if wave == 2:  # once, let the idle cache be collected so it is re-created under GC's eye
            for name in previous:
                scene.workspaces.wait_gone(name, timeout=60)
            wait_for(lambda: not project.exists(), timeout=30, message="the idle project collected")
        names = [f"w{wave}-{i}" for i in range(len(refs))]
        for name, ref in zip(names, refs):
            scene.workspaces.create(name, {"project": "race", "repository": url, "ref": ref})
        for i in range(2):  # orphans for GC to remove while materializations run
            make_dir(project / f"stray-{wave}-{i}")
        for name in names:
            scene.workspaces.wait_ready(name, timeout=60)
        previous = names
        everyone += names
    for name in previous:
        scene.workspaces.delete(name)
    for name in everyone:
        scene.workspaces.wait_gone(name, timeout=60)
    wait_for(lambda: not project.exists(), timeout=30, message="the idle project collected")

    spans = journal_intervals(journal, op.root)
    runs = sorted(spans[(scene.namespace, "race")])
    commands = {command for _, _, command in runs}
    assert {"init", "fetch", "worktree add", "worktree remove", "worktree prune", "gc"} <= commands, commands
    for (begin, end, command), (next_begin, _, next_command) in zip(runs, runs[1:]):
        assert next_begin >= end, f"'{command}' [{begin:.6f}, {end:.6f}] overlaps '{next_command}' at {next_begin:.6f}"
    # GC really ran in between: all kinds of its actions on this project.
    # (Strays are only ever removed by GC, and only GC deletes caches: those counts are exact minimums.)
    for action, times in (
        ("remove-orphan-worktree", 6),
        ("worktree-prune", 1),
        ("gc-cache", 1),
        ("delete-unused-cache", 2),
    ):
        assert gc_actions(op, action) >= times, f"{action} fewer than {times} times: {op.metrics()}"
