"""Monitoring: the kustomize component and /metrics series that move with the work.

The monitoring.coreos.com CRDs are stand-ins (tests/monitoring_crds.py) with
the fields the manifests use, so a server-side dry run still validates them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiClient, CoordinationV1Api, V1Lease, V1LeaseSpec, V1ObjectMeta

import monitoring_crds
from cluster import REPO, Scene, StartOperator, wait_for
from helmcli import objects
from workspace_operator.lock import lease_name

pytestmark = pytest.mark.cluster
Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def value(text: str, series: str) -> float | None:
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def test_monitoring_component_passes_server_dry_run(kubectl: Kubectl, crd: None, tmp_path: Path) -> None:
    monitoring_crds.install(kubectl)
    kubectl("apply", "-f", str(REPO / "manifests" / "base" / "namespace.yaml"))
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(REPO / "manifests" / "base", tmp_path)],
                "components": [os.path.relpath(REPO / "manifests" / "components" / "monitoring", tmp_path)],
            }
        )
    )
    rendered = kubectl("kustomize", str(tmp_path)).stdout
    assert {"ServiceMonitor", "PrometheusRule"} <= {obj["kind"] for obj in objects(rendered)}
    kubectl("apply", "--dry-run=server", "--server-side", "--force-conflicts", "-f", "-", input=rendered)
    # The stand-ins do validate: a misspelt field is refused.
    monitor = next(obj for obj in objects(rendered) if obj["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["prot"] = monitor["spec"]["endpoints"][0].pop("port")
    result = kubectl("apply", "--dry-run=server", "--server-side", "-f", "-", input=json.dumps(monitor), check=False)
    assert result.returncode != 0 and "prot" in result.stderr, result.stderr


def test_metrics_move_with_the_work(scene: Scene, api_client: ApiClient) -> None:
    op = scene.start(env={"WORKSPACE_GC_INTERVAL_SECONDS": "1s"})
    before = op.metrics()
    assert re.search(r'^workspace_operator_build_info\{python="[\d.]+",version="0\.1\.0"\} 1\.0$', before, re.M)
    assert value(before, "workspace_operator_materializations_in_flight") == 0
    assert value(before, "workspace_operator_materializations_queued") == 0

    # Someone else holds the project's Lease: the materialization queues behind it.
    leases = CoordinationV1Api(api_client)
    now = datetime.now(UTC)
    name = lease_name(scene.namespace, "mon")
    leases.create_namespaced_lease(
        scene.namespace,
        V1Lease(
            metadata=V1ObjectMeta(name=name),
            spec=V1LeaseSpec(
                holder_identity="someone-else", lease_duration_seconds=3600, acquire_time=now, renew_time=now
            ),
        ),
    )
    scene.workspaces.create("mon", scene.spec("mon"))
    wait_for(
        lambda: value(op.metrics(), "workspace_operator_materializations_queued") == 1,
        timeout=60,
        message="one materialization queued",
    )
    leases.patch_namespaced_lease(name, scene.namespace, {"spec": {"holderIdentity": None}})
    assert scene.workspaces.wait_ready("mon")["commit"] == scene.repo.main
    fetched_at = time.time()

    labels = f'{{namespace="{scene.namespace}",project="mon"}}'

    def published() -> str | None:
        text = op.metrics()
        return text if value(text, f"workspace_operator_cache_bytes{labels}") else None

    after = wait_for(published, timeout=60, message="cache series published by a GC pass")
    assert value(after, "workspace_operator_materializations_queued") == 0
    assert value(after, "workspace_operator_materializations_in_flight") == 0
    assert value(after, 'workspace_operator_materializations_total{result="ready"}') == 1
    # A new cache of the default branch is one clone (no ls-remote, no separate fetch).
    assert (value(after, 'workspace_operator_upstream_requests_total{kind="clone",result="ok"}') or 0) == 1
    assert (value(after, f"workspace_operator_cache_bytes{labels}") or 0) > 1000
    last_fetch = value(after, f"workspace_operator_cache_last_fetch_timestamp_seconds{labels}")
    assert last_fetch is not None and abs(last_fetch - fetched_at) < 60
    wait_for(
        lambda: value(op.metrics(), 'workspace_operator_workspaces{phase="Ready"}') == 1,
        timeout=30,
        message="Workspaces by phase",
    )


def test_metrics_negotiate_openmetrics(operator_factory: StartOperator) -> None:
    op = operator_factory()
    url = f"http://127.0.0.1:{op.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as plain:
        assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    request = urllib.request.Request(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(request, timeout=5) as negotiated:
        assert negotiated.headers["Content-Type"].startswith("application/openmetrics-text")
        body = negotiated.read().decode()
    assert body.rstrip().endswith("# EOF") and "workspace_operator_build_info" in body
