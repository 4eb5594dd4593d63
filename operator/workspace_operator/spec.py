"""Workspace objects as the API server hands them to us → typed engine requests.

Pure: no API calls. The credentials Secret is read separately (kube.py) and
passed in, so that this module can be unit-tested with plain dicts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from workspace_operator.git import (
    CheckoutRequest,
    Credentials,
    GitError,
    Revision,
    allowed_by,
    invalid,
    invalid_credentials,
)

GROUP = "crafting.dev"
VERSION = "v1"
PLURAL = "workspaces"
KIND = "Workspace"
# Added before anything is created on the volume, removed once the worktree is gone.
FINALIZER = "crafting.dev/worktree-cleanup"
# spec.mode: a worktree on the volume (the default), or only the commit pinned in the cache.
WORKTREE = "Worktree"
CACHE_ONLY = "CacheOnly"
MODES = (WORKTREE, CACHE_ONLY)


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
        mode = spec.get("mode") or WORKTREE
        if mode not in MODES:
            raise invalid(f"spec.mode must be one of {', '.join(MODES)}")
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
            cache_only=mode == CACHE_ONLY,
            tags=bool(spec.get("tags", False)),
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


def repository_scopes(annotations: Mapping[str, str]) -> tuple[str, ...]:
    raw = annotations.get(ALLOWED_REPOSITORIES, "")
    return tuple(p.strip() for p in raw.replace("\n", ",").split(",") if p.strip())


def credentials_allowed(annotations: Mapping[str, str], repository: str) -> bool:
    """A Secret lends itself only to the repositories its owner listed.

    Without this, anyone allowed to create Workspaces could point any Secret of
    the namespace at a server they control and receive its token or key. The
    annotation lists repository URLs, comma or newline separated; each covers
    itself and everything below it, compared as parsed origins segment by
    segment (git/origins.py), never as string prefixes.
    """
    return allowed_by(repository_scopes(annotations), repository)


_SECRET_KEYS = {
    "username": "username",
    "password": "password",
    "ssh-privatekey": "ssh_private_key",
    "known_hosts": "known_hosts",
    "ca.crt": "ca_bundle",
}


def credentials_from_secret(data: Mapping[str, bytes], annotations: Mapping[str, str] | None = None) -> Credentials:
    """Secret data (base64-decoded bytes) → Credentials; unknown keys are ignored.

    A value that is not UTF-8 is a permanent InvalidCredentials failure: the
    Secret is wrong, and reading it again will not make it right.
    """
    values: dict[str, str] = {}
    for key, name in _SECRET_KEYS.items():
        if key in data:
            try:
                values[name] = data[key].decode("utf-8")
            except UnicodeDecodeError:
                raise invalid_credentials(f"the Secret's {key!r} is not UTF-8 text") from None
    return Credentials(**values, scopes=repository_scopes(annotations or {}))


def shard_of(namespace: str, project: str, replicas: int) -> int:
    """Stable assignment of a project to a replica: all of a project's work on one replica."""
    digest = hashlib.sha256(f"{namespace}/{project}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % replicas
