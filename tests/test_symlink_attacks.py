"""Symlinks planted on the volume never make the engine or GC touch anything outside the intended path.

The victim is another namespace's live worktree and cache (team-b/proj) and a
directory outside the volume. Every case plants a link at one level (namespace,
project, worktree, `.cache`, `.ready`, `.ready/<name>`, stamps, inside a worktree,
debris, cache metadata), runs the operation (checkout, teardown, GC's steps), and
compares both victims entry by entry (kind, size, mtime, inode, content digest)
before and after.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from engine_fixtures import (
    NAME,
    PROJECT,
    assert_worktree_at,
    checkout,
    expected_files,
    layout,
    request,
    snapshot,
    tree_files,
)
from upstreams import GitDaemon, StandardRepo
from workspace_operator.gc import snapshot as gc_snapshot
from workspace_operator.gc import snapshot_project, with_sizes
from workspace_operator.git import Engine, GitError, Reason, safepath
from workspace_operator.git.engine import Maintenance

pytestmark = pytest.mark.usefixtures("no_leftover_processes")

ATTACKER, VICTIM = "team-a", "team-b"
Check = Callable[[], None]


@pytest.fixture
def outside_dir(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    (path / "sub").mkdir(parents=True)
    (path / "secret.txt").write_text("not the operator's\n")
    (path / "sub" / "deep.txt").write_text("deep\n")
    (path / ".git").write_text("gitdir: /nowhere\n")
    return path


@pytest.fixture
async def victim(engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path) -> Path:
    """team-b's live worktree `backend` (project dir returned)."""
    await checkout(engine, request(ro_daemon.url("repo"), namespace=VICTIM, name="backend"))
    return volume / VICTIM / PROJECT


@pytest.fixture
def untouched(victim: Path, outside_dir: Path) -> Callable[[], Check]:
    """start() snapshots the victims; the returned check asserts both are byte-for-byte unchanged."""

    def start() -> Check:
        before = (snapshot(victim), snapshot(outside_dir))

        def check() -> None:
            assert snapshot(victim) == before[0], "another namespace's project changed"
            assert snapshot(outside_dir) == before[1], "a directory outside the volume changed"

        return check

    return start


def targets(victim: Path, outside_dir: Path) -> dict[str, Path]:
    return {"victim": victim, "outside": outside_dir}


# -- the path to the project: namespace and project links are refused, nothing touched -------------


@pytest.mark.parametrize("level", ["namespace", "project"])
@pytest.mark.parametrize("target", ["victim", "outside"])
async def test_link_on_the_way_to_the_project_is_refused_everywhere(
    level: str,
    target: str,
    engine: Engine,
    ro_daemon: GitDaemon,
    volume: Path,
    victim: Path,
    outside_dir: Path,
    untouched: Callable[[], Check],
    caplog: pytest.LogCaptureFixture,
) -> None:
    goal = targets(victim, outside_dir)[target]
    if level == "namespace":  # <root>/evil -> team-b's namespace dir (or outside); project "proj" below it
        (volume / "evil").symlink_to(goal.parent if target == "victim" else goal)
        if target == "outside":
            (outside_dir / PROJECT).mkdir()
        namespace, project = "evil", PROJECT
    else:  # <root>/team-a/evil -> team-b/proj (or outside)
        (volume / ATTACKER).mkdir()
        (volume / ATTACKER / "evil").symlink_to(goal)
        namespace, project = ATTACKER, "evil"
    name = "backend" if target == "victim" else "sub"
    check = untouched()
    maintenance = Maintenance(engine)

    for attempt in (
        lambda: checkout(engine, request(ro_daemon.url("repo"), namespace=namespace, project=project, name=name)),
        lambda: engine.remove(namespace, project, name),
        lambda: maintenance.prune(namespace, project),
        lambda: maintenance.gc_cache(namespace, project),
    ):
        with pytest.raises(GitError) as caught:
            await attempt()
        assert caught.value.reason is Reason.UNSAFE_PATH, caught.value
        assert caught.value.retryable is False
    sync_attempts: list[Callable[[], None]] = [
        lambda: maintenance.delete_cache(namespace, project),
        lambda: maintenance.remove_debris(namespace, project, ".quarantine-x"),
    ]
    for sync_attempt in sync_attempts:
        with pytest.raises(GitError) as caught:
            sync_attempt()
        assert caught.value.reason is Reason.UNSAFE_PATH
    # GC never even sees it as a project; it reports the link instead.
    with caplog.at_level(logging.WARNING):
        snaps = gc_snapshot(volume, lambda _ns, _p: True)
    assert {(s.namespace, s.project) for s in snaps} == {(VICTIM, PROJECT)}
    assert "is a symlink where a directory belongs" in caplog.text
    empty = snapshot_project(volume, namespace, project)
    assert (empty.has_cache, empty.worktrees, empty.debris) == (False, {}, {})
    check()


# -- entries inside the project: links are removed as links or quarantined, never followed ----------


async def test_link_at_a_worktree_path(
    engine: Engine,
    ro_repo: StandardRepo,
    ro_daemon: GitDaemon,
    volume: Path,
    victim: Path,
    outside_dir: Path,
    untouched: Callable[[], Check],
) -> None:
    url = ro_daemon.url("repo")
    await checkout(engine, request(url, namespace=ATTACKER))  # team-a has a cache and a worktree
    project = volume / ATTACKER / PROJECT
    (project / "evil").symlink_to(victim / "backend")
    (project / "out").symlink_to(outside_dir)
    check = untouched()

    snap = snapshot_project(volume, ATTACKER, PROJECT)
    assert set(snap.worktrees) == {NAME}, "a link is never taken for a worktree"
    # Teardown of a Workspace named like the link: the link goes, its target stays.
    assert await engine.remove(ATTACKER, PROJECT, "evil") is True
    assert not os.path.lexists(project / "evil")
    # Materializing at a name where a link sits: the link is replaced by a real worktree.
    result = await checkout(engine, request(url, namespace=ATTACKER, name="out"))
    assert safepath.kind(project / "out") == "dir"
    assert tree_files(project / "out") == expected_files(ro_repo, result.commit)
    check()


async def test_links_inside_a_worktree_are_removed_as_links(
    engine: Engine,
    ro_repo: StandardRepo,
    ro_daemon: GitDaemon,
    volume: Path,
    victim: Path,
    outside_dir: Path,
    untouched: Callable[[], Check],
) -> None:
    await checkout(engine, request(ro_daemon.url("repo"), namespace=ATTACKER))
    worktree = layout(volume, namespace=ATTACKER).worktree_dir(NAME)
    (worktree / "to-victim").symlink_to(victim / "backend")
    (worktree / "libs" / "to-outside").symlink_to(outside_dir)
    (worktree / ".git").unlink()
    (worktree / ".git").symlink_to(victim / "backend" / ".git")  # git's pointer swapped for a link
    check = untouched()
    assert not engine.is_complete(engine.validate(request(ro_daemon.url("repo"), namespace=ATTACKER)), ro_repo.main)
    assert await engine.remove(ATTACKER, PROJECT, NAME) is True
    assert not os.path.lexists(worktree)
    check()


@pytest.mark.parametrize("entry", [".cache", ".ready", "record", "stamp", "cache-metadata"])
async def test_links_at_the_operators_own_entries(
    entry: str,
    engine: Engine,
    ro_repo: StandardRepo,
    ro_daemon: GitDaemon,
    volume: Path,
    victim: Path,
    outside_dir: Path,
    untouched: Callable[[], Check],
) -> None:
    url = ro_daemon.url("repo")
    mine = layout(volume, namespace=ATTACKER)
    if entry == ".cache":  # team-a's cache is team-b's
        safepath.make_dirs(volume, mine.project_dir)
        mine.cache_dir.symlink_to(victim / ".cache")
    else:
        await checkout(engine, request(url, namespace=ATTACKER, name="first"))
        if entry == ".ready":
            safepath.remove(volume, mine.ready_dir)
            mine.ready_dir.symlink_to(victim / ".ready")
        elif entry == "record":
            mine.ready_record(NAME).symlink_to(outside_dir / "secret.txt")
        elif entry == "stamp":
            for stamp in ("workspace-operator.last-used", "workspace-operator.last-fetch"):
                safepath.remove(volume, mine.cache_dir / stamp)
                (mine.cache_dir / stamp).symlink_to(outside_dir / "secret.txt")
        else:  # the cache's worktree metadata of `first` swapped for the victim's
            metadata = mine.cache_dir / "worktrees" / "first"
            safepath.remove(volume, metadata)
            metadata.symlink_to(victim / ".cache" / "worktrees" / "backend")
    check = untouched()

    result = await checkout(engine, request(url, namespace=ATTACKER))
    assert_worktree_at(mine, NAME, result.commit)
    assert tree_files(mine.worktree_dir(NAME)) == expected_files(ro_repo, result.commit)
    assert safepath.kind(mine.cache_dir) == "dir" and safepath.kind(mine.ready_dir) == "dir"
    assert safepath.kind(mine.ready_record(NAME)) == "file"
    if entry in (".cache", "cache-metadata"):
        assert result.cache_repaired and "symlink" in result.cache_repaired
    await engine.remove(ATTACKER, PROJECT, NAME)
    check()


async def test_gc_steps_never_follow_links(
    engine: Engine, ro_daemon: GitDaemon, volume: Path, victim: Path, outside_dir: Path, untouched: Callable[[], Check]
) -> None:
    await checkout(engine, request(ro_daemon.url("repo"), namespace=ATTACKER))
    mine = layout(volume, namespace=ATTACKER)
    (mine.project_dir / ".quarantine-1-evil").symlink_to(victim)
    (mine.project_dir / ".staging-cache-evil").symlink_to(outside_dir)
    (mine.cache_dir / "refs" / "heads").mkdir(parents=True, exist_ok=True)
    (mine.cache_dir / "refs" / "heads" / "evil").symlink_to(victim / ".cache" / "refs")
    (mine.cache_dir / "objects" / "evil").symlink_to(outside_dir)  # sizes must not count the target
    check = untouched()
    maintenance = Maintenance(engine)

    snap = snapshot_project(volume, ATTACKER, PROJECT)
    assert set(snap.debris) == {".quarantine-1-evil", ".staging-cache-evil"}
    sized = with_sizes([snap], volume)[0]
    assert sized.cache_bytes is not None and sized.cache_bytes < safepath.disk_usage(volume, victim / ".cache") * 4
    for entry in snap.debris:
        maintenance.remove_debris(ATTACKER, PROJECT, entry)
        assert not os.path.lexists(mine.project_dir / entry)
    await maintenance.prune(ATTACKER, PROJECT)  # the link in refs/: quarantined, no git run in it
    assert safepath.kind(mine.cache_dir) is None
    quarantined = [p for p in mine.project_dir.iterdir() if p.name.startswith(".quarantine-")]
    assert len(quarantined) == 1
    maintenance.remove_debris(ATTACKER, PROJECT, quarantined[0].name)
    maintenance.delete_cache(ATTACKER, PROJECT)
    check()


def test_safepath_refuses_links_at_every_component(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("x")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "b").mkdir(parents=True)
    (elsewhere / "b" / "f").write_text("theirs")
    (root / "l").symlink_to(elsewhere)
    assert safepath.read_text(root, root / "a" / "b" / "f") == "x"
    for path in (root / "l" / "b" / "f", root / "l" / "b"):
        with pytest.raises(GitError) as caught:
            safepath.read_text(root, path / "f" if path.name == "b" else path)
        assert caught.value.reason is Reason.UNSAFE_PATH
        with pytest.raises(GitError):
            safepath.check_real_dirs(root, path.parent)
    with pytest.raises(GitError):
        safepath.make_dirs(root, root / "l" / "new")
    with pytest.raises(GitError):
        safepath.write_atomic(root, root / "l" / "b" / "g", "y")
    assert safepath.remove(root, root / "l") is True  # the link itself
    assert (elsewhere / "b" / "f").read_text() == "theirs" and not (elsewhere / "b" / "g").exists()
    (root / "a" / "b" / "ln").symlink_to(elsewhere / "b" / "f")
    with pytest.raises(OSError, match="symbolic link"):  # ELOOP: O_NOFOLLOW refused the link
        safepath.read_text(root, root / "a" / "b" / "ln")
    safepath.touch(root, root / "a" / "b" / "ln")  # a stamp at a link's place replaces the link
    assert safepath.kind(root / "a" / "b" / "ln") == "file" and (elsewhere / "b" / "f").read_text() == "theirs"
    assert safepath.mtime(root, root / "l" / "b" / "f") is None
    with pytest.raises(FileNotFoundError):
        safepath.check_real_dirs(root, root / "missing")
