"""takeover: a Workspace picked up after a membership change is materialized only while
it is unsettled *now*, not as the listing saw it (fakes of the API, a real engine)."""

from __future__ import annotations

from typing import Any

from runtime_fakes import FakeRuntime, LocalUpstream
from workspace_operator import takeover
from workspace_operator.status import Phase

NS, NAME, PROJECT = "team-a", "ws-1", "proj"


def workspace(upstream: LocalUpstream, status: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": NS, "name": NAME, "uid": "uid-1", "generation": 1},
        "spec": {"project": PROJECT, "repository": upstream.url, **spec},
        "status": status,
    }


async def test_a_workspace_settled_since_the_listing_is_left_alone(
    fake_runtime: FakeRuntime, local_upstream: LocalUpstream
) -> None:
    # Listed while Materializing; the create handler's run failed it for good before the
    # takeover's turn came: the takeover asks the upstream nothing and writes nothing.
    listed = workspace(local_upstream, {"phase": Phase.MATERIALIZING, "observedGeneration": 1}, ref={"branch": "x"})
    now = workspace(local_upstream, {"phase": Phase.FAILED, "observedGeneration": 1}, ref={"branch": "x"})
    fake_runtime.kube.workspaces[NS, NAME] = now

    await takeover._run(fake_runtime.rt, listed)

    assert fake_runtime.engine.prepares == 0 and fake_runtime.kube.patches == []


async def test_an_unsettled_workspace_is_materialized(fake_runtime: FakeRuntime, local_upstream: LocalUpstream) -> None:
    listed = workspace(local_upstream, {})
    fake_runtime.kube.workspaces[NS, NAME] = workspace(local_upstream, {})

    await takeover._run(fake_runtime.rt, listed)

    assert fake_runtime.engine.prepares == 1
    assert fake_runtime.kube.workspaces[NS, NAME]["status"]["phase"] == Phase.READY
    # The Event kopf would have posted for the create handler, posted by the takeover.
    assert [reason for reason, _ in fake_runtime.kube.events] == ["Materialized"]


async def test_a_permanent_failure_is_announced_once(fake_runtime: FakeRuntime, local_upstream: LocalUpstream) -> None:
    listed = workspace(local_upstream, {}, ref={"branch": "no-such-branch"})
    fake_runtime.kube.workspaces[NS, NAME] = workspace(local_upstream, {}, ref={"branch": "no-such-branch"})

    await takeover._run(fake_runtime.rt, listed)
    await takeover._run(fake_runtime.rt, listed)  # settled now: nothing more

    assert fake_runtime.kube.events == [("RefNotFound", fake_runtime.kube.last_status()["message"])]
    assert fake_runtime.engine.prepares == 1


async def test_a_workspace_deleted_since_the_listing_is_left_alone(
    fake_runtime: FakeRuntime, local_upstream: LocalUpstream
) -> None:
    await takeover._run(fake_runtime.rt, workspace(local_upstream, {}))

    assert fake_runtime.engine.prepares == 0 and fake_runtime.kube.patches == []
