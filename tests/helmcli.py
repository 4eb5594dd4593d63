"""helm for tests: the binary hack/helm.py builds once per machine, and rendering helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "workspace-operator"
sys.path.insert(0, str(REPO / "hack"))
import helm as helm_build  # noqa: E402
import namespaced_rbac  # noqa: E402


def helm(*args: str, kubeconfig: Path | None = None, timeout: float = 300) -> str:
    config = ["--kubeconfig", str(kubeconfig)] if kubeconfig else []
    result = subprocess.run(
        [str(helm_build.build(quiet=True)), *config, *args], capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def set_args(values: dict[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def template(
    values: dict[str, str] | None = None,
    *,
    release: str = "workspace-operator",
    namespace: str = "workspace-operator",
    include_crds: bool = False,
) -> str:
    args = ["template", release, str(CHART), "--namespace", namespace, *set_args(values or {})]
    return helm(*args, *(["--include-crds"] if include_crds else []))


def objects(rendered: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def namespaced_overlay(directory: Path, namespaces: list[str], *, components: tuple[str, ...] = ()) -> Path:
    """An overlay of manifests/base with the namespaced-rbac component generated for `namespaces`."""
    component = directory / "namespaced-rbac"
    namespaced_rbac.write(namespaces, component)
    base = Path(os.path.relpath(REPO / "manifests" / "base", directory))
    extra = [str(Path(os.path.relpath(REPO / "manifests" / "components" / c, directory))) for c in components]
    (directory / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(base)],
                "components": ["namespaced-rbac", *extra],
            }
        )
    )
    return directory


def grants(rendered: list[dict[str, Any]], *, operator_namespace: str) -> set[tuple[str, str, str, str]]:
    """(where, apiGroup, resource, verb) the operator's ServiceAccount is granted, names ignored.

    where: "cluster", "operator-namespace" or the namespace of a Role binding.
    """
    rules: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for obj in rendered:
        if obj["kind"] in ("ClusterRole", "Role"):
            rules[(obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])] = obj["rules"]
    out: set[tuple[str, str, str, str]] = set()
    for obj in rendered:
        if obj["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        namespace = obj["metadata"].get("namespace", "")
        ref = obj["roleRef"]
        key = (ref["kind"], "" if ref["kind"] == "ClusterRole" else namespace, ref["name"])
        where = (
            "cluster"
            if obj["kind"] == "ClusterRoleBinding"
            else ("operator-namespace" if namespace == operator_namespace else namespace)
        )
        for rule in rules[key]:
            out |= {
                (where, group, resource, verb)
                for group in rule["apiGroups"]
                for resource in rule["resources"]
                for verb in rule["verbs"]
            }
    return out
