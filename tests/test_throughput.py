"""Throughput of the engine the way the operator drives it: a project's queue under one
hold, worktree files written in parallel, coalesced upstream answers, cheap restarts and
busy-cache upkeep. Real git against a counting loopback git daemon; no control plane.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from engine_fixtures import (
    NS,
    PROJECT,
    assert_cache_consistent,
    assert_worktree_at,
    checkout,
    engine,
    layout,
    no_leftover_processes,
    request,
    run_git,
    scratch,
    standard_repo_template,
    upstream_repo,
    volume,
)
from test_batching import FakeLocks
from upstreams import GitDaemon, StandardRepo, commit, served_repo
from workspace_operator.batching import ProjectQueues
from workspace_operator.checkouts import Checkouts
from workspace_operator.git import CheckoutResult, Engine, GitError, Prepared, Reason, Revision
from workspace_operator.git.housekeeping import MAX_PACKS, Housekeeping
from workspace_operator.git.markers import HOLD_MARKER

__all__ = ["engine", "no_leftover_processes", "scratch", "standard_repo_template", "upstream_repo", "volume"]
pytestmark = pytest.mark.usefixtures("no_leftover_processes")


async def burst(
    engine: Engine, url: str, revision: Revision, names: list[str], queues: ProjectQueues | None = None
) -> list[CheckoutResult]:
    """Materialize `names` as the operator does: exclusive phase queued, files in parallel."""
    queues = queues or ProjectQueues(FakeLocks())  # type: ignore[arg-type]
    checkouts = Checkouts(4)

    async def one(name: str) -> CheckoutResult:
        received = time.monotonic()
        valid = engine.validate(request(url, revision, name=name))

        async def exclusive() -> Prepared:
            return await engine.prepare(valid, not_before=received, hold=queues.hold_id(NS, PROJECT))

        prepared, _waited = await queues.run(NS, PROJECT, exclusive, wait_seconds=60)
        async with checkouts.slot(NS):
            return await engine.populate(prepared)

    return list(await asyncio.gather(*(one(name) for name in names)))


async def test_cold_burst_of_one_branch_asks_upstream_at_most_twice(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path
) -> None:
    url = git_daemon.url("repo")
    names = [f"w{i}" for i in range(20)]
    locks = FakeLocks()
    results = await burst(engine, url, Revision(branch="main"), names, ProjectQueues(locks))  # type: ignore[arg-type]
    assert {r.commit for r in results} == {upstream_repo.main}
    assert git_daemon.count() <= 2, git_daemon.requests()
    assert locks.holds == 1
    for name in names[::7]:
        assert_worktree_at(layout(volume), name, upstream_repo.main)
    assert_cache_consistent(layout(volume), url)


async def test_warm_burst_after_a_push_costs_one_ls_remote_and_one_fetch(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path
) -> None:
    url = git_daemon.url("repo")
    await checkout(engine, request(url, Revision(branch="main"), name="first"))
    tip = commit(upstream_repo.src, {"NEW.md": "pushed\n"}, "push")
    upstream_repo.republish()
    before = git_daemon.count()
    results = await burst(engine, url, Revision(branch="main"), [f"w{i}" for i in range(20)])
    assert {r.commit for r in results} == {tip}
    assert git_daemon.count() - before <= 2, git_daemon.requests()
    assert sum(r.fetched for r in results) == 1


async def test_an_answer_older_than_the_request_never_serves_it(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon
) -> None:
    url = git_daemon.url("repo")
    await burst(engine, url, Revision(branch="main"), ["a", "b"])
    tip = commit(upstream_repo.src, {"LATER.md": "later\n"}, "later push")
    upstream_repo.republish()
    before = git_daemon.count()
    (later,) = await burst(engine, url, Revision(branch="main"), ["c"])
    assert later.commit == tip  # asked again: the earlier answer predates this request
    assert git_daemon.count() > before


async def test_parallel_populates_leave_every_worktree_complete(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = git_daemon.url("repo")
    await checkout(engine, request(url, Revision(tag="v1.0"), name="seed"))
    names = [f"p{i}" for i in range(8)]
    caplog.set_level(logging.DEBUG, logger="workspace_operator")
    results = await burst(engine, url, Revision(tag="v1.0"), names)
    # One hold of the lock: the cache is inspected (its config read) once, not once per Workspace.
    assert caplog.text.count("git step read-config ok") == 1
    assert {r.commit for r in results} == {upstream_repo.v1_0}
    for name in names:
        assert_worktree_at(layout(volume), name, upstream_repo.v1_0)
        assert engine.is_complete(engine.validate(request(url, Revision(tag="v1.0"), name=name)), upstream_repo.v1_0)
    assert_cache_consistent(layout(volume), url)


async def test_restart_checks_in_depth_only_on_evidence(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = git_daemon.url("repo")
    await checkout(engine, request(url, Revision(branch="main"), name="before"))
    cache = layout(volume).cache_dir
    assert not (cache / HOLD_MARKER).exists()  # a clean end removes it

    caplog.set_level(logging.DEBUG, logger="workspace_operator")
    restarted = Engine(volume, engine.settings)
    await checkout(restarted, request(url, Revision(commit=upstream_repo.main), name="clean"))
    assert "git step fsck" not in caplog.text and "verified" not in caplog.text

    (cache / HOLD_MARKER).touch()  # as a holder killed mid-work leaves it
    caplog.clear()
    restarted = Engine(volume, engine.settings)
    await checkout(restarted, request(url, Revision(commit=upstream_repo.main), name="unclean"))
    assert "verified (unclean stop of the previous holder)" in caplog.text
    assert not (cache / HOLD_MARKER).exists()


async def test_busy_cache_upkeep_rolls_up_packs_and_loose_objects(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path
) -> None:
    url = git_daemon.url("repo")
    cache = layout(volume).cache_dir
    await checkout(engine, request(url, Revision(branch="main"), name="w0"))
    for i in range(MAX_PACKS + 2):
        commit(upstream_repo.src, {f"f{i}.txt": f"{i}\n" * 50}, f"push {i}")
        upstream_repo.republish()
        # unpackLimit=1: every fetch keeps its own pack, as big pushes do.
        run_git(
            "-c", "fetch.unpackLimit=1", "fetch", "-q", "origin", "+refs/heads/main:refs/remotes/origin/main", cwd=cache
        )
    housekeeping = Housekeeping(engine.runner_for(None), volume, cache)
    assert housekeeping.pack_count() > MAX_PACKS
    (cache / "workspace-operator.last-fetch").touch()
    done = []
    for _ in range(4):
        step = await engine.maintain(NS, PROJECT, budget_seconds=30)
        if step is None:
            break
        done.append(step)
    assert done[0] == "repack" and "commit-graph" in done
    assert housekeeping.pack_count() <= MAX_PACKS and housekeeping.loose_object_count() == 0
    assert housekeeping.due() is None
    assert_cache_consistent(layout(volume), url)
    result = await checkout(engine, request(url, Revision(branch="main"), name="after"))
    assert_worktree_at(layout(volume), "after", result.commit)


async def test_a_hold_never_serves_another_repository_from_the_cache(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path
) -> None:
    """One hold serves a project's queue, whatever repository each Workspace names. The
    check made for the first (origin, owner) must not let the second, naming another
    repository, be made Ready from the first one's cache."""
    served_repo(git_daemon.base, "other", {"other.txt": "other\n"})
    first = engine.validate(request(git_daemon.url("repo"), Revision(branch="main"), name="first"))
    second = engine.validate(request(git_daemon.url("other"), Revision(branch="main"), name="second"))

    await engine.populate(await engine.prepare(first, hold="one-hold"))
    with pytest.raises(GitError) as caught:
        await engine.prepare(second, hold="one-hold")

    assert caught.value.reason is Reason.REPOSITORY_MISMATCH, caught.value
    assert not (layout(volume).project_dir / "second").exists()
