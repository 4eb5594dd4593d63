"""Workspace objects as the API server hands them to us → typed engine requests.

Pure: no API calls. The credentials Secret is read separately (kube.py) and
passed in, so that this module can be unit-tested with plain dicts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from workspace_operator.git import CheckoutRequest, Credentials, GitError, Revision
from workspace_operator.git.layout import invalid

GROUP = "crafting.dev"
VERSION = "v1"
PLURAL = "workspaces"
KIND = "Workspace"


def revision_of(spec: Mapping[str, Any]) -> Revision:
    ref = spec.get("ref") or {}
    if not isinstance(ref, Mapping):
        raise invalid("spec.ref must be an object")
    return Revision(branch=ref.get("branch"), tag=ref.get("tag"), name=ref.get("name"), commit=ref.get("commit"))


def checkout_request(
    namespace: str, name: str, spec: Mapping[str, Any], credentials: Credentials | None = None
) -> CheckoutRequest:
    """Translate a Workspace spec; raises GitError(InvalidSpec) for anything malformed."""
    try:
        sparse = spec.get("sparse") or ()
        if not isinstance(sparse, (list, tuple)) or not all(isinstance(s, str) for s in sparse):
            raise invalid("spec.sparse must be a list of paths")
        return CheckoutRequest(
            namespace=namespace,
            project=str(spec.get("project", "")),
            name=name,
            repository=str(spec.get("repository", "")),
            revision=revision_of(spec),
            sub_path=spec.get("subPath") or None,
            sparse=tuple(sparse),
            submodules=bool(spec.get("submodules", False)),
            credentials=credentials,
        )
    except GitError:
        raise
    except (TypeError, AttributeError, ValueError) as error:
        raise invalid(f"malformed spec: {error}") from None


def secret_name(spec: Mapping[str, Any]) -> str | None:
    creds = spec.get("credentials") or {}
    name = creds.get("secretName") if isinstance(creds, Mapping) else None
    return str(name) if name else None


ALLOWED_REPOSITORIES = "crafting.dev/repositories"


def credentials_allowed(annotations: Mapping[str, str], repository: str) -> bool:
    """A Secret lends itself only to the repositories its owner listed.

    Without this, anyone allowed to create Workspaces could point any Secret of
    the namespace at a server they control and receive its token or key. The
    annotation holds repository URL prefixes, comma or newline separated.
    """
    raw = annotations.get(ALLOWED_REPOSITORIES, "")
    prefixes = [p.strip() for p in raw.replace("\n", ",").split(",") if p.strip()]
    return any(repository == p or repository.startswith(p.rstrip("/") + "/") for p in prefixes)


def credentials_from_secret(data: Mapping[str, str]) -> Credentials:
    """Secret data (already base64-decoded) → Credentials; unknown keys are ignored."""
    return Credentials(
        username=data.get("username"),
        password=data.get("password"),
        ssh_private_key=data.get("ssh-privatekey"),
        known_hosts=data.get("known_hosts"),
        ca_bundle=data.get("ca.crt"),
    )


def ttl_seconds(spec: Mapping[str, Any], default: int) -> int:
    value = spec.get("ttlSecondsAfterReady")
    return default if value is None else int(value)


def shard_of(namespace: str, project: str, replicas: int) -> int:
    """Stable assignment of a project to a replica: all of a project's work on one replica."""
    digest = hashlib.sha256(f"{namespace}/{project}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % replicas
