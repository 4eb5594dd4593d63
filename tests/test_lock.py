"""The Lease mutex against the real API server: exclusion, takeover, loss."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from kubernetes.client import (
    ApiClient,
    CoordinationV1Api,
    CoreV1Api,
    RbacAuthorizationV1Api,
    RbacV1Subject,
    V1ObjectMeta,
    V1PolicyRule,
    V1Role,
    V1RoleBinding,
    V1RoleRef,
    V1ServiceAccount,
)
from kubernetes.client.exceptions import ApiException

from cluster import lease_spec, new_api_client, service_account_token, token_kubeconfig, wait_for
from testsupport.relay import Relay
from workspace_operator.git import GitSettings
from workspace_operator.git.runner import GitRunner
from workspace_operator.kube import REQUEST_TIMEOUT, Kube
from workspace_operator.lock import LeaseLocks, LeaseLost, LockTimeout, lease_name

pytestmark = pytest.mark.cluster

WORKER = Path(__file__).parent / "helpers" / "lock_worker.py"


def worker(
    kubeconfig: Path, namespace: str, identity: str, rounds: int, journal: Path, hold: bool = False
) -> subprocess.Popen[str]:
    args = [sys.executable, str(WORKER), str(kubeconfig), namespace, identity, str(rounds), str(journal)]
    return subprocess.Popen(args + (["hold"] if hold else []), stdout=subprocess.PIPE, text=True)


def test_two_processes_never_overlap(kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    procs = [worker(kubeconfig, namespace, f"w{i}", 15, journal) for i in range(2)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    events = [line.split() for line in journal.read_text().splitlines()]
    assert len(events) == 60
    events.sort(key=lambda e: float(e[2]))
    inside: str | None = None
    for kind, who, _ in events:
        if kind == "enter":
            assert inside is None, f"{who} entered while {inside} was inside"
            inside = who
        else:
            assert inside == who
            inside = None
    assert {who for _, who, _ in events} == {"w0", "w1"}


def test_killed_holder_is_taken_over_after_expiry(
    api_client: ApiClient, kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    holder = worker(kubeconfig, namespace, "doomed", 1, tmp_path / "j", hold=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    finally:
        holder.kill()
        holder.wait(timeout=30)
    api = CoordinationV1Api(api_client)
    name = lease_name(namespace, "contended")
    before = lease_spec(api.read_namespaced_lease(name, namespace))
    assert before.holder_identity == "doomed"

    async def take_over() -> tuple[float, float]:
        locks = LeaseLocks(api, namespace, "survivor", duration_seconds=3)
        started = time.monotonic()
        async with locks.hold(namespace, "contended", wait_seconds=30) as waited:
            return waited, time.monotonic() - started

    waited, _ = asyncio.run(take_over())
    # Not before the lease duration has passed since we first saw the record (local clock).
    assert waited >= (before.lease_duration_seconds or 0) - 0.2
    after = lease_spec(api.read_namespaced_lease(name, namespace))
    assert after.lease_transitions == (before.lease_transitions or 0) + 1
    assert not after.holder_identity  # released at the end of the block


def test_wait_is_bounded(api_client: ApiClient, namespace: str) -> None:
    api = CoordinationV1Api(api_client)

    async def contend() -> None:
        first = LeaseLocks(api, namespace, "first", duration_seconds=30)
        second = LeaseLocks(api, namespace, "second", duration_seconds=30)
        async with first.hold(namespace, "busy", wait_seconds=5):
            with pytest.raises(LockTimeout):
                async with second.hold(namespace, "busy", wait_seconds=1):
                    pass

    asyncio.run(contend())


def test_stolen_lease_cancels_guarded_git(api_client: ApiClient, namespace: str, tmp_path: Path) -> None:
    """A holder that loses its Lease kills its git subprocess and reports LeaseLost."""
    api = CoordinationV1Api(api_client)
    runner = GitRunner(GitSettings(timeout_seconds=120))
    fifo = tmp_path / "never"
    subprocess.run(["mkfifo", str(fifo)], check=True, timeout=10)

    async def scenario() -> float:
        locks = LeaseLocks(api, namespace, "victim", duration_seconds=3)
        started = time.monotonic()
        with pytest.raises(LeaseLost):
            async with locks.hold(namespace, "stolen", wait_seconds=5):
                stolen = lease_name(namespace, "stolen")
                lease = api.read_namespaced_lease(stolen, namespace)
                lease_spec(lease).holder_identity = "thief"
                api.replace_namespaced_lease(stolen, namespace, lease)
                # git blocks reading a FIFO nobody writes: only the lock loss can end it.
                await runner.run("blocked", ["hash-object", str(fifo)], cwd=tmp_path)
        return time.monotonic() - started

    elapsed = asyncio.run(scenario())
    assert elapsed < 10
    stray = subprocess.run(["pgrep", "-f", f"hash-object {fifo}"], capture_output=True, timeout=10)
    assert stray.returncode == 1, "git survived the lost lease"


def test_failing_renewals_stop_the_work(
    api_client: ApiClient, kubectl: object, namespace: str, kubeconfig: Path, tmp_path: Path
) -> None:
    """Renewals start failing (RBAC revoked): past the renew deadline the work is cancelled."""
    core = CoreV1Api(api_client)
    rbac = RbacAuthorizationV1Api(api_client)
    core.create_namespaced_service_account(namespace, V1ServiceAccount(metadata=V1ObjectMeta(name="holder")))
    rbac.create_namespaced_role(
        namespace,
        V1Role(
            metadata=V1ObjectMeta(name="leases"),
            rules=[
                V1PolicyRule(
                    api_groups=["coordination.k8s.io"], resources=["leases"], verbs=["get", "create", "update", "patch"]
                )
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        V1RoleBinding(
            metadata=V1ObjectMeta(name="leases"),
            role_ref=V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="leases"),
            subjects=[RbacV1Subject(kind="ServiceAccount", name="holder", namespace=namespace)],
        ),
    )
    token = service_account_token(core, "holder", namespace)
    config = token_kubeconfig(kubeconfig, token, tmp_path / "kubeconfig")
    client = new_api_client(config)
    fifo = tmp_path / "never"
    subprocess.run(["mkfifo", str(fifo)], check=True, timeout=10)
    runner = GitRunner(GitSettings(timeout_seconds=120))

    async def scenario() -> float:
        locks = LeaseLocks(CoordinationV1Api(client), namespace, "revoked", duration_seconds=3)
        with pytest.raises(LeaseLost):
            async with locks.hold(namespace, "revoked", wait_seconds=5):
                rbac.delete_namespaced_role_binding("leases", namespace)
                started = time.monotonic()
                await runner.run("blocked", ["hash-object", str(fifo)], cwd=tmp_path)
        return time.monotonic() - started

    elapsed = asyncio.run(scenario())
    assert locks_deadline(3) <= elapsed + 1.0 and elapsed < 3, elapsed
    with pytest.raises(ApiException):
        CoordinationV1Api(client).read_namespaced_lease(lease_name(namespace, "revoked"), namespace)
    assert wait_for(
        lambda: subprocess.run(["pgrep", "-f", f"hash-object {fifo}"], capture_output=True, timeout=10).returncode == 1,
        timeout=5,
        message="git killed",
    )


def locks_deadline(duration: int) -> float:
    return duration * 2 / 3


def test_a_renewal_the_network_never_answers_stops_the_work_at_the_renew_deadline(
    kubeconfig: Path, namespace: str
) -> None:
    """The API server goes silent mid-hold (connections stay open, nothing comes back):
    the work is stopped at the renew deadline, not when the call's own timeout ends it."""
    client = new_api_client(kubeconfig)
    server = urllib.parse.urlsplit(client.configuration.host)
    assert server.hostname and server.port

    with Relay(server.hostname, server.port) as relay:
        client.configuration.host = f"https://{server.hostname}:{relay.port}"
        relayed = ApiClient(client.configuration)
        kube = Kube(relayed)  # the operator's own client setup: 30 s read timeout
        locks = LeaseLocks(kube.coordination, namespace, "silenced", duration_seconds=3)  # renew deadline 2 s
        moments: dict[str, float] = {}

        async def scenario() -> None:
            with pytest.raises(LeaseLost):
                async with locks.hold(namespace, "silenced", wait_seconds=10):
                    relay.silence()
                    moments["silenced"] = time.monotonic()
                    try:
                        await asyncio.sleep(120)  # only the fence ends this
                    except asyncio.CancelledError:
                        moments["stopped"] = time.monotonic()
                        raise
            moments["released"] = time.monotonic()

        asyncio.run(scenario())
    stopped = moments["stopped"] - moments["silenced"]
    # Fenced near the 2 s renew deadline; before the fix it took the 30 s read timeout.
    assert stopped < REQUEST_TIMEOUT[1] / 2, f"the work ran on {stopped:.1f}s into the silence"
    # And the unanswerable release gave up after the Lease's duration (it expires anyway).
    assert moments["released"] - moments["stopped"] < REQUEST_TIMEOUT[1] / 2
