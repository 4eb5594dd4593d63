"""Structured log fields: `log.info(..., extra=fields(...))`.

With WORKSPACE_LOG_FORMAT=json the operator logs through kopf's JSON formatter, which
turns every `extra` key into a JSON key and puts the object reference under "object",
as on kopf's own lines; the text format keeps the plain message.
"""

from __future__ import annotations

from typing import Any

from workspace_operator.spec import GROUP, KIND, VERSION


def fields(
    namespace: str,
    name: str | None = None,
    *,
    project: str | None = None,
    reason: str | None = None,
    commit: str | None = None,
) -> dict[str, Any]:
    """Keys for one Workspace (or, without a name, one project); absent values are left out."""
    found: dict[str, Any] = {"namespace": namespace}
    if name is not None:
        # kopf's reference key: its JSON formatter shows it as "object" (a LogRecord has its own `name`).
        found["k8s_ref"] = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "namespace": namespace, "name": name}
    found.update(
        {
            key: value
            for key, value in (("project", project), ("reason", reason), ("commit", commit))
            if value is not None
        }
    )
    return found
