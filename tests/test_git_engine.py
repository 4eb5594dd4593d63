"""The git engine against real upstreams: refs, caching, reuse, repair, failures, credentials.

Every test drives the public face (Engine.validate / checkout / remove) with
real git against loopback servers from upstreams.py, and checks what the
operator would publish in status: commit, paths, cache_hit / fetched / reused.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

from engine_fixtures import (
    NAME,
    NS,
    PROJECT,
    SUBPROCESS_TIMEOUT,
    assert_cache_consistent,
    assert_materialized,
    assert_worktree_at,
    checkout,
    expected_files,
    layout,
    make_settings,
    materialize,
    request,
    run_git,
    snapshot,
    tree_files,
    wait_no_processes,
    worktree_entries,
    worktree_path,
)
from upstreams import GitDaemon, SmartHTTP, SSHServer, StandardRepo, commit, git, publish, served_repo
from workspace_operator.git import Credentials, Engine, GitError, Reason, Revision, pins
from workspace_operator.git.markers import OPERATION_MARKER

pytestmark = [pytest.mark.upstreams, pytest.mark.usefixtures("no_leftover_processes")]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket closes


# -- refs --------------------------------------------------------------------------


RefCase = tuple[Callable[[StandardRepo], Revision], Callable[[StandardRepo], str]]
REFS: dict[str, RefCase] = {
    "default-branch": (lambda r: Revision(), lambda r: r.main),
    "branch": (lambda r: Revision(branch="main"), lambda r: r.main),
    "branch-with-slashes": (lambda r: Revision(branch=r.FEATURE_BRANCH), lambda r: r.feature),
    "lightweight-tag": (lambda r: Revision(tag="v1.0"), lambda r: r.v1_0),
    "annotated-tag": (lambda r: Revision(tag="v1.1"), lambda r: r.v1_1),
    "ref-name": (lambda r: Revision(name=r.PULL_REF), lambda r: r.pull_42),
    "pinned-old-commit-on-branch": (lambda r: Revision(branch="main", commit=r.old), lambda r: r.old),
    "bare-old-commit": (lambda r: Revision(commit=r.old), lambda r: r.old),
    "dangling-commit": (lambda r: Revision(commit=r.dangling), lambda r: r.dangling),
}


@pytest.mark.parametrize("case", list(REFS))
async def test_every_kind_of_ref_checks_out_the_right_commit(
    case: str, engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path
) -> None:
    make_revision, expected = REFS[case]
    url = ro_daemon.url("repo")
    result = await checkout(engine, request(url, make_revision(ro_repo)))

    sha = expected(ro_repo)
    assert result.commit == sha
    if case == "annotated-tag":
        assert result.commit != ro_repo.v1_1_tag  # the peeled commit, never the tag object
    assert result.path == PurePosixPath(NS, PROJECT, NAME)
    assert result.workdir == result.path
    assert (result.cache_hit, result.fetched, result.reused, result.cache_repaired) == (False, True, False, None)
    assert_materialized(volume, ro_repo, result, url, sha)


async def test_all_refs_side_by_side_share_one_cache(
    engine: Engine, upstream_repo: StandardRepo, smart_http: SmartHTTP, volume: Path
) -> None:
    url = smart_http.url("repo")
    for index, case in enumerate(REFS):
        make_revision, expected = REFS[case]
        result = await checkout(engine, request(url, make_revision(upstream_repo), name=f"w{index}"))
        assert result.commit == expected(upstream_repo), case
        assert tree_files(worktree_path(volume, result)) == expected_files(upstream_repo, result.commit), case
    assert sorted(p.name for p in layout(volume).project_dir.iterdir()) == [
        ".cache",
        ".ready",
        *sorted(f"w{i}" for i in range(len(REFS))),
    ]
    assert len(worktree_entries(layout(volume).cache_dir)) == len(REFS)
    assert_cache_consistent(layout(volume), url)


async def test_sub_path_sets_workdir(engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path) -> None:
    result = await checkout(engine, request(ro_daemon.url("repo"), Revision(tag="v1.1"), sub_path="services/api"))
    assert result.path == PurePosixPath(NS, PROJECT, NAME)
    assert result.workdir == PurePosixPath(NS, PROJECT, NAME, "services", "api")
    assert tree_files(volume / result.workdir) == {"app.py": "print('api v1.1')\n"}
    assert tree_files(volume / result.path) == expected_files(ro_repo, ro_repo.v1_1)  # full tree


async def test_sparse_cone_checks_out_only_those_dirs(
    engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path
) -> None:
    url = ro_daemon.url("repo")
    result = await checkout(
        engine, request(url, Revision(branch=ro_repo.FEATURE_BRANCH), sparse=("services/api",), sub_path="services/api")
    )
    assert result.commit == ro_repo.feature
    assert result.workdir == PurePosixPath(NS, PROJECT, NAME, "services", "api")
    # Cone mode: the listed directory recursively plus top-level files, nothing else.
    assert tree_files(worktree_path(volume, result)) == {
        "README.md": "# demo\n\nv1.1\n",
        "services/api/app.py": "print('api v1.1')\n",
        "services/api/feature.py": "FEATURE = True\n",
    }
    assert run_git("rev-parse", "HEAD", cwd=worktree_path(volume, result)).stdout.strip() == ro_repo.feature

    # Sparse settings are per worktree: a later full workspace from the same cache is complete.
    full = await checkout(engine, request(url, Revision(branch=ro_repo.FEATURE_BRANCH), name="full"))
    assert_materialized(volume, ro_repo, full, url, ro_repo.feature, name="full")


async def test_sub_path_outside_sparse_dirs_is_refused(engine: Engine, ro_daemon: GitDaemon, volume: Path) -> None:
    with pytest.raises(GitError) as caught:
        engine.validate(request(ro_daemon.url("repo"), sparse=("libs",), sub_path="services/api"))
    assert caught.value.reason is Reason.INVALID_SPEC
    assert list(volume.iterdir()) == []


async def test_submodules_are_checked_out_recursively(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path
) -> None:
    served = git_daemon.base
    deep = served_repo(served, "deep", {"deep.txt": "deepest\n"})
    # lib -> deep by absolute git:// URL; super -> lib by a URL relative to super's own.
    lib = served_repo(
        served,
        "lib",
        {"lib.txt": "library\n"},
        {"deep": deep},
        f'[submodule "deep"]\n\tpath = deep\n\turl = {git_daemon.url("deep")}\n',
    )
    top = served_repo(
        served,
        "super",
        {"top.txt": "top\n"},
        {"vendor/lib": lib},
        '[submodule "lib"]\n\tpath = vendor/lib\n\turl = ../lib.git\n',
    )
    url = git_daemon.url("super")

    result = await checkout(engine, request(url, Revision(branch="main"), submodules=True))
    assert result.commit == top
    files = tree_files(worktree_path(volume, result))
    assert files["top.txt"] == "top\n"
    assert files["vendor/lib/lib.txt"] == "library\n"
    assert files["vendor/lib/deep/deep.txt"] == "deepest\n"
    worktree = worktree_path(volume, result)
    assert run_git("rev-parse", "HEAD", cwd=worktree / "vendor/lib").stdout.strip() == lib
    assert run_git("rev-parse", "HEAD", cwd=worktree / "vendor/lib/deep").stdout.strip() == deep

    # Without submodules the gitlink stays an empty directory.
    plain = await checkout(engine, request(url, Revision(branch="main"), name="plain"))
    assert sorted(tree_files(worktree_path(volume, plain))) == [".gitmodules", "top.txt"]

    # A worktree with submodules can still be removed completely.
    assert await engine.remove(NS, PROJECT, NAME) is True
    assert not worktree.exists()
    assert [Path(e["worktree"]).name for e in worktree_entries(layout(volume).cache_dir)] == ["plain"]
    assert_cache_consistent(layout(volume), url)


async def test_submodule_over_a_disallowed_transport_is_refused(
    volume: Path, scratch: Path, upstream_repo: StandardRepo, git_daemon: GitDaemon
) -> None:
    served = git_daemon.base
    lib = served_repo(served, "lib", {"lib.txt": "library\n"})
    served_repo(
        served,
        "super",
        {"top.txt": "top\n"},
        {"lib": lib},
        f'[submodule "lib"]\n\tpath = lib\n\turl = file://{served / "lib.git"}\n',
    )
    engine = Engine(volume, make_settings(scratch, allowed_schemes=frozenset({"git"})))
    with pytest.raises(GitError) as caught:
        await checkout(engine, request(git_daemon.url("super"), submodules=True))
    assert caught.value.reason is Reason.SCHEME_NOT_ALLOWED
    assert not layout(volume).ready_record(NAME).exists()


# -- caching: no network when the cache has it ---------------------------------------------


async def test_cached_commit_needs_no_network(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path
) -> None:
    url = git_daemon.url("repo")
    first = await checkout(engine, request(url, Revision(branch="main")))
    assert (first.cache_hit, first.fetched) == (False, True)
    connections = git_daemon.count()

    git_daemon.stop()  # from here on, any network access would fail
    for name, sha in (("second", upstream_repo.main), ("third", upstream_repo.old)):
        result = await checkout(engine, request(url, Revision(branch="main", commit=sha), name=name))
        assert (result.commit, result.cache_hit, result.fetched, result.reused) == (sha, True, False, False)
        assert result.fetch_seconds == 0.0
        assert tree_files(worktree_path(volume, result)) == expected_files(upstream_repo, sha)
    assert git_daemon.count() == connections

    # A fresh engine (an operator restart) also works offline: the deep check is local.
    restarted = Engine(volume, engine.settings)
    result = await checkout(restarted, request(url, Revision(commit=upstream_repo.main), name="fourth"))
    assert (result.cache_hit, result.fetched) == (True, False)
    assert_cache_consistent(layout(volume), url)


async def test_cached_branch_tip_costs_one_ls_remote_and_no_fetch(
    engine: Engine, upstream_repo: StandardRepo, smart_http: SmartHTTP, volume: Path
) -> None:
    url = smart_http.url("repo")
    await checkout(engine, request(url, Revision(branch="main")))
    fetches, requests = smart_http.count(), len(smart_http.requests())
    assert fetches >= 1

    result = await checkout(engine, request(url, Revision(branch="main"), name="second"))
    assert (result.commit, result.cache_hit, result.fetched) == (upstream_repo.main, True, False)
    assert smart_http.count() == fetches  # no fetch
    new = smart_http.requests()[requests:]
    assert new, "the branch tip must be asked for"
    assert all(r.command in (None, "ls-refs") for r in new), new  # discovery + ls-refs only

    # The tip moves: exactly the new commit is fetched.
    tip = commit(upstream_repo.src, {"NEW.md": "new\n"}, "new tip")
    upstream_repo.republish()
    moved = await checkout(engine, request(url, Revision(branch="main"), name="third"))
    assert (moved.commit, moved.cache_hit, moved.fetched) == (tip, False, True)
    assert smart_http.count() > fetches
    assert tree_files(worktree_path(volume, moved))["NEW.md"] == "new\n"


@pytest.mark.parametrize(("deleted", "pushed"), [("p/q", "p"), ("p", "p/q")])
async def test_a_branch_in_place_of_a_deleted_one_is_fetched_at_once(
    engine: Engine, upstream_repo: StandardRepo, smart_http: SmartHTTP, volume: Path, deleted: str, pushed: str
) -> None:
    """Upstream deletes `deleted` and pushes `pushed`, one a leading directory of the
    other. The cache's tracking ref of the deleted branch stands where the new one goes
    (git cannot lock refs/remotes/origin/p while origin/p/q exists): it is stale, and
    dropped. The first attempt succeeds and stores the ref; the pin stays."""
    url, src = smart_http.url("repo"), upstream_repo.src

    def branch(name: str) -> str:
        git(src, "checkout", "-q", "-b", name, "main")
        sha = commit(src, {f"{name.replace('/', '-')}.txt": name}, f"on {name}")
        git(src, "checkout", "-q", "main")
        upstream_repo.republish()
        return sha

    old = branch(deleted)
    pinned = await engine.pin(engine.validate(request(url, Revision(branch=deleted), name="old", cache_only=True)))
    assert pinned.commit == old
    git(src, "branch", "-q", "-D", deleted)
    new = branch(pushed)

    result = await checkout(engine, request(url, Revision(branch=pushed)))
    assert (result.commit, result.fetched) == (new, True)
    cache = layout(volume).cache_dir
    refs = run_git("for-each-ref", "--format=%(refname) %(objectname)", cwd=cache).stdout.splitlines()
    assert f"refs/remotes/origin/{pushed} {new}" in refs, refs
    assert not any(line.startswith(f"refs/remotes/origin/{deleted} ") for line in refs), refs
    assert f"refs/workspaces/old {old}" in refs, refs  # a pin is never touched
    assert_cache_consistent(layout(volume), url)


async def test_every_tag_is_fetched_after_a_tag_became_a_directory(
    engine: Engine, upstream_repo: StandardRepo, smart_http: SmartHTTP, volume: Path
) -> None:
    """spec.tags fetches refs/tags/*: upstream replaced tag `v9` by `v9/x`, and the cache's
    `v9` stands where `v9/x` goes. Pruned (upstream no longer has it), the fetch succeeds."""
    url, src = smart_http.url("repo"), upstream_repo.src
    git(src, "tag", "v9", "main")
    upstream_repo.republish()
    await checkout(engine, request(url, Revision(branch="main"), name="first", tags=True))
    git(src, "tag", "-d", "v9")
    git(src, "tag", "v9/x", "main")
    upstream_repo.republish()
    await checkout(engine, request(url, Revision(branch="main"), name="second", tags=True))
    tags = run_git("for-each-ref", "--format=%(refname)", "refs/tags/", cwd=layout(volume).cache_dir).stdout.split()
    assert "refs/tags/v9/x" in tags and "refs/tags/v9" not in tags, tags


async def test_a_tracking_ref_upstream_still_has_is_never_dropped(
    engine: Engine, upstream_repo: StandardRepo, smart_http: SmartHTTP, volume: Path
) -> None:
    """Only a ref upstream sent can make one in its way stale: a Workspace naming a
    branch upstream lacks (with a commit not cached) must not cost the cache the
    tracking ref of the branch upstream does have below that name."""
    url, src = smart_http.url("repo"), upstream_repo.src
    git(src, "checkout", "-q", "-b", "p/q", "main")
    tip = commit(src, {"pq.txt": "p/q"}, "on p/q")
    git(src, "checkout", "-q", "main")
    upstream_repo.republish()
    assert (await checkout(engine, request(url, Revision(branch="p/q"), name="first"))).commit == tip

    absent = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(GitError) as caught:
        await checkout(engine, request(url, Revision(branch="p", commit=absent), name="second"))
    assert caught.value.reason in (Reason.REF_NOT_FOUND, Reason.COMMIT_NOT_FOUND)
    refs = run_git("for-each-ref", "--format=%(refname) %(objectname)", cwd=layout(volume).cache_dir).stdout
    assert f"refs/remotes/origin/p/q {tip}" in refs.splitlines(), refs


# -- reuse and rebuild --------------------------------------------------------------


async def test_complete_worktree_is_reused_untouched(
    engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path
) -> None:
    url = ro_daemon.url("repo")
    req = request(url, Revision(tag="v1.0"), sub_path="services")
    first = await checkout(engine, req)
    valid = engine.validate(req)
    assert engine.is_complete(valid, first.commit)
    assert not engine.is_complete(valid, ro_repo.main)
    project = layout(volume)
    before = snapshot(project.project_dir, skip=lambda p: p.name == ".cache")
    metadata_before = snapshot(project.cache_dir / "worktrees")

    again = await checkout(engine, req)
    assert again.reused is True
    assert (again.commit, again.path, again.workdir) == (first.commit, first.path, first.workdir)
    assert snapshot(project.project_dir, skip=lambda p: p.name == ".cache") == before
    assert snapshot(project.cache_dir / "worktrees") == metadata_before


async def test_worktree_without_completion_record_is_rebuilt(
    engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path
) -> None:
    url = ro_daemon.url("repo")
    project = layout(volume)
    req = request(url, Revision(branch="main"))
    await checkout(engine, req)
    (project.worktree_dir(NAME) / "README.md").write_text("half-written\n")
    (project.worktree_dir(NAME) / "stray.txt").write_text("left by a crash\n")
    project.ready_record(NAME).unlink()  # the crash came before the record

    result = await checkout(engine, req)
    assert result.reused is False
    assert_materialized(volume, ro_repo, result, url, ro_repo.main)


async def test_half_created_directory_is_replaced(
    engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path
) -> None:
    url = ro_daemon.url("repo")
    project = layout(volume)
    await checkout(engine, request(url, name="other"))  # the cache exists
    half = project.worktree_dir(NAME)
    (half / "services").mkdir(parents=True)
    (half / "services" / "partial.py").write_text("x")

    result = await checkout(engine, request(url, Revision(tag="v1.0")))
    assert result.reused is False
    assert_materialized(volume, ro_repo, result, url, ro_repo.v1_0)


async def test_deleted_worktree_dir_with_record_is_rebuilt(
    engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path
) -> None:
    url = ro_daemon.url("repo")
    project = layout(volume)
    req = request(url, Revision(branch="main"))
    await checkout(engine, req)
    shutil.rmtree(project.worktree_dir(NAME))
    assert not engine.is_complete(engine.validate(req), ro_repo.main)

    result = await checkout(engine, req)
    assert result.reused is False
    assert_worktree_at(project, NAME, ro_repo.main)
    assert_cache_consistent(project, url)


async def test_changed_spec_rebuilds_at_new_commit(
    engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path
) -> None:
    url = ro_daemon.url("repo")
    await checkout(engine, request(url, Revision(tag="v1.0")))
    result = await checkout(engine, request(url, Revision(name=ro_repo.PULL_REF)))
    assert (result.commit, result.reused) == (ro_repo.pull_42, False)
    assert tree_files(worktree_path(volume, result)) == expected_files(ro_repo, ro_repo.pull_42)
    sparse = await checkout(engine, request(url, Revision(name=ro_repo.PULL_REF), sparse=("libs",)))
    assert sparse.reused is False  # same commit, different spec
    assert sorted(tree_files(worktree_path(volume, sparse))) == ["README.md", "libs/pr.py", "libs/util.py"]
    assert len(worktree_entries(layout(volume).cache_dir)) == 1
    assert_cache_consistent(layout(volume), url)


async def test_remove(engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path) -> None:
    url = ro_daemon.url("repo")
    project = layout(volume)
    await checkout(engine, request(url))
    await checkout(engine, request(url, name="keep"))
    assert await engine.remove(NS, PROJECT, NAME) is True
    assert not project.worktree_dir(NAME).exists()
    assert not project.ready_record(NAME).exists()
    assert [Path(e["worktree"]).name for e in worktree_entries(project.cache_dir)] == ["keep"]
    assert await engine.remove(NS, PROJECT, NAME) is False  # idempotent
    assert_worktree_at(project, "keep", ro_repo.main)
    assert_cache_consistent(project, url)


# -- broken caches --------------------------------------------------------------------


def _quarantined(volume: Path) -> list[Path]:
    return sorted(layout(volume).project_dir.glob(".quarantine-*"))


async def test_cache_without_objects_is_quarantined_and_recreated(
    engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path
) -> None:
    url = ro_daemon.url("repo")
    project = layout(volume)
    await checkout(engine, request(url, Revision(branch="main")))
    shutil.rmtree(project.cache_dir / "objects")

    # Also the existing workspace: its worktree belonged to the broken cache.
    result = await checkout(engine, request(url, Revision(branch="main")))
    assert result.cache_repaired == "not a git repository"
    assert (result.cache_hit, result.fetched, result.reused) == (False, True, False)
    assert len(_quarantined(volume)) == 1
    assert_worktree_at(project, NAME, ro_repo.main)
    assert_cache_consistent(project, url)


async def test_ref_to_missing_object_is_found_by_the_deep_check(
    engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path
) -> None:
    url = ro_daemon.url("repo")
    project = layout(volume)
    await checkout(engine, request(url, Revision(branch="main")))
    (project.cache_dir / "refs/remotes/origin/main").write_text("1" * 40 + "\n")

    restarted = Engine(volume, engine.settings)  # the deep check runs once per process and cache
    result = await checkout(restarted, request(url, Revision(tag="v1.0"), name="after"))
    assert result.cache_repaired is not None and result.cache_repaired.startswith("fsck failed")
    assert len(_quarantined(volume)) == 1
    assert_worktree_at(project, "after", ro_repo.v1_0)
    # The workspace made from the quarantined cache is rebuilt on its next checkout.
    again = await checkout(restarted, request(url, Revision(branch="main")))
    assert again.reused is False
    assert_worktree_at(project, NAME, ro_repo.main)
    assert_cache_consistent(project, url)


async def test_stale_lock_files_are_removed(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path
) -> None:
    url = git_daemon.url("repo")
    project = layout(volume)
    await checkout(engine, request(url, Revision(branch="main")))
    cache = project.cache_dir
    for lock in (
        "index.lock",
        "packed-refs.lock",
        "config.lock",
        "HEAD.lock",
        "refs/remotes/origin/main.lock",
        f"worktrees/{NAME}/index.lock",
    ):
        (cache / lock).write_text("left by a killed git\n")

    # The branch moved upstream: the fetch must update the ref the lock covered.
    tip = commit(upstream_repo.src, {"NEW.md": "new\n"}, "new tip")
    upstream_repo.republish()
    result = await checkout(engine, request(url, Revision(branch="main"), name="second"))
    assert (result.commit, result.fetched, result.cache_repaired) == (tip, True, None)
    assert run_git("rev-parse", "refs/remotes/origin/main", cwd=cache).stdout.strip() == tip
    assert_worktree_at(project, "second", tip)
    assert_cache_consistent(project, url)


async def test_interrupted_fetch_marker_triggers_check_and_is_cleared(
    engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path
) -> None:
    url = ro_daemon.url("repo")
    project = layout(volume)
    await checkout(engine, request(url, Revision(branch="main")))
    cache = project.cache_dir
    (cache / OPERATION_MARKER).touch()
    (cache / "objects/pack/tmp_pack_XyZ123").write_bytes(b"PACK\x00truncated")

    result = await checkout(engine, request(url, Revision(commit=ro_repo.main), name="second"))
    assert (result.cache_hit, result.cache_repaired) == (True, None)  # checked, found sound, kept
    assert not (cache / "objects/pack/tmp_pack_XyZ123").exists()
    assert_cache_consistent(project, url)

    # Marker plus real damage: quarantined instead.
    (cache / OPERATION_MARKER).touch()
    for obj in [*(cache / "objects").glob("??/*"), *(cache / "objects/pack").glob("*.pack")]:
        obj.chmod(0o644)
        obj.write_bytes(b"garbage")
    result = await checkout(engine, request(url, Revision(commit=ro_repo.main), name="third"))
    assert result.cache_repaired is not None and "interrupted fetch" in result.cache_repaired
    assert len(_quarantined(volume)) == 1
    assert_worktree_at(project, "third", ro_repo.main)
    assert_cache_consistent(project, url)


async def test_cache_of_another_repository_is_refused_untouched(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path
) -> None:
    await checkout(engine, request(git_daemon.url("repo")))
    served = git_daemon.base
    publish(upstream_repo.src, served / "fork.git")
    before = snapshot(volume)
    with pytest.raises(GitError) as caught:
        await checkout(engine, request(git_daemon.url("fork"), name="other"))
    assert caught.value.reason is Reason.REPOSITORY_MISMATCH
    assert caught.value.retryable is False
    assert snapshot(volume) == before


# -- failures ------------------------------------------------------------------------


async def test_missing_branch_is_permanent(engine: Engine, ro_daemon: GitDaemon, volume: Path) -> None:
    with pytest.raises(GitError) as caught:
        await checkout(engine, request(ro_daemon.url("repo"), Revision(branch="does-not-exist")))
    assert caught.value.reason is Reason.REF_NOT_FOUND
    assert caught.value.retryable is False
    assert sorted(p.name for p in layout(volume).project_dir.iterdir()) == []  # staging cleaned up


async def test_missing_tag_and_ref_name(engine: Engine, ro_daemon: GitDaemon) -> None:
    for revision in (Revision(tag="v9"), Revision(name="refs/pull/9/head")):
        with pytest.raises(GitError) as caught:
            await checkout(engine, request(ro_daemon.url("repo"), revision))
        assert caught.value.reason is Reason.REF_NOT_FOUND


@pytest.mark.parametrize("on_branch", [False, True])
async def test_missing_commit(
    engine: Engine, upstream_repo: StandardRepo, smart_http: SmartHTTP, on_branch: bool
) -> None:
    url = smart_http.url("repo")
    await checkout(engine, request(url, name="first"))  # an existing cache, too
    missing = "0123456789abcdef" * 2 + "01234567"
    with pytest.raises(GitError) as caught:
        await checkout(engine, request(url, Revision(branch="main" if on_branch else None, commit=missing)))
    assert caught.value.reason is Reason.COMMIT_NOT_FOUND
    assert caught.value.retryable is False


# (what the id names, the ref given with it); each on a new cache and on an existing one.
NOT_A_COMMIT = [
    ("tag", {}),
    ("tag", {"tag": "v1.1"}),
    ("tag", {"branch": "main"}),
    ("tree", {}),
    ("tree", {"branch": "main"}),
]


@pytest.mark.parametrize("cache_only", [False, True], ids=["worktree", "cache-only"])
@pytest.mark.parametrize("existing_cache", [False, True], ids=["new-cache", "existing-cache"])
@pytest.mark.parametrize(("kind", "ref"), NOT_A_COMMIT, ids=[f"{k}-{'-'.join(r) or 'alone'}" for k, r in NOT_A_COMMIT])
async def test_an_id_that_is_no_commit_is_refused(
    engine: Engine,
    upstream_repo: StandardRepo,
    smart_http: SmartHTTP,
    volume: Path,
    kind: str,
    ref: dict[str, str],
    existing_cache: bool,
    cache_only: bool,
) -> None:
    """An annotated tag object's id peels to a commit, but is none: given as ref.commit it
    was reported, recorded and pinned as the commit while the peeled one was checked out."""
    url = smart_http.url("repo")
    if existing_cache:
        await checkout(engine, request(url, name="first"))
    tree = run_git("rev-parse", "main^{tree}", cwd=upstream_repo.bare).stdout.strip()
    sha = upstream_repo.v1_1_tag if kind == "tag" else tree
    req = engine.validate(request(url, Revision(commit=sha, **ref), cache_only=cache_only))
    with pytest.raises(GitError) as caught:
        await (engine.pin(req) if cache_only else engine.checkout(req))
    assert caught.value.reason is Reason.COMMIT_NOT_FOUND and not caught.value.retryable
    assert f"{sha} names a {kind} object, not a commit" in caught.value.message, caught.value.message
    project = layout(volume)
    assert not project.ready_record(NAME).exists() and not project.worktree_dir(NAME).exists()
    if project.cache_dir.exists():  # no pin, no ref kept for the object (the tag's own ref aside)
        refs = run_git("for-each-ref", "--format=%(refname) %(objectname)", cwd=project.cache_dir).stdout
        assert "refs/workspaces/" not in refs and "refs/cache/commits/" not in refs, refs


async def test_failed_update_keeps_the_previous_worktree(
    engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path
) -> None:
    url = ro_daemon.url("repo")
    req = request(url, Revision(tag="v1.0"))
    await checkout(engine, req)
    before = snapshot(layout(volume).worktree_dir(NAME))
    for revision in (Revision(commit="f" * 40), Revision(branch="gone")):
        with pytest.raises(GitError):
            await checkout(engine, request(url, revision))
    # Resolving comes first; the workspace's current tree is only replaced once the new commit is there.
    assert engine.is_complete(engine.validate(req), ro_repo.v1_0)
    assert snapshot(layout(volume).worktree_dir(NAME)) == before


async def test_missing_repository(engine: Engine, smart_http: SmartHTTP, git_daemon: GitDaemon) -> None:
    for url in (smart_http.url("nope"), git_daemon.url("nope")):
        with pytest.raises(GitError) as caught:
            await checkout(engine, request(url, project="nope"))
        assert caught.value.reason is Reason.REPOSITORY_NOT_FOUND, url


@pytest.mark.parametrize("scheme", ["git", "http", "ssh"])
async def test_unreachable_upstream_is_retryable(engine: Engine, volume: Path, scheme: str) -> None:
    port = closed_port()
    url = {
        "git": f"git://127.0.0.1:{port}/repo.git",
        "http": f"http://127.0.0.1:{port}/repo.git",
        "ssh": f"ssh://git@127.0.0.1:{port}/repo.git",
    }[scheme]
    with pytest.raises(GitError) as caught:
        await checkout(engine, request(url))
    assert caught.value.reason is Reason.UNREACHABLE
    assert caught.value.retryable is True
    assert not layout(volume).cache_dir.exists()


@pytest.mark.parametrize("cache_only", [False, True], ids=["worktree", "cache-only"])
async def test_sub_path_missing_at_that_commit(
    engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path, cache_only: bool
) -> None:
    """Both modes fail the same way: a cache-only Workspace has no worktree to look in,
    so its subPath is looked up in the commit's tree, and nothing is pinned."""
    url = ro_daemon.url("repo")
    cases = [
        (Revision(commit=ro_repo.old), "services/api"),  # services/api only exists from the second commit on
        (Revision(), "README.md"),  # a file is not a directory either
        (Revision(), "services/api/app.py"),
        (Revision(), "nope/deeper"),
    ]
    for revision, sub_path in cases:
        with pytest.raises(GitError) as caught:
            await materialize(engine, request(url, revision, sub_path=sub_path, cache_only=cache_only))
        assert caught.value.reason is Reason.SUBPATH_NOT_FOUND, sub_path
        assert caught.value.retryable is False
        assert not layout(volume).ready_record(NAME).exists()
        assert pins.read(layout(volume).cache_dir, NAME) is None
    pinned = await materialize(engine, request(url, sub_path="services/api", cache_only=cache_only))
    assert pinned.commit == ro_repo.main


@pytest.mark.parametrize("cache_only", [False, True], ids=["worktree", "cache-only"])
async def test_sub_path_at_a_submodule_not_checked_out(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path, cache_only: bool
) -> None:
    """Without spec.submodules a submodule is an empty directory in a checkout: a subPath
    naming it is fine, one below it is not there, in either mode."""
    served_repo(git_daemon.base, "super", {"top.txt": "top\n"}, {"vendor/lib": upstream_repo.main})
    url = git_daemon.url("super")
    done = await materialize(engine, request(url, name="at", sub_path="vendor/lib", cache_only=cache_only))
    assert (done.workdir is None) == cache_only
    with pytest.raises(GitError) as caught:
        await materialize(engine, request(url, name="below", sub_path="vendor/lib/services", cache_only=cache_only))
    assert caught.value.reason is Reason.SUBPATH_NOT_FOUND


async def test_hung_server_times_out_promptly(
    volume: Path, scratch: Path, upstream_repo: StandardRepo, smart_http: SmartHTTP
) -> None:
    engine = Engine(volume, make_settings(scratch, timeout_seconds=3.0))
    smart_http.fault = "hang"
    tmp_path = volume.parent
    before = snapshot(tmp_path, skip=lambda p: p == volume)
    for revision in (Revision(branch="main"), Revision(commit=upstream_repo.main)):  # ls-remote, then fetch
        started = time.monotonic()
        with pytest.raises(GitError) as caught:
            await checkout(engine, request(smart_http.url("repo"), revision))
        elapsed = time.monotonic() - started
        assert caught.value.reason in (Reason.TIMEOUT, Reason.UNREACHABLE)
        assert caught.value.retryable is True
        assert elapsed < 15, f"took {elapsed:.1f}s"
        await wait_no_processes(volume, deadline_s=2)  # the whole process group was killed
        assert sorted(p.name for p in layout(volume).project_dir.iterdir()) == []  # no staging left
    assert snapshot(tmp_path, skip=lambda p: p == volume) == before
    assert list(scratch.iterdir()) == []


async def test_server_errors_are_retryable(engine: Engine, smart_http: SmartHTTP) -> None:
    for fault in ("500", "drop"):
        smart_http.fault = fault
        with pytest.raises(GitError) as caught:
            await checkout(engine, request(smart_http.url("repo")))
        assert caught.value.reason is Reason.UNREACHABLE, (fault, caught.value)
        assert caught.value.retryable


# -- credentials --------------------------------------------------------------------


def _key_lines(key: str) -> list[str]:
    return [line for line in key.splitlines() if line and not line.startswith("-----")]


def _assert_secret_free(texts: list[str], roots: list[Path], secrets: list[str]) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"secret leaked into: {text[:200]!r}"
    for root in roots:
        for item in [root, *root.rglob("*")] if root.is_dir() else [root]:
            if item.is_file() and not item.is_symlink():
                data = item.read_bytes()
                for secret in secrets:
                    assert secret.encode() not in data, f"secret leaked into file {item}"


async def test_https_basic_auth(
    engine: Engine,
    upstream_repo: StandardRepo,
    smart_http_auth: SmartHTTP,
    volume: Path,
    scratch: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="workspace_operator")
    password = smart_http_auth.password
    assert password
    url = smart_http_auth.url("repo")
    good = Credentials(username="ci-bot", password=password)
    errors: list[str] = []

    result = await checkout(engine, request(url, Revision(branch="main"), credentials=good))
    assert result.commit == upstream_repo.main
    assert tree_files(worktree_path(volume, result)) == expected_files(upstream_repo, upstream_repo.main)
    assert {r.user for r in smart_http_auth.requests() if r.status == 200} == {"ci-bot"}
    # The token is needed again for a fetch into the existing cache.
    pinned = await checkout(engine, request(url, Revision(commit=upstream_repo.dangling), name="two", credentials=good))
    assert (pinned.commit, pinned.fetched) == (upstream_repo.dangling, True)

    for creds, reason in (
        (Credentials(username="ci-bot", password="wrong-" + password[:8]), Reason.AUTH_FAILED),
        (None, Reason.AUTH_FAILED),
    ):
        with pytest.raises(GitError) as caught:
            await checkout(engine, request(url, project="other", credentials=creds))
        assert caught.value.reason is reason
        assert caught.value.retryable is False
        errors.append(str(caught.value))
    # The right secret against a missing repository: the error text is published in status.
    with pytest.raises(GitError) as caught:
        await checkout(engine, request(smart_http_auth.url("nope"), project="nope", credentials=good))
    assert caught.value.reason is Reason.REPOSITORY_NOT_FOUND
    errors.append(str(caught.value))

    assert caplog.records
    _assert_secret_free([r.getMessage() for r in caplog.records] + errors, [volume], [password])
    assert list(scratch.iterdir()) == []  # askpass directory removed


async def test_partial_clone_fetches_blobs_with_the_credentials(
    volume: Path,
    scratch: Path,
    upstream_repo: StandardRepo,
    smart_http_auth: SmartHTTP,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """blob:none caches fetch blobs during checkout: that step needs the credentials too."""
    caplog.set_level(logging.DEBUG, logger="workspace_operator")
    password = smart_http_auth.password
    assert password
    engine = Engine(volume, make_settings(scratch, partial_clone=True))
    url = smart_http_auth.url("repo")
    creds = Credentials(username="ci-bot", password=password)
    sparse = await checkout(
        engine, request(url, Revision(branch=upstream_repo.FEATURE_BRANCH), sparse=("libs",), credentials=creds)
    )
    assert sorted(tree_files(worktree_path(volume, sparse))) == ["README.md", "libs/util.py"]
    cache = layout(volume).cache_dir
    assert run_git("config", "--get", "remote.origin.partialclonefilter", cwd=cache).stdout.strip() == "blob:none"
    missing = run_git("rev-list", "--objects", "--missing=print", "--all", cwd=cache).stdout
    assert any(line.startswith("?") for line in missing.splitlines()), "not a partial clone"

    restarted = Engine(volume, engine.settings)  # deep check of a partial clone, then blobs on demand
    full = await checkout(
        restarted, request(url, Revision(commit=upstream_repo.feature), name="full", credentials=creds)
    )
    assert (full.cache_hit, full.fetched) == (True, False)
    assert tree_files(worktree_path(volume, full)) == expected_files(upstream_repo, upstream_repo.feature)
    assert_worktree_at(layout(volume), "full", upstream_repo.feature)

    # "Is it cached?" is answered locally: a missing commit is reported and fetched as such
    # (and kept by a ref), never lazily pulled in by the query itself.
    dangling = await checkout(
        restarted, request(url, Revision(commit=upstream_repo.dangling), name="dangling", credentials=creds)
    )
    assert (dangling.cache_hit, dangling.fetched) == (False, True)
    assert (
        run_git("rev-parse", f"refs/cache/commits/{upstream_repo.dangling}", cwd=cache).stdout.strip()
        == upstream_repo.dangling
    )
    # Blobs already there: another workspace at that commit needs no network at all.
    requests = len(smart_http_auth.requests())
    again = await checkout(
        restarted, request(url, Revision(commit=upstream_repo.feature), name="again", credentials=creds)
    )
    assert (again.cache_hit, again.fetched) == (True, False)
    assert len(smart_http_auth.requests()) == requests
    assert_cache_consistent(layout(volume), url)
    _assert_secret_free([r.getMessage() for r in caplog.records], [volume], [password])
    assert list(scratch.iterdir()) == []


async def test_ssh_key_and_known_hosts(
    engine: Engine,
    upstream_repo: StandardRepo,
    ssh_server: SSHServer,
    volume: Path,
    scratch: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="workspace_operator")
    key = ssh_server.client_key_text
    url = ssh_server.url("repo")
    good = Credentials(ssh_private_key=key, known_hosts=ssh_server.known_hosts_text)
    errors: list[str] = []

    result = await checkout(engine, request(url, Revision(tag="v1.1"), credentials=good))
    assert result.commit == upstream_repo.v1_1
    assert tree_files(worktree_path(volume, result)) == expected_files(upstream_repo, upstream_repo.v1_1)
    assert ssh_server.connections() >= 1
    pinned = await checkout(engine, request(url, Revision(commit=upstream_repo.dangling), name="two", credentials=good))
    assert pinned.commit == upstream_repo.dangling

    # Another host key for the same [host]:port, i.e. a man in the middle; and no entry at all.
    impostor = tmp_path / "impostor"
    subprocess.run(  # noqa: ASYNC221 - test setup, nothing runs concurrently
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)],
        check=True,
        capture_output=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    impostor_pub = " ".join(impostor.with_suffix(".pub").read_text().split()[:2])
    for known_hosts in (f"[127.0.0.1]:{ssh_server.port} {impostor_pub}\n", ""):
        with pytest.raises(GitError) as caught:
            await checkout(
                engine,
                request(url, project="other", credentials=Credentials(ssh_private_key=key, known_hosts=known_hosts)),
            )
        assert caught.value.reason is Reason.HOST_KEY_MISMATCH, caught.value
        assert caught.value.retryable is False
        errors.append(str(caught.value))
    # Right host, wrong key.
    with pytest.raises(GitError) as caught:
        await checkout(
            engine,
            request(
                url,
                project="other",
                credentials=Credentials(ssh_private_key=impostor.read_text(), known_hosts=ssh_server.known_hosts_text),
            ),
        )
    assert caught.value.reason is Reason.AUTH_FAILED
    errors.append(str(caught.value))

    assert caplog.records
    _assert_secret_free([r.getMessage() for r in caplog.records] + errors, [volume], _key_lines(key))
    assert list(scratch.iterdir()) == []  # key and known_hosts removed
