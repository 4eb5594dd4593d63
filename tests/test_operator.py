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

from cluster import OperatorProcess, Workspaces, lease_spec, wait_for
from upstreams import SmartHTTP, StandardRepo, commit

pytestmark = pytest.mark.cluster

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
StartOperator = Callable[..., OperatorProcess]


def manifest(namespace: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "crafting.dev/v1",
            "kind": "Workspace",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def test_apply_wait_ready(
    kubectl: Kubectl,
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    smart_http: SmartHTTP,
) -> None:
    op = operator_factory()
    spec = {
        "project": "backend",
        "repository": smart_http.url("repo"),
        "ref": {"branch": "main"},
        "subPath": "services/api",
    }
    kubectl("apply", "-f", "-", input=manifest(namespace, "build-1", spec))
    kubectl("wait", "--for=condition=Ready", "-n", namespace, "ws/build-1", "--timeout=60s", timeout=90)

    status = workspaces.status("build-1")
    assert status["commit"] == upstream_repo.main
    assert status["path"] == f"{namespace}/backend/build-1"
    assert status["workdir"] == f"{namespace}/backend/build-1/services/api"
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
        == upstream_repo.main
    )

    table = kubectl("get", "ws", "-n", namespace).stdout
    header = table.splitlines()[0].split()
    assert header[:5] == ["NAME", "PROJECT", "REF", "COMMIT", "PHASE"]
    assert upstream_repo.main[:12] in table and "Ready" in table and "backend" in table

    explained = kubectl("explain", "workspace.spec.ref").stdout
    assert "commit" in explained and "branch" in explained and "DESCRIPTION" in explained

    # kopf posts the Event in the background after the handler returned: it may follow Ready.
    wait_for(
        lambda: (
            "Materialized"
            in kubectl(
                "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=build-1", "-o", "json"
            ).stdout
        ),
        timeout=30,
        message="the Materialized Event",
    )


def test_resume_after_restart_is_a_noop(
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    smart_http: SmartHTTP,
) -> None:
    op = operator_factory()
    workspaces.create("w", {"project": "p", "repository": smart_http.url("repo")})
    first = workspaces.wait_ready("w")
    op.stop()
    requests_before = len(smart_http.requests())
    resource_version = workspaces.get("w")["metadata"]["resourceVersion"]  # type: ignore[index]
    operator_factory()
    # Sync point: a probe created after the restart is handled after the restarted
    # operator's initial listing; it is pinned to a cached commit, so it needs no network.
    workspaces.create(
        "probe", {"project": "p", "repository": smart_http.url("repo"), "ref": {"commit": first["commit"]}}
    )
    assert workspaces.wait_ready("probe")["cache"] == {"hit": True, "fetched": False}
    assert workspaces.status("w") == first
    assert len(smart_http.requests()) == requests_before
    assert workspaces.get("w")["metadata"]["resourceVersion"] == resource_version  # type: ignore[index]


def test_burst_of_one_commit_costs_one_fetch(
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    smart_http: SmartHTTP,
) -> None:
    operator_factory()
    spec = {"project": "burst", "repository": smart_http.url("repo"), "ref": {"commit": upstream_repo.main}}
    names = [f"b-{i}" for i in range(20)]
    for name in names:
        workspaces.create(name, spec)
    for name in names:
        assert workspaces.wait_ready(name, timeout=120)["commit"] == upstream_repo.main
    assert smart_http.count() == 1
    hits = [workspaces.status(n)["cache"]["hit"] for n in names]
    assert hits.count(False) == 1


def test_delete_removes_worktree_and_releases_lease(
    api_client: ApiClient,
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    smart_http: SmartHTTP,
) -> None:
    op = operator_factory()
    workspaces.create("gone", {"project": "del", "repository": smart_http.url("repo")})
    workspaces.create("missing-dir", {"project": "del", "repository": smart_http.url("repo")})
    path = op.root / workspaces.wait_ready("gone")["path"]
    other = op.root / workspaces.wait_ready("missing-dir")["path"]
    assert path.is_dir()

    workspaces.delete("gone")
    workspaces.wait_gone("gone")
    assert not path.exists()
    assert not (op.root / namespace / "del" / ".ready" / "gone").exists()
    worktrees = subprocess.run(
        ["git", "-C", str(op.root / namespace / "del" / ".cache"), "worktree", "list"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert str(path) not in worktrees
    lease = CoordinationV1Api(api_client).read_namespaced_lease(f"ws-{namespace}.del", namespace)
    assert not lease_spec(lease).holder_identity
    assert lease.metadata and (lease.metadata.labels or {})["crafting.dev/project"] == "del"

    subprocess.run(["rm", "-rf", str(other)], check=True, timeout=30)
    workspaces.delete("missing-dir")
    workspaces.wait_gone("missing-dir")


def test_missing_branch_fails_permanently_without_retry(
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    smart_http: SmartHTTP,
) -> None:
    op = operator_factory()
    workspaces.create(
        "nobranch", {"project": "p", "repository": smart_http.url("repo"), "ref": {"branch": "does-not-exist"}}
    )
    condition = workspaces.wait_reason("nobranch", "RefNotFound")
    assert condition["status"] == "False"
    assert "refs/heads/does-not-exist" in condition["message"]
    assert workspaces.status("nobranch")["phase"] == "Failed"
    seen = len(smart_http.requests())
    # A permanent failure is not retried: over a few seconds (well past the first
    # backoff steps) the upstream sees nothing more and the attempt count stays.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert len(smart_http.requests()) == seen
        assert workspaces.status("nobranch").get("attempts") == 1
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


def test_transient_failure_recovers(
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    smart_http: SmartHTTP,
) -> None:
    operator_factory()
    smart_http.fault = "500"
    workspaces.create("flaky", {"project": "flaky", "repository": smart_http.url("repo")})
    condition = workspaces.wait_reason("flaky", "UpstreamUnavailable")
    assert workspaces.status("flaky")["phase"] == "Pending"
    assert "retrying" in condition["message"]
    smart_http.fault = None
    assert workspaces.wait_ready("flaky", timeout=60)["commit"] == upstream_repo.main


def test_new_upstream_commit_is_fetched(
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    smart_http: SmartHTTP,
) -> None:
    operator_factory()
    workspaces.create("one", {"project": "moving", "repository": smart_http.url("repo")})
    assert workspaces.wait_ready("one")["commit"] == upstream_repo.main
    newer = commit(upstream_repo.src, {"NEW.txt": "new\n"}, "newer")
    upstream_repo.republish()
    workspaces.create("two", {"project": "moving", "repository": smart_http.url("repo")})
    status = workspaces.wait_ready("two")
    assert status["commit"] == newer
    assert status["cache"] == {"hit": False, "fetched": True}


def test_repository_mismatch_is_refused(
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    smart_http: SmartHTTP,
) -> None:
    operator_factory()
    workspaces.create("first", {"project": "shared", "repository": smart_http.url("repo")})
    workspaces.wait_ready("first")
    workspaces.create("other", {"project": "shared", "repository": smart_http.url("repo") + "x"})
    condition = workspaces.wait_reason("other", "RepositoryMismatch")
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


def test_metrics_and_health(
    namespace: str,
    workspaces: Workspaces,
    operator_factory: StartOperator,
    upstream_repo: StandardRepo,
    smart_http: SmartHTTP,
) -> None:
    import urllib.request

    op = operator_factory()
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/healthz", timeout=5) as resp:
        assert resp.status == 200
    before = op.metrics()
    assert metric_value(before, "workspace_operator_materializations_total", '{result="ready"}') == 0
    workspaces.create("m1", {"project": "metrics", "repository": smart_http.url("repo")})
    workspaces.wait_ready("m1")
    workspaces.create(
        "m2", {"project": "metrics", "repository": smart_http.url("repo"), "ref": {"commit": upstream_repo.main}}
    )
    workspaces.wait_ready("m2")

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
    assert "materialized " + namespace + "/m1" in op.log()
