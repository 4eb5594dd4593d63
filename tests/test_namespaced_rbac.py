"""The namespaced RBAC variant: the operator works in a watched namespace and cannot read Secrets elsewhere.

Installs manifests/base with the namespaced-rbac component generated for the
test's namespace, under a namespace of its own for the operator (so that a
cluster-wide install by another test cannot lend it rights), then runs the
operator with that ServiceAccount's real token.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient, CoreV1Api, V1Namespace, V1ObjectMeta, V1Secret
from kubernetes.client.exceptions import ApiException

from cluster import Scene, new_api_client, service_account_token, token_kubeconfig
from helmcli import grants, namespaced_overlay, objects

pytestmark = pytest.mark.cluster
Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def _relocate(rendered: list[dict[str, Any]], operator_ns: str) -> list[dict[str, Any]]:
    """The install moved from namespace workspace-operator to operator_ns (subjects included)."""
    out = []
    for obj in rendered:
        if obj["kind"] == "CustomResourceDefinition":
            continue  # installed by the crd fixture
        if obj["kind"] == "Namespace":
            obj["metadata"]["name"] = operator_ns
        if obj["metadata"].get("namespace") == "workspace-operator":
            obj["metadata"]["namespace"] = operator_ns
        for subject in obj.get("subjects", []):
            subject["namespace"] = operator_ns
        out.append(obj)
    return out


@pytest.fixture
def operator_ns(kubectl: Kubectl) -> Iterator[str]:
    name = f"wo-nsrbac-{uuid.uuid4().hex[:8]}"
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_namespaced_rbac_serves_the_watched_namespace_and_denies_others(
    scene: Scene, kubectl: Kubectl, kubeconfig: Path, api_client: ApiClient, crd: None, operator_ns: str, tmp_path: Path
) -> None:
    rendered = objects(kubectl("kustomize", str(namespaced_overlay(tmp_path / "overlay", [scene.namespace]))).stdout)
    installed = _relocate(rendered, operator_ns)
    assert not {g for g in grants(installed, operator_namespace=operator_ns) if g[0] == "cluster"}
    kubectl(
        "apply", "--server-side", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": installed})
    )
    core = CoreV1Api(api_client)
    unwatched = f"t-unwatched-{uuid.uuid4().hex[:6]}"
    core.create_namespace(V1Namespace(metadata=V1ObjectMeta(name=unwatched)))
    try:
        for ns in (scene.namespace, unwatched):
            core.create_namespaced_secret(
                ns, V1Secret(metadata=V1ObjectMeta(name="creds"), string_data={"password": "s3cret-x"})
            )
        token = service_account_token(core, "workspace-operator", operator_ns, 3600)

        # What the token may do, asked of the API server.
        def can(*args: str) -> str:
            return kubectl("auth", "can-i", *args, token=token, check=False).stdout.strip()

        assert can("get", "secrets", "-n", scene.namespace) == "yes"
        assert can("patch", "workspaces.crafting.dev", "-n", scene.namespace) == "yes"
        assert can("create", "events", "-n", scene.namespace) == "yes"
        assert can("get", "secrets", "-n", unwatched) == "no"
        assert can("get", "secrets", "-n", operator_ns) == "no"
        assert can("list", "workspaces.crafting.dev", "--all-namespaces") == "no"
        assert can("list", "secrets", "-n", scene.namespace) == "no"

        # The operator works with it in the watched namespace...
        config = token_kubeconfig(kubeconfig, token, tmp_path / "operator-kubeconfig")
        op = scene.start(env={"KUBECONFIG": str(config), "WORKSPACE_LEASE_NAMESPACE": operator_ns})
        scene.workspaces.create("scoped", scene.spec("scoped"))
        assert scene.workspaces.wait_ready("scoped")["commit"] == scene.repo.main
        assert "Forbidden" not in op.log(), op.log()[-3000:]

        # ...and the same credentials cannot read the Secret of a namespace it does not watch.
        scoped = CoreV1Api(_token_client(config))
        assert scoped.read_namespaced_secret("creds", scene.namespace).data
        with pytest.raises(ApiException) as denied:
            scoped.read_namespaced_secret("creds", unwatched)
        assert denied.value.status == 403
    finally:
        core.delete_namespace(unwatched)


def _token_client(config: Path) -> ApiClient:
    return new_api_client(config)
