"""The Helm chart: lints, renders what the server accepts, installs, and grants what kustomize grants."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes.client import ApiClient, CoreV1Api

import monitoring_crds
from cluster import REPO, Scene, service_account_token, token_kubeconfig
from helmcli import CHART, grants, helm, namespaced_overlay, objects, set_args, template

pytestmark = pytest.mark.cluster
Kubectl = Callable[..., subprocess.CompletedProcess[str]]

# The main value combinations: each must render and pass a server-side dry run.
COMBINATIONS: dict[str, dict[str, str]] = {
    "defaults": {},
    "namespaced": {"rbac.scope": "namespaced", "watchNamespaces": "{WATCHED}"},
    "existing-claim-scaled": {"volume.existingClaim": "mine", "replicaCount": "3", "watchNamespaces": "{WATCHED}"},
    "monitoring-ca-egress-proxy": {
        "serviceMonitor.enabled": "true",
        "prometheusRule.enabled": "true",
        "caBundle.configMap": "corp-ca",
        "networkPolicy.egress[0].to[0].ipBlock.cidr": "10.0.0.0/8",
        "extraEnv[0].name": "HTTPS_PROXY",
        "extraEnv[0].value": "http://proxy.corp.example:3128",
        "config.WORKSPACE_GIT_TIMEOUT_SECONDS": "10m",
        "resources.limits.memory": "1Gi",
    },
    "no-networkpolicy-no-rbac": {
        "networkPolicy.enabled": "false",
        "rbac.create": "false",
        "serviceAccount.create": "false",
        "serviceAccount.name": "existing",
    },
}


@pytest.fixture(scope="module")
def release_namespaces(kubectl: Kubectl) -> Iterator[tuple[str, str]]:
    """(release namespace, a watched namespace), created for this module and removed after it."""
    suffix = uuid.uuid4().hex[:8]
    names = (f"wo-helm-{suffix}", f"wo-watched-{suffix}")
    for name in names:
        kubectl("create", "namespace", name)
    yield names
    for name in names:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


def _values(combination: str, watched: str) -> dict[str, str]:
    return {k: v.replace("WATCHED", watched) for k, v in COMBINATIONS[combination].items()}


@pytest.mark.parametrize("combination", ["defaults", "namespaced"])
def test_chart_lints(combination: str) -> None:
    out = helm("lint", "--strict", str(CHART), *set_args(_values(combination, "ci")))
    assert "1 chart(s) linted, 0 chart(s) failed" in out, out


def test_chart_refuses_contradictory_values() -> None:
    with pytest.raises(AssertionError, match=r"rbac\.scope=namespaced needs watchNamespaces"):
        template({"rbac.scope": "namespaced"})
    with pytest.raises(AssertionError, match=r"rbac\.scope must be cluster or namespaced"):
        template({"rbac.scope": "everywhere"})


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_chart_renders_what_the_server_accepts(
    combination: str, kubectl: Kubectl, crd: None, release_namespaces: tuple[str, str]
) -> None:
    release_ns, watched = release_namespaces
    monitoring_crds.install(kubectl)
    rendered = template(_values(combination, watched), release=f"wo-{combination}", namespace=release_ns)
    kinds = {obj["kind"] for obj in objects(rendered)}
    assert {"Deployment", "StatefulSet"} & kinds and "ConfigMap" in kinds and "Service" in kinds
    kubectl("apply", "--dry-run=server", "--server-side", "-f", "-", input=rendered)


def test_every_chart_object_carries_the_standard_labels() -> None:
    values = {
        "rbac.scope": "namespaced",
        "watchNamespaces": "{ci}",
        "serviceMonitor.enabled": "true",
        "prometheusRule.enabled": "true",
    }
    for obj in objects(template(values, release="ci-cache")):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "workspace-operator", obj["kind"]
        assert labels["app.kubernetes.io/instance"] == "ci-cache", obj["kind"]
        assert labels["app.kubernetes.io/version"] == "0.1.0", obj["kind"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm", obj["kind"]
        assert labels["app.kubernetes.io/component"], obj["kind"]


def test_chart_and_kustomize_grant_the_same_rbac(kubectl: Kubectl, tmp_path: Path) -> None:
    chart_cluster = grants(objects(template()), operator_namespace="workspace-operator")
    base = grants(
        objects(kubectl("kustomize", str(REPO / "manifests")).stdout), operator_namespace="workspace-operator"
    )
    assert chart_cluster == base
    assert ("cluster", "", "secrets", "get") in base

    overlay = namespaced_overlay(tmp_path, ["ci", "builds"])
    kustomized = grants(objects(kubectl("kustomize", str(overlay)).stdout), operator_namespace="workspace-operator")
    chart_namespaced = grants(
        objects(template({"rbac.scope": "namespaced", "watchNamespaces": "{ci,builds}"})),
        operator_namespace="workspace-operator",
    )
    assert chart_namespaced == kustomized
    assert not {g for g in kustomized if g[0] == "cluster"}, "namespaced variant must grant nothing cluster-wide"
    assert {g[0] for g in kustomized} == {"ci", "builds", "operator-namespace"}


def test_helm_install_then_the_operator_materializes_with_the_releases_token(
    scene: Scene, kubectl: Kubectl, kubeconfig: Path, api_client: ApiClient, crd: None, tmp_path: Path
) -> None:
    release_ns = f"wo-install-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", release_ns)
    try:
        helm(
            "install",
            "ci",
            str(CHART),
            "--namespace",
            release_ns,
            "--wait=false",
            *set_args({"rbac.scope": "namespaced", "watchNamespaces": f"{{{scene.namespace}}}"}),
            kubeconfig=kubeconfig,
        )
        listing = helm("list", "--namespace", release_ns, "--output", "json", kubeconfig=kubeconfig)
        assert '"status":"deployed"' in listing, listing
        config = kubectl(
            "get",
            "configmap",
            "ci-workspace-operator-config",
            "-n",
            release_ns,
            "-o",
            "jsonpath={.data.WORKSPACE_NAMESPACES}",
        ).stdout
        assert config == scene.namespace
        token = service_account_token(CoreV1Api(api_client), "ci-workspace-operator", release_ns, 3600)
        operator_config = token_kubeconfig(kubeconfig, token, tmp_path / "release-kubeconfig")
        op = scene.start(env={"KUBECONFIG": str(operator_config), "WORKSPACE_LEASE_NAMESPACE": release_ns})
        scene.workspaces.create("helm", {**scene.spec("helm"), "ttlSecondsAfterReady": 0})
        status = scene.workspaces.wait_ready("helm")
        assert status["commit"] == scene.repo.main
        scene.workspaces.delete("helm")
        scene.workspaces.wait_gone("helm")
        assert "Forbidden" not in op.log() and " 403" not in op.log(), op.log()[-3000:]
    finally:
        helm("uninstall", "ci", "--namespace", release_ns, kubeconfig=kubeconfig)
        kubectl("delete", "namespace", release_ns, "--wait=false", check=False)
