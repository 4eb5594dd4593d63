"""materialize(): spec → lock → cache → worktree → status, against small fakes of the
runtime (API calls, Leases on a fake clock) and a real engine on local file:// upstreams."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from runtime_fakes import FakeRuntime, LocalUpstream, make_runtime
from testsupport.gitenv import git
from workspace_operator import materialize as op
from workspace_operator.git import GitError, Prepared, Reason, ValidRequest
from workspace_operator.status import Phase

NS, NAME, PROJECT = "team-a", "ws-1", "proj"


def spec(upstream: LocalUpstream, **extra: Any) -> dict[str, Any]:
    return {"project": PROJECT, "repository": upstream.url, **extra}


def ready_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


async def run(
    fr: FakeRuntime,
    spec: dict[str, Any],
    *,
    current: dict[str, Any] | None = None,
    attempt: int = 0,
    generation: int = 1,
    name: str = NAME,
) -> Any:
    return await op.materialize(
        fr.rt, namespace=NS, name=name, generation=generation, spec=spec, current=current or {}, attempt=attempt
    )


async def test_ready_at_the_branch_tip_under_the_lease(
    fake_runtime: FakeRuntime, local_upstream: LocalUpstream
) -> None:
    done = await run(fake_runtime, spec(local_upstream))

    assert done is not None and done.result.commit == local_upstream.head and not done.repaired
    worktree = fake_runtime.root / NS / PROJECT / NAME
    assert (worktree / "app" / "main.py").read_text() == "print('v2')\n"
    assert git(worktree, "rev-parse", "HEAD") == local_upstream.head
    assert fake_runtime.locks.acquired == [(NS, PROJECT)] and fake_runtime.engine.checkouts == 1
    # Ready well within WORKSPACE_PROGRESS_DELAY_SECONDS: no Materializing write before it.
    assert fake_runtime.kube.phases() == [Phase.READY]
    status = fake_runtime.kube.last_status()
    assert status["commit"] == local_upstream.head and status["path"] == f"{NS}/{PROJECT}/{NAME}"
    assert status["observedGeneration"] == 1 and status["expiresAt"] is None  # default TTL 0 in make_runtime
    assert ready_condition(status)["status"] == "True" and ready_condition(status)["reason"] == "Materialized"


def slow_prepare(fr: FakeRuntime, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Every exclusive step takes `seconds` longer (real time): a Workspace that has to wait."""
    prepare = fr.engine.prepare

    async def slow(valid: ValidRequest, **kwargs: Any) -> Prepared:
        await asyncio.sleep(seconds)
        return await prepare(valid, **kwargs)

    monkeypatch.setattr(fr.engine, "prepare", slow)


async def test_a_workspace_still_working_after_the_delay_shows_materializing_first(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    local_upstream: LocalUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fr = make_runtime(tmp_path, file_roots=(tmp_path_factory.getbasetemp(),), progress_delay_seconds=0.05)
    slow_prepare(fr, monkeypatch, 0.5)
    await run(fr, spec(local_upstream))

    assert fr.kube.phases() == [Phase.MATERIALIZING, Phase.READY]
    assert fr.kube.patches[0][2]["message"] == "waiting for the project lock"


async def test_without_a_delay_materializing_is_written_before_the_work(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, local_upstream: LocalUpstream
) -> None:
    fr = make_runtime(tmp_path, file_roots=(tmp_path_factory.getbasetemp(),), progress_delay_seconds=0)
    await run(fr, spec(local_upstream))

    assert fr.kube.phases() == [Phase.MATERIALIZING, Phase.READY]


@pytest.mark.parametrize("failing", [False, True], ids=["ready", "failed"])
async def test_a_late_materializing_write_never_lands_after_the_outcome(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    local_upstream: LocalUpstream,
    monkeypatch: pytest.MonkeyPatch,
    failing: bool,
) -> None:
    """The Materializing write starts while the work goes on and is still in flight (a slow API
    server) when the outcome is known: the outcome is written after it, never before."""
    fr = make_runtime(tmp_path, file_roots=(tmp_path_factory.getbasetemp(),), progress_delay_seconds=0.01)
    slow_prepare(fr, monkeypatch, 0.1)
    patch_status = fr.kube.patch_status

    async def slow_api(namespace: str, name: str, status: dict[str, Any]) -> None:
        if status["phase"] == Phase.MATERIALIZING:
            await asyncio.sleep(0.5)  # lands (is recorded) long after the outcome is known
        await patch_status(namespace, name, status)

    monkeypatch.setattr(fr.kube, "patch_status", slow_api)
    ref = {"branch": "no-such-branch"} if failing else {"branch": "main"}
    if failing:
        with pytest.raises(op.Fatal):
            await run(fr, spec(local_upstream, ref=ref))
    else:
        await run(fr, spec(local_upstream, ref=ref))

    assert fr.kube.phases() == [Phase.MATERIALIZING, Phase.FAILED if failing else Phase.READY]


async def test_pinned_commit_and_subpath(fake_runtime: FakeRuntime, local_upstream: LocalUpstream) -> None:
    done = await run(fake_runtime, spec(local_upstream, ref={"commit": local_upstream.first}, subPath="app"))

    assert done is not None and done.result.commit == local_upstream.first
    status = fake_runtime.kube.last_status()
    assert status["workdir"] == f"{NS}/{PROJECT}/{NAME}/app"
    assert (fake_runtime.root / status["workdir"] / "main.py").read_text() == "print('v1')\n"


async def test_lock_wait_is_reported_from_the_lease_clock(
    fake_runtime: FakeRuntime, local_upstream: LocalUpstream
) -> None:
    fake_runtime.locks.busy[(NS, PROJECT)] = 12.5  # another replica holds the project that long
    await run(fake_runtime, spec(local_upstream))

    assert fake_runtime.kube.last_status()["timings"]["lockWaitSeconds"] == 12.5


async def test_resume_of_a_ready_workspace_touches_nothing(
    fake_runtime: FakeRuntime, local_upstream: LocalUpstream
) -> None:
    await run(fake_runtime, spec(local_upstream))
    ready = fake_runtime.kube.last_status()
    fake_runtime.kube.patches.clear()
    fake_runtime.locks.acquired.clear()

    assert await run(fake_runtime, spec(local_upstream), current=ready) is None
    assert fake_runtime.kube.patches == [] and fake_runtime.locks.acquired == []
    assert fake_runtime.engine.checkouts == 1


async def test_resume_with_a_lost_worktree_materializes_again(
    fake_runtime: FakeRuntime, local_upstream: LocalUpstream
) -> None:
    await run(fake_runtime, spec(local_upstream))
    ready = fake_runtime.kube.last_status()
    (fake_runtime.root / NS / PROJECT / ".ready" / NAME).unlink()  # no completion record: not trusted

    done = await run(fake_runtime, spec(local_upstream), current=ready)
    assert done is not None and done.result.commit == local_upstream.head
    assert fake_runtime.engine.checkouts == 2


@pytest.mark.parametrize(
    ("patch", "reason", "fragment"),
    [
        ({"project": "../etc"}, "InvalidSpec", "project"),
        ({"project": "UPPER"}, "InvalidSpec", "project"),
        ({"subPath": "../../outside"}, "InvalidSpec", "subPath"),
        ({"sparse": "not-a-list"}, "InvalidSpec", "sparse"),
        # Patterns git's cone mode refuses: failed at once, never retried, in either mode.
        ({"sparse": ["lib*"]}, "InvalidSpec", "is a pattern, not a directory"),
        ({"sparse": ["app", "!app"]}, "InvalidSpec", "is a pattern, not a directory"),
        ({"sparse": ["lib*"], "mode": "CacheOnly"}, "InvalidSpec", "is a pattern, not a directory"),
        ({"sparse": ["app/[ab]"], "mode": "CacheOnly"}, "InvalidSpec", "is a pattern, not a directory"),
        ({"sparse": ["!app"], "mode": "CacheOnly"}, "InvalidSpec", "is a pattern, not a directory"),
        ({"ref": {"branch": "main", "tag": "v1"}}, "InvalidSpec", ""),
        ({"repository": "https://example.invalid/repo.git"}, "TransportNotAllowed", "https"),
        ({"repository": "ext::sh -c touch% /tmp/pwned"}, "TransportNotAllowed", "transport"),
    ],
)
async def test_invalid_spec_fails_permanently_before_any_lock_or_disk_write(
    fake_runtime: FakeRuntime, local_upstream: LocalUpstream, patch: dict[str, Any], reason: str, fragment: str
) -> None:
    with pytest.raises(op.Fatal) as caught:
        await run(fake_runtime, {**spec(local_upstream), **patch})

    assert caught.value.reason == reason and fragment in caught.value.message
    assert fake_runtime.locks.acquired == [] and list(fake_runtime.root.iterdir()) == []
    status = fake_runtime.kube.last_status()
    assert status["phase"] == Phase.FAILED and ready_condition(status)["reason"] == reason


async def test_the_quota_bounds_worktrees_and_leaves_cache_only_workspaces_alone(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, local_upstream: LocalUpstream
) -> None:
    """WORKSPACE_MAX_WORKSPACES_PER_NAMESPACE bounds the worktrees on the volume: a CacheOnly
    Workspace writes none, so a full namespace does not hold it back, and it takes no place."""
    fr = make_runtime(tmp_path, (tmp_path_factory.getbasetemp(),), max_workspaces_per_namespace=1)
    await run(fr, spec(local_upstream), name="tree")  # the namespace is full now

    done = await run(fr, spec(local_upstream, mode="CacheOnly"), name="pinned")
    assert done is not None and done.result.path is None
    assert fr.kube.last_status()["phase"] == Phase.READY
    with pytest.raises(op.Retry) as caught:  # a second worktree still waits for a place
        await run(fr, spec(local_upstream), name="tree-2")
    assert caught.value.reason == "QuotaExceeded" and "1 materialized worktrees" in caught.value.message
    assert not (fr.root / NS / PROJECT / "tree-2").exists()


@pytest.mark.parametrize(("attempt", "delay"), [(0, 2.0), (2, 8.0), (20, 300.0)])
async def test_lock_timeout_is_retried_with_capped_exponential_backoff(
    fake_runtime: FakeRuntime, local_upstream: LocalUpstream, attempt: int, delay: float
) -> None:
    fake_runtime.locks.busy[(NS, PROJECT)] = 1e9
    started = fake_runtime.clock()
    with pytest.raises(op.Retry) as caught:
        await run(fake_runtime, spec(local_upstream), attempt=attempt)

    assert (caught.value.reason, caught.value.delay) == ("LockTimeout", delay)
    assert fake_runtime.clock() - started == fake_runtime.rt.config.lock_wait_seconds  # waited the bound, no more
    assert fake_runtime.engine.checkouts == 0
    status = fake_runtime.kube.last_status()
    assert ready_condition(status)["reason"] == "LockTimeout" and status["attempts"] == attempt + 1


async def test_lease_lost_while_held_is_retried(fake_runtime: FakeRuntime, local_upstream: LocalUpstream) -> None:
    fake_runtime.locks.lose.add((NS, PROJECT))
    with pytest.raises(op.Retry) as caught:
        await run(fake_runtime, spec(local_upstream))

    assert caught.value.reason == "LeaseLost"
    assert ready_condition(fake_runtime.kube.last_status())["reason"] == "LeaseLost"


async def test_missing_ref_is_permanent(fake_runtime: FakeRuntime, local_upstream: LocalUpstream) -> None:
    with pytest.raises(op.Fatal) as caught:
        await run(fake_runtime, spec(local_upstream, ref={"branch": "no-such-branch"}))

    assert caught.value.reason == "RefNotFound"
    assert fake_runtime.kube.last_status()["phase"] == Phase.FAILED
    assert not (fake_runtime.root / NS / PROJECT / NAME).exists()


async def test_a_second_run_after_a_permanent_failure_asks_nobody(
    fake_runtime: FakeRuntime, local_upstream: LocalUpstream
) -> None:
    # Two runs of one Workspace one after the other (the create handler waited for a
    # takeover's run): the second sees the first's Failed status and does nothing.
    with pytest.raises(op.Fatal):
        await run(fake_runtime, spec(local_upstream, ref={"branch": "no-such-branch"}))
    failed = fake_runtime.kube.last_status()
    fake_runtime.kube.patches.clear()
    prepares = fake_runtime.engine.prepares

    assert await run(fake_runtime, spec(local_upstream, ref={"branch": "no-such-branch"}), current=failed) is None
    assert fake_runtime.kube.patches == [] and fake_runtime.engine.prepares == prepares
    # A new generation (the spec was changed) is tried again.
    with pytest.raises(op.Fatal):
        await run(fake_runtime, spec(local_upstream, ref={"branch": "no-such-branch"}), current=failed, generation=2)
    assert fake_runtime.engine.prepares == prepares + 1


async def test_missing_upstream_reports_why(fake_runtime: FakeRuntime, tmp_path: Path) -> None:
    gone = {"project": PROJECT, "repository": f"file://{tmp_path}/no-such-repo"}
    with pytest.raises(op.Fatal) as caught:
        await run(fake_runtime, gone)

    assert caught.value.reason == "RepositoryNotFound"
    status = fake_runtime.kube.last_status()
    assert status["phase"] == Phase.FAILED and ready_condition(status)["reason"] == "RepositoryNotFound"
    assert not (fake_runtime.root / NS / PROJECT / NAME).exists()


PASSWORD = "s3cret-password-never-shown"


def secret_listing(fr: FakeRuntime, repositories: str) -> dict[str, Any]:
    """A Secret `creds` that lends itself to `repositories`; the spec fields that name it."""
    fr.kube.secrets["creds"] = (
        {"username": b"ci", "password": PASSWORD.encode()},
        {"crafting.dev/repositories": repositories},
    )
    return {"credentials": {"secretName": "creds"}}


async def test_credentials_secret_must_list_the_repository(
    fake_runtime: FakeRuntime, local_upstream: LocalUpstream
) -> None:
    creds = secret_listing(fake_runtime, "https://example.invalid/other")
    with pytest.raises(op.Fatal) as caught:
        await run(fake_runtime, spec(local_upstream, **creds))

    assert caught.value.reason == "CredentialsNotAllowed"
    assert fake_runtime.engine.checkouts == 0
    assert PASSWORD not in repr(fake_runtime.kube.patches)


async def test_missing_credentials_secret_is_permanent(
    fake_runtime: FakeRuntime, local_upstream: LocalUpstream
) -> None:
    with pytest.raises(op.Fatal) as caught:
        await run(fake_runtime, spec(local_upstream, credentials={"secretName": "absent"}))

    assert caught.value.reason == "AuthenticationFailed" and "absent" in caught.value.message
    assert fake_runtime.kube.secret_reads == ["absent"] and fake_runtime.engine.checkouts == 0


async def test_listed_credentials_are_lent_and_never_written_to_status(
    fake_runtime: FakeRuntime, local_upstream: LocalUpstream
) -> None:
    done = await run(fake_runtime, spec(local_upstream, **secret_listing(fake_runtime, local_upstream.url)))

    assert done is not None and done.result.commit == local_upstream.head
    assert PASSWORD not in repr(fake_runtime.kube.patches)
    assert PASSWORD not in (fake_runtime.root / NS / PROJECT / ".cache" / "config").read_text()


async def test_the_ttl_in_force_sets_expires_at(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, local_upstream: LocalUpstream
) -> None:
    fr = make_runtime(tmp_path, (tmp_path_factory.getbasetemp(),), default_ttl_seconds=3600, allow_no_ttl=True)
    await run(fr, spec(local_upstream))
    assert fr.kube.last_status()["expiresAt"] is not None
    await run(fr, spec(local_upstream, ttlSecondsAfterReady=0))  # allowed here: never expires
    assert fr.kube.last_status()["expiresAt"] is None


@pytest.mark.parametrize(("attempt", "outcome"), [(0, op.Retry), (6, op.Retry), (7, op.Fatal)])
async def test_unclassified_git_failures_are_retried_a_bounded_number_of_times(
    fake_runtime: FakeRuntime,
    local_upstream: LocalUpstream,
    monkeypatch: pytest.MonkeyPatch,
    attempt: int,
    outcome: type[Exception],
) -> None:
    async def exploding(valid: ValidRequest, **_: object) -> Prepared:
        raise GitError(Reason.GIT_FAILED, "git exited 128: something new", step="fetch")

    monkeypatch.setattr(fake_runtime.engine, "prepare", exploding)
    with pytest.raises(outcome):
        await run(fake_runtime, spec(local_upstream), attempt=attempt)
    status = fake_runtime.kube.last_status()
    assert ready_condition(status)["reason"] == "GitFailed" and status["attempts"] == attempt + 1


async def test_delayed_writes_that_come_due_together_go_through_the_gate() -> None:
    """A burst's delayed writes come due at once: at most the gate's number are in flight,
    and those still waiting for it when their outcome arrives are never sent."""
    gate = asyncio.Semaphore(2)
    in_flight, most, sent = 0, 0, 0
    release, full = asyncio.Event(), asyncio.Event()

    async def write() -> None:
        nonlocal in_flight, most, sent
        in_flight += 1
        most = max(most, in_flight)
        if in_flight == 2:
            full.set()
        await release.wait()
        in_flight -= 1
        sent += 1

    deferred = [await op.Deferred.start(0.01, write, gate) for _ in range(10)]
    await asyncio.wait_for(full.wait(), timeout=5)
    release.set()
    for one in deferred[5:]:  # outcomes that arrive now: their writes are not sent
        await one.settle()
    for one in deferred[:5]:
        await one.settle()
    assert most == 2 and 2 <= sent < 10


class _Moved:
    """Membership in which this replica owns nothing (the project moved while it waited)."""

    def owns(self, namespace: str, project: str) -> bool:
        return False


async def test_a_project_moved_away_is_not_written_even_with_its_lease(
    fake_runtime: FakeRuntime, local_upstream: LocalUpstream
) -> None:
    """A Workspace queued (or the process paused) while its project moved to another
    replica: holding the Lease afterwards proves nothing, so no git runs and the status is
    left to the new owner; the run is retried here in case the project comes back."""
    fake_runtime.rt.members = _Moved()  # type: ignore[assignment]
    with pytest.raises(op.Retry) as caught:
        await run(fake_runtime, spec(local_upstream))

    assert caught.value.reason == "LeaseLost" and "moved" in caught.value.message
    assert fake_runtime.engine.prepares == 0 and fake_runtime.engine.checkouts == 0
    assert not (fake_runtime.root / NS / PROJECT).exists()
    assert Phase.READY not in fake_runtime.kube.phases()
