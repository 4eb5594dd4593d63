"""manifests/ installs, and the operator works with exactly the RBAC it grants."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes.client import ApiClient, CoreV1Api

from cluster import REPO, Scene, service_account_token, token_kubeconfig

pytestmark = pytest.mark.cluster

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
OPERATOR_NS = "workspace-operator"


@pytest.fixture(scope="module")
def installed(kubectl: Kubectl, crd: None) -> None:
    # A server-side dry run cannot place objects in a namespace that does not exist yet.
    kubectl("apply", "-f", str(REPO / "manifests" / "base" / "namespace.yaml"))
    kubectl("apply", "-k", str(REPO / "manifests"), "--server-side", "--force-conflicts", "--dry-run=server")
    kubectl("apply", "-k", str(REPO / "manifests"), "--server-side", "--force-conflicts")


@pytest.fixture
def operator_token(installed: None, api_client: ApiClient) -> str:
    return service_account_token(CoreV1Api(api_client), "workspace-operator", OPERATOR_NS, seconds=3600)


def test_manifests_render_and_pass_server_dry_run(kubectl: Kubectl, installed: None) -> None:
    rendered = kubectl("kustomize", str(REPO / "manifests")).stdout
    for kind in (
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "Deployment",
        "PersistentVolumeClaim",
        "Service",
        "ConfigMap",
        "CustomResourceDefinition",
    ):
        assert f"kind: {kind}\n" in rendered, kind
    kubectl(
        "apply",
        "-k",
        str(REPO / "manifests" / "overlays" / "scaled"),
        "--server-side",
        "--force-conflicts",
        "--dry-run=server",
    )
    overlay = kubectl("kustomize", str(REPO / "manifests" / "overlays" / "example-existing-claim")).stdout
    assert "kind: PersistentVolumeClaim" not in overlay and "claimName: ci-workspaces" in overlay
    deployment = kubectl(
        "get",
        "deployment",
        "workspace-operator",
        "-n",
        OPERATOR_NS,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].securityContext}",
    ).stdout
    assert '"readOnlyRootFilesystem":true' in deployment and '"allowPrivilegeEscalation":false' in deployment


def test_operator_runs_with_its_own_service_account(
    scene: Scene, kubectl: Kubectl, kubeconfig: Path, operator_token: str, tmp_path: Path
) -> None:
    config = token_kubeconfig(kubeconfig, operator_token, tmp_path / "operator-kubeconfig")
    op = scene.start(env={"KUBECONFIG": str(config), "WORKSPACE_LEASE_NAMESPACE": OPERATOR_NS})
    scene.workspaces.create("rbac", {**scene.spec("rbac"), "ttlSecondsAfterReady": 0})
    status = scene.workspaces.wait_ready("rbac")
    assert status["commit"] == scene.repo.main
    path = op.root / status["path"]
    assert path.is_dir()
    scene.workspaces.delete("rbac")
    scene.workspaces.wait_gone("rbac")
    assert not path.exists()
    assert "Forbidden" not in op.log() and "403" not in op.log(), op.log()[-3000:]


@pytest.mark.parametrize(
    "verb_resource",
    [
        ("list", "secrets", "--all-namespaces"),
        ("list", "secrets", "-n", "default"),
        ("watch", "secrets", "-n", "default"),
        ("delete", "leases", "-n", "default"),
        ("create", "leases", "-n", "default"),
        ("watch", "leases", "-n", OPERATOR_NS),
        ("get", "pods", "-n", "default"),
        ("get", "configmaps", "-n", "default"),
        ("create", "workspaces", "-n", "default"),
        ("update", "clusterroles"),
        ("get", "nodes"),
        ("list", "namespaces"),
        ("watch", "namespaces"),
        ("delete", "namespaces/default"),
    ],
)
def test_operator_token_is_denied_what_it_does_not_need(
    kubectl: Kubectl, operator_token: str, verb_resource: tuple[str, ...]
) -> None:
    result = kubectl("auth", "can-i", *verb_resource, token=operator_token, check=False)
    assert result.stdout.strip() == "no", f"operator may {' '.join(verb_resource)}"


def test_operator_permissions_are_exactly_the_documented_ones(kubectl: Kubectl, operator_token: str) -> None:
    listing = kubectl("auth", "can-i", "--list", "-n", OPERATOR_NS, token=operator_token).stdout
    print(listing)  # recorded in the test output
    rows = {line.split()[0]: line for line in listing.splitlines()[1:] if line.strip()}
    assert "[get list create update patch delete]" in rows["leases.coordination.k8s.io"]
    assert "[get list watch patch delete]" in rows["workspaces.crafting.dev"]
    assert "[patch]" in rows["workspaces.crafting.dev/status"]
    assert "[get]" in rows["secrets"]
    assert "[create]" in rows["events"]
    assert "[get]" in rows["namespaces"]  # a namespace's UID, by name
    assert "*.*" not in rows
