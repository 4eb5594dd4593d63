"""teardown(): the worktree goes under the project Lease; deletion never wedges."""

from __future__ import annotations

from typing import Any

import pytest

from runtime_fakes import FakeRuntime, LocalUpstream
from testsupport.gitenv import git
from workspace_operator import materialize, teardown
from workspace_operator.teardown import GIVE_UP_AFTER_ATTEMPTS, RetryDeletion

NS, PROJECT = "team-a", "proj"


async def make_ready(fr: FakeRuntime, upstream: LocalUpstream, name: str) -> None:
    await materialize.materialize(
        fr.rt,
        namespace=NS,
        name=name,
        generation=1,
        current={},
        attempt=0,
        spec={"project": PROJECT, "repository": upstream.url},
    )


async def remove(fr: FakeRuntime, name: str, attempt: int = 0, **spec: Any) -> str:
    return await teardown.teardown(fr.rt, namespace=NS, name=name, spec={"project": PROJECT, **spec}, attempt=attempt)


async def test_removes_the_worktree_and_keeps_the_cache_and_siblings(
    fake_runtime: FakeRuntime, local_upstream: LocalUpstream
) -> None:
    for name in ("a", "b"):
        await make_ready(fake_runtime, local_upstream, name)
    project = fake_runtime.root / NS / PROJECT

    assert await remove(fake_runtime, "a") == "worktree or pin removed"
    assert not (project / "a").exists() and not (project / ".ready" / "a").exists()
    assert (project / "b" / "README.md").is_file()
    worktrees = git(project / ".cache", "worktree", "list", "--porcelain")
    assert str(project / "b") in worktrees and str(project / "a") not in worktrees
    assert fake_runtime.locks.acquired[-1] == (NS, PROJECT)


async def test_a_worktree_never_made_is_success(fake_runtime: FakeRuntime) -> None:
    assert await remove(fake_runtime, "never") == "no worktree or pin on the volume"


@pytest.mark.parametrize("spec", [{"project": "../etc"}, {"project": ""}, {}])
async def test_an_invalid_spec_touches_nothing_and_takes_no_lock(
    fake_runtime: FakeRuntime, spec: dict[str, Any]
) -> None:
    out = await teardown.teardown(fake_runtime.rt, namespace=NS, name="w", spec=spec, attempt=0)
    assert out.startswith("nothing to remove")
    assert fake_runtime.locks.acquired == []


async def test_a_busy_project_is_retried_then_left_to_gc(
    fake_runtime: FakeRuntime, local_upstream: LocalUpstream
) -> None:
    await make_ready(fake_runtime, local_upstream, "w")
    worktree = fake_runtime.root / NS / PROJECT / "w"
    fake_runtime.locks.busy[(NS, PROJECT)] = 1e9
    for attempt in range(GIVE_UP_AFTER_ATTEMPTS - 1):
        with pytest.raises(RetryDeletion, match="waited"):
            await remove(fake_runtime, "w", attempt=attempt)
        fake_runtime.locks.busy[(NS, PROJECT)] = 1e9

    # The finalizer is released anyway (the object goes); the directory stays for GC.
    out = await remove(fake_runtime, "w", attempt=GIVE_UP_AFTER_ATTEMPTS - 1)
    assert out.startswith("worktree left for garbage collection")
    assert worktree.is_dir()


async def test_a_lost_lease_is_retried(fake_runtime: FakeRuntime, local_upstream: LocalUpstream) -> None:
    await make_ready(fake_runtime, local_upstream, "w")
    fake_runtime.locks.lose.add((NS, PROJECT))
    with pytest.raises(RetryDeletion, match="lost lock"):
        await remove(fake_runtime, "w")
