"""spec.py: Workspace objects (plain dicts, as the API server hands them over) → engine requests."""

from __future__ import annotations

from typing import Any

import pytest

from workspace_operator.git import GitError, Reason, Revision
from workspace_operator.spec import (
    ALLOWED_REPOSITORIES,
    checkout_request,
    credentials_allowed,
    credentials_from_secret,
    revision_of,
    secret_name,
    shard_of,
)

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_full_spec_translates_field_by_field() -> None:
    spec = {
        "project": "proj",
        "repository": "https://git.example/r.git",
        "ref": {"branch": "main", "commit": SHA},
        "subPath": "services/api",
        "sparse": ["services", "libs"],
        "submodules": True,
    }
    request = checkout_request("team-a", "ws-1", spec)

    assert (request.namespace, request.name, request.project) == ("team-a", "ws-1", "proj")
    assert request.repository == "https://git.example/r.git"
    assert request.revision == Revision(branch="main", commit=SHA)
    assert (request.sub_path, request.sparse, request.submodules) == ("services/api", ("services", "libs"), True)
    assert request.credentials is None


def test_minimal_spec_defaults() -> None:
    request = checkout_request("ns", "w", {"project": "p", "repository": "https://git.example/r.git"})
    assert request.revision == Revision()
    assert (request.sub_path, request.sparse, request.submodules) == (None, (), False)


@pytest.mark.parametrize(
    "spec",
    [
        {"sparse": "services"},  # a string, not a list
        {"sparse": [1, 2]},
        {"ref": "main"},  # not an object
        {"ref": {"branch": "main", "tag": "v1"}},  # two kinds of ref
        {"ref": {"commit": "HEAD"}},
    ],
)
def test_malformed_specs_are_invalid_spec_errors(spec: dict[str, Any]) -> None:
    with pytest.raises(GitError) as caught:
        checkout_request("ns", "w", {"project": "p", "repository": "https://git.example/r.git", **spec})
    assert caught.value.reason is Reason.INVALID_SPEC


def test_revision_of_reads_every_kind_of_ref() -> None:
    assert revision_of({"ref": {"tag": "v1.0"}}) == Revision(tag="v1.0")
    assert revision_of({"ref": {"name": "refs/pull/42/head"}}) == Revision(name="refs/pull/42/head")
    assert revision_of({"ref": None}) == Revision()


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ({"credentials": {"secretName": "git-creds"}}, "git-creds"),
        ({"credentials": {}}, None),
        ({"credentials": "git-creds"}, None),  # malformed: ignored, the CRD rejects it first
        ({}, None),
    ],
)
def test_secret_name(spec: dict[str, Any], name: str | None) -> None:
    assert secret_name(spec) == name


@pytest.mark.parametrize(
    ("listed", "repository", "allowed"),
    [
        ("https://git.example/team/repo.git", "https://git.example/team/repo.git", True),
        ("https://git.example/team", "https://git.example/team/repo.git", True),
        ("https://git.example/team/", "https://git.example/team/repo.git", True),
        ("https://git.example/team", "https://git.example/team-evil/repo.git", False),  # segment-wise, not a prefix
        ("https://git.example/a,\n https://git.example/team", "https://git.example/team/r.git", True),
        ("", "https://git.example/team/repo.git", False),
        ("https://other.example/team", "https://git.example/team/repo.git", False),
    ],
)
def test_a_secret_lends_itself_only_to_listed_repositories(listed: str, repository: str, allowed: bool) -> None:
    assert credentials_allowed({ALLOWED_REPOSITORIES: listed}, repository) is allowed


def test_no_annotation_lends_nothing() -> None:
    assert credentials_allowed({}, "https://git.example/team/repo.git") is False


def test_credentials_from_secret_takes_known_keys_only() -> None:
    creds = credentials_from_secret(
        {
            "username": b"bot",
            "password": b"pw",
            "ssh-privatekey": b"KEY",
            "known_hosts": b"host ssh-ed25519 AAAA",
            "unrelated": b"x",
        }
    )
    assert (creds.username, creds.password, creds.ssh_private_key, creds.known_hosts) == (
        "bot",
        "pw",
        "KEY",
        "host ssh-ed25519 AAAA",
    )
    assert credentials_from_secret({}).password is None


def test_shards_are_stable_in_range_and_spread() -> None:
    projects = [("team", f"p{i}") for i in range(200)]
    shards = [shard_of(ns, p, 3) for ns, p in projects]
    assert shards == [shard_of(ns, p, 3) for ns, p in projects]
    assert set(shards) == {0, 1, 2}
    assert min(shards.count(i) for i in range(3)) > 40
    assert all(shard_of(ns, p, 1) == 0 for ns, p in projects)
