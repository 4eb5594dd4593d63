"""The operator end to end against the real API server, real git and loopback upstreams."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient, CoordinationV1Api, CoreV1Api, V1ObjectMeta, V1Secret

from cluster import Scene, StartOperator, Workspaces, lease_spec, wait_for
from upstreams import SmartHTTP, StandardRepo, commit

pytestmark = pytest.mark.cluster

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def manifest(namespace: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "crafting.dev/v1",
            "kind": "Workspace",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def test_apply_wait_ready(scene: Scene, kubectl: Kubectl) -> None:
    op = scene.start()
    spec = {
        "project": "backend",
        "repository": scene.http.url("repo"),
        "ref": {"branch": "main"},
        "subPath": "services/api",
    }
    kubectl("apply", "-f", "-", input=manifest(scene.namespace, "build-1", spec))
    kubectl("wait", "--for=condition=Ready", "-n", scene.namespace, "ws/build-1", "--timeout=60s", timeout=90)

    status = scene.workspaces.status("build-1")
    assert status["commit"] == scene.repo.main
    assert status["path"] == f"{scene.namespace}/backend/build-1"
    assert status["workdir"] == f"{scene.namespace}/backend/build-1/services/api"
    assert status["volumeClaim"] == "workspaces"
    assert status["cache"] == {"hit": False, "fetched": True}
    assert status["observedGeneration"] == 1
    assert set(status["timings"]) == {"lockWaitSeconds", "fetchSeconds", "checkoutSeconds", "totalSeconds"}
    assert status["expiresAt"] > status["readyAt"]
    worktree = op.root / status["path"]
    assert (worktree / "README.md").is_file()
    assert (
        subprocess.run(
            ["git", "-C", str(worktree), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
        == scene.repo.main
    )

    table = kubectl("get", "ws", "-n", scene.namespace).stdout
    header = table.splitlines()[0].split()
    assert header[:5] == ["NAME", "PROJECT", "REF", "COMMIT", "PHASE"]
    assert scene.repo.main[:12] in table and "Ready" in table and "backend" in table

    explained = kubectl("explain", "workspace.spec.ref").stdout
    assert "commit" in explained and "branch" in explained and "DESCRIPTION" in explained

    # kopf posts the Event in the background after the handler returned: it may follow Ready.
    def events() -> list[dict[str, Any]]:
        listed = kubectl(
            "get", "events", "-n", scene.namespace, "--field-selector", "involvedObject.name=build-1", "-o", "json"
        ).stdout
        items: list[dict[str, Any]] = json.loads(listed)["items"]
        return items

    def materialized() -> list[dict[str, Any]] | None:
        found = events()
        return found if any(e["reason"] == "Materialized" for e in found) else None

    posted = wait_for(
        materialized,
        timeout=30,
        message="the Materialized Event",
    )
    # Only the operator's own Event: none for kopf's "Handler ... succeeded" lines
    # (each would be one more API write per Workspace).
    assert {e["reason"] for e in posted} == {"Materialized"}, posted


def test_resume_after_restart_is_a_noop(scene: Scene) -> None:
    op = scene.start()
    scene.workspaces.create("w", scene.spec())
    first = scene.workspaces.wait_ready("w")
    op.stop()
    requests_before = len(scene.http.requests())
    resource_version = scene.workspaces.get("w")["metadata"]["resourceVersion"]  # type: ignore[index]
    scene.start()
    # Sync point: a probe created after the restart is handled after the restarted
    # operator's initial listing; it is pinned to a cached commit, so it needs no network.
    scene.workspaces.create("probe", {**scene.spec(), "ref": {"commit": first["commit"]}})
    assert scene.workspaces.wait_ready("probe")["cache"] == {"hit": True, "fetched": False}
    assert scene.workspaces.status("w") == first
    assert len(scene.http.requests()) == requests_before
    assert scene.workspaces.get("w")["metadata"]["resourceVersion"] == resource_version  # type: ignore[index]


def test_burst_of_one_commit_costs_one_fetch(scene: Scene) -> None:
    scene.start()
    spec = {**scene.spec("burst"), "ref": {"commit": scene.repo.main}}
    names = [f"b-{i}" for i in range(20)]
    for name in names:
        scene.workspaces.create(name, spec)
    for name in names:
        assert scene.workspaces.wait_ready(name, timeout=120)["commit"] == scene.repo.main
    assert scene.http.count() == 1
    hits = [scene.workspaces.status(n)["cache"]["hit"] for n in names]
    assert hits.count(False) == 1


def test_delete_removes_worktree_and_releases_lease(scene: Scene, api_client: ApiClient) -> None:
    op = scene.start()
    scene.workspaces.create("gone", scene.spec("del"))
    scene.workspaces.create("missing-dir", scene.spec("del"))
    path = op.root / scene.workspaces.wait_ready("gone")["path"]
    other = op.root / scene.workspaces.wait_ready("missing-dir")["path"]
    assert path.is_dir()

    scene.workspaces.delete("gone")
    scene.workspaces.wait_gone("gone")
    assert not path.exists()
    assert not (op.root / scene.namespace / "del" / ".ready" / "gone").exists()
    worktrees = subprocess.run(
        ["git", "-C", str(op.root / scene.namespace / "del" / ".cache"), "worktree", "list"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert str(path) not in worktrees
    # The deletion's step ends before its hold does (the drainer may run the idle
    # upkeep step first), so the release is awaited; an expired Lease would keep
    # its holder, so an empty holder proves the explicit release.
    coordination = CoordinationV1Api(api_client)
    lease = wait_for(
        lambda: (
            found
            if not lease_spec(
                found := coordination.read_namespaced_lease(f"ws-{scene.namespace}.del", scene.namespace)
            ).holder_identity
            else None
        ),
        timeout=20,
        message="the project Lease released after the deletion",
    )
    assert lease.metadata and (lease.metadata.labels or {})["crafting.dev/project"] == "del"

    subprocess.run(["rm", "-rf", str(other)], check=True, timeout=30)
    scene.workspaces.delete("missing-dir")
    scene.workspaces.wait_gone("missing-dir")


def test_missing_branch_fails_permanently_without_retry(scene: Scene) -> None:
    op = scene.start()
    scene.workspaces.create("nobranch", {**scene.spec(), "ref": {"branch": "does-not-exist"}})
    condition = scene.workspaces.wait_reason("nobranch", "RefNotFound")
    assert condition["status"] == "False"
    assert "refs/heads/does-not-exist" in condition["message"]
    assert scene.workspaces.status("nobranch")["phase"] == "Failed"
    seen = len(scene.http.requests())
    # A permanent failure is not retried: over a few seconds (well past the first
    # backoff steps) the upstream sees nothing more and the attempt count stays.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert len(scene.http.requests()) == seen
        assert scene.workspaces.status("nobranch").get("attempts") == 1
        time.sleep(0.5)
    assert "RefNotFound" in op.metrics()


def test_credentials_reason_and_no_leak(
    api_client: ApiClient,
    kubectl: Kubectl,
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    tmp_path: Path,
) -> None:
    right = "right-token-123456"
    wrong = "wrong-token-9f8e7d6c5b4a"
    assert upstream_repo.served_dir is not None
    server = SmartHTTP(upstream_repo.served_dir, username="ci-bot", password=right).start()
    try:
        op = operator_factory()
        url = server.url("repo")
        core = CoreV1Api(api_client)

        def secret(name: str, password: str, allowed: str | None) -> None:
            annotations = {"crafting.dev/repositories": allowed} if allowed else {}
            core.create_namespaced_secret(
                namespace,
                V1Secret(
                    metadata=V1ObjectMeta(name=name, annotations=annotations),
                    type="Opaque",
                    data={
                        "username": base64.b64encode(b"ci-bot").decode(),
                        "password": base64.b64encode(password.encode()).decode(),
                    },
                ),
            )

        secret("wrong", wrong, url)
        secret("good", right, url.rsplit("/", 1)[0] + "/")  # a prefix of the repository URL
        secret("unlisted", right, "https://elsewhere.example/")
        secret("plain", right, None)
        cases = {
            "badauth": ("wrong", "AuthenticationFailed"),
            "unlisted": ("unlisted", "CredentialsNotAllowed"),
            "plain": ("plain", "CredentialsNotAllowed"),
        }
        for name, (secret_name, _) in cases.items():
            workspaces.create(
                name, {"project": f"p-{name}", "repository": url, "credentials": {"secretName": secret_name}}
            )
        workspaces.create("goodauth", {"project": "good", "repository": url, "credentials": {"secretName": "good"}})
        for name, (_, reason) in cases.items():
            workspaces.wait_reason(name, reason)
            assert workspaces.status(name)["phase"] == "Failed"
        assert workspaces.wait_ready("goodauth")["commit"] == upstream_repo.main
        # Secrets not listed for this repository never reached the upstream.
        assert {r.user for r in server.requests() if r.user} == {"ci-bot"}
        events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
        everything = [op.log(), events] + [json.dumps(workspaces.get(n)) for n in [*cases, "goodauth"]]
        for path in op.root.rglob("*"):
            if path.is_file():
                everything.append(path.read_bytes().decode("utf-8", "replace"))
        for leaked in (wrong, right):
            assert not any(leaked in text for text in everything), f"secret {leaked[:5]}... leaked"
        assert not list(tmp_path.glob("wo-cred-*")), "credential scratch directory left behind"
    finally:
        server.stop()


def test_transient_failure_recovers(scene: Scene) -> None:
    scene.start()
    scene.http.fault = "500"
    scene.workspaces.create("flaky", scene.spec("flaky"))
    condition = scene.workspaces.wait_reason("flaky", "UpstreamUnavailable")
    assert scene.workspaces.status("flaky")["phase"] == "Pending"
    assert "retrying" in condition["message"]
    scene.http.fault = None
    assert scene.workspaces.wait_ready("flaky", timeout=60)["commit"] == scene.repo.main


def test_new_upstream_commit_is_fetched(scene: Scene) -> None:
    scene.start()
    scene.workspaces.create("one", scene.spec("moving"))
    assert scene.workspaces.wait_ready("one")["commit"] == scene.repo.main
    newer = commit(scene.repo.src, {"NEW.txt": "new\n"}, "newer")
    scene.repo.republish()
    scene.workspaces.create("two", scene.spec("moving"))
    status = scene.workspaces.wait_ready("two")
    assert status["commit"] == newer
    assert status["cache"] == {"hit": False, "fetched": True}


def test_repository_mismatch_is_refused(scene: Scene) -> None:
    scene.start()
    scene.workspaces.create("first", scene.spec("shared"))
    scene.workspaces.wait_ready("first")
    scene.workspaces.create("other", {"project": "shared", "repository": scene.http.url("repo") + "x"})
    condition = scene.workspaces.wait_reason("other", "RepositoryMismatch")
    assert "another project name" in condition["message"]


@pytest.mark.parametrize(
    ("spec_patch", "message"),
    [
        ({"project": "../etc"}, "spec.project"),
        ({"project": "UPPER"}, "spec.project"),
        ({"repository": "ext::sh -c touch% /tmp/pwned"}, "spec.repository"),
        ({"repository": "-uhelp"}, "spec.repository"),
        ({"repository": "https://user:token@example.com/r.git"}, "spec.repository"),
        ({"ref": {"branch": "--upload-pack=touch /tmp/pwned"}}, "spec.ref.branch"),
        ({"ref": {"branch": "a", "tag": "b"}}, "at most one of"),
        ({"ref": {"commit": "abc"}}, "spec.ref.commit"),
        ({"ref": {"name": "heads/main"}}, "spec.ref.name"),
        ({"subPath": "../../etc"}, "spec.subPath"),
        ({"subPath": "/etc"}, "spec.subPath"),
        ({"sparse": ["a/../../b"]}, "spec.sparse"),
        ({"repository": "https://example.com/" + "a" * 3000}, "spec.repository"),
        ({"ttlSecondsAfterReady": -1}, "spec.ttlSecondsAfterReady"),
    ],
)
def test_invalid_specs_rejected_by_api_server(
    kubectl: Kubectl, namespace: str, crd: None, spec_patch: dict[str, Any], message: str
) -> None:
    spec = {"project": "ok", "repository": "https://example.com/r.git", **spec_patch}
    result = kubectl("apply", "-f", "-", check=False, input=manifest(namespace, "bad", spec))
    assert result.returncode != 0, "API server accepted an invalid spec"
    assert message in result.stderr, result.stderr


def test_invalid_name_rejected(kubectl: Kubectl, namespace: str, crd: None) -> None:
    result = kubectl(
        "apply",
        "-f",
        "-",
        check=False,
        input=manifest(namespace, "a.b", {"project": "ok", "repository": "https://e.com/r.git"}),
    )
    assert result.returncode != 0
    assert "DNS-1123 label" in result.stderr


def test_spec_is_immutable(kubectl: Kubectl, namespace: str, workspaces: Workspaces) -> None:
    workspaces.create("fixed", {"project": "p", "repository": "https://example.com/r.git"})
    result = kubectl(
        "patch",
        "ws",
        "fixed",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"ref": {"branch": "other"}}}),
        check=False,
    )
    assert result.returncode != 0
    assert "spec is immutable" in result.stderr


def metric_value(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.split()[-1])
    return 0.0


def test_metrics_and_health(scene: Scene) -> None:
    import urllib.request

    op = scene.start()
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/healthz", timeout=5) as resp:
        assert resp.status == 200
    before = op.metrics()
    assert metric_value(before, "workspace_operator_materializations_total", '{result="ready"}') == 0
    scene.workspaces.create("m1", scene.spec("metrics"))
    scene.workspaces.wait_ready("m1")
    scene.workspaces.create("m2", {**scene.spec("metrics"), "ref": {"commit": scene.repo.main}})
    scene.workspaces.wait_ready("m2")

    # Counted right after the Ready status is written: a scrape may come in between.
    def counted() -> str | None:
        text = op.metrics()
        return (
            text if metric_value(text, "workspace_operator_materializations_total", '{result="ready"}') == 2 else None
        )

    after = wait_for(counted, timeout=10, message="two ready materializations counted")
    assert metric_value(after, "workspace_operator_cache_lookups_total", '{result="hit"}') == 1
    assert metric_value(after, "workspace_operator_cache_lookups_total", '{result="miss"}') == 1
    assert metric_value(after, "workspace_operator_fetch_seconds_count") == 1
    assert metric_value(after, "workspace_operator_checkout_seconds_count") == 2
    assert metric_value(after, "workspace_operator_lock_wait_seconds_count") == 2
    for series in (
        "workspace_operator_git_failures_total",
        "workspace_operator_gc_actions_total",
        "workspace_operator_lease_takeovers_total",
        "workspace_operator_deletions_total",
    ):
        assert f"# HELP {series}" in after
    assert "materialized " + scene.namespace + "/m1" in op.log()
