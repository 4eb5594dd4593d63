"""Minimal stand-ins for the Prometheus Operator's ServiceMonitor and PrometheusRule CRDs.

The local control plane has no Prometheus Operator. These CRDs declare only
the fields the project's manifests use, with their types and required keys,
so a server-side dry run still rejects a misspelt field or a wrong type
(kubectl's field validation is strict) without vendoring the real schemas.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from subprocess import CompletedProcess
from typing import Any

Kubectl = Callable[..., CompletedProcess[str]]
GROUP = "monitoring.coreos.com"
_STRING = {"type": "string"}
_STRING_MAP = {"type": "object", "additionalProperties": _STRING}
_SELECTOR = {"type": "object", "properties": {"matchLabels": _STRING_MAP}}

SERVICE_MONITOR_SPEC = {
    "type": "object",
    "required": ["selector", "endpoints"],
    "properties": {
        "selector": _SELECTOR,
        "namespaceSelector": {
            "type": "object",
            "properties": {"matchNames": {"type": "array", "items": _STRING}, "any": {"type": "boolean"}},
        },
        "endpoints": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "port": _STRING,
                    "path": _STRING,
                    "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                    "scheme": _STRING,
                },
            },
        },
    },
}

PROMETHEUS_RULE_SPEC = {
    "type": "object",
    "required": ["groups"],
    "properties": {
        "groups": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "rules"],
                "properties": {
                    "name": _STRING,
                    "interval": _STRING,
                    "rules": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["expr"],
                            "properties": {
                                "alert": _STRING,
                                "record": _STRING,
                                "expr": _STRING,
                                "for": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                "labels": _STRING_MAP,
                                "annotations": _STRING_MAP,
                            },
                        },
                    },
                },
            },
        }
    },
}


def crd(kind: str, plural: str, spec_schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": _STRING,
                                "kind": _STRING,
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def install(kubectl: Kubectl) -> None:
    """Idempotent: server-side apply, then wait until both are served."""
    items = [
        crd("ServiceMonitor", "servicemonitors", SERVICE_MONITOR_SPEC),
        crd("PrometheusRule", "prometheusrules", PROMETHEUS_RULE_SPEC),
    ]
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    for item in items:
        kubectl("wait", "--for=condition=Established", f"crd/{item['metadata']['name']}", "--timeout=60s")
