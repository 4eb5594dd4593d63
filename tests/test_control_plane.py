"""The local control plane is a real Kubernetes API server."""

from __future__ import annotations

import json
from collections.abc import Callable
from subprocess import CompletedProcess

import pytest
from kubernetes.client import (
    ApiClient,
    CoordinationV1Api,
    CoreV1Api,
    CustomObjectsApi,
    V1ConfigMap,
    V1Lease,
    V1LeaseSpec,
    V1ObjectMeta,
    V1OwnerReference,
    V1ServiceAccount,
)
from kubernetes.client.exceptions import ApiException

from cluster import lease_spec, service_account_token, wait_for

pytestmark = pytest.mark.cluster

Kubectl = Callable[..., CompletedProcess[str]]

GADGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "gadgets.test.crafting.dev"},
    "spec": {
        "group": "test.crafting.dev",
        "names": {"kind": "Gadget", "plural": "gadgets", "singular": "gadget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {"size": {"type": "integer", "minimum": 1, "maximum": 10}},
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_lease_round_trip(api_client: ApiClient, namespace: str) -> None:
    api = CoordinationV1Api(api_client)
    api.create_namespaced_lease(
        namespace,
        V1Lease(metadata=V1ObjectMeta(name="probe"), spec=V1LeaseSpec(holder_identity="me", lease_duration_seconds=7)),
    )
    lease = api.read_namespaced_lease("probe", namespace)
    assert lease_spec(lease).holder_identity == "me"
    assert lease_spec(lease).lease_duration_seconds == 7
    assert lease.metadata and lease.metadata.resource_version


def test_crd_is_served_and_validates(kubectl: Kubectl, api_client: ApiClient, namespace: str) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(GADGET_CRD))
    kubectl("wait", "--for=condition=Established", "crd/gadgets.test.crafting.dev", "--timeout=60s")
    api = CustomObjectsApi(api_client)
    good = {"apiVersion": "test.crafting.dev/v1", "kind": "Gadget", "metadata": {"name": "ok"}, "spec": {"size": 3}}
    api.create_namespaced_custom_object("test.crafting.dev", "v1", namespace, "gadgets", good)
    bad = kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        check=False,
        input=json.dumps({**good, "metadata": {"name": "bad"}, "spec": {"size": 99}}),
    )
    assert bad.returncode != 0
    assert "spec.size: Invalid value: 99: spec.size in body should be less than or equal to 10" in bad.stderr


def test_rbac_is_enforced_and_token_request_works(api_client: ApiClient, kubectl: Kubectl, namespace: str) -> None:
    core = CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, V1ServiceAccount(metadata=V1ObjectMeta(name="nobody")))
    token = service_account_token(core, "nobody", namespace)
    whoami = kubectl("auth", "whoami", "-o", "json", token=token)
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:nobody"
    denied = kubectl("get", "configmaps", "-n", namespace, token=token, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr and 'cannot list resource "configmaps"' in denied.stderr


def test_garbage_collector_follows_owner_references(api_client: ApiClient, namespace: str) -> None:
    core = CoreV1Api(api_client)
    owner = core.create_namespaced_config_map(namespace, V1ConfigMap(metadata=V1ObjectMeta(name="owner")))
    assert owner.metadata and owner.metadata.uid
    reference = V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    core.create_namespaced_config_map(
        namespace, V1ConfigMap(metadata=V1ObjectMeta(name="child", owner_references=[reference]))
    )
    core.delete_namespaced_config_map("owner", namespace)

    def child_gone() -> bool:
        try:
            core.read_namespaced_config_map("child", namespace)
        except ApiException as error:
            return bool(error.status == 404)
        return False

    wait_for(child_gone, timeout=60, message="garbage collector to delete the dependent ConfigMap")


@pytest.mark.parametrize("resource", ["leases.coordination.k8s.io", "workspaces.crafting.dev"])
def test_api_discovery_lists(kubectl: Kubectl, crd: None, resource: str) -> None:
    names = kubectl("api-resources", "-o", "name").stdout.split()
    assert resource in names
