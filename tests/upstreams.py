"""pytest plugin: the loopback upstreams of testsupport.upstreams as fixtures.

Also re-exports testsupport's git and server helpers under their old names, so
`from upstreams import GitDaemon, git, ...` keeps working in tests.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from pki import PrivateCA
from testsupport.gitenv import git, git_env, run_git
from testsupport.upstreams import (
    GitDaemon,
    HTTPRequest,
    SmartHTTP,
    SSHDMissingError,
    SSHServer,
    StandardRepo,
    commit,
    init_upstream,
    make_standard_repo,
    publish,
    serve_config,
    served_repo,
    served_super,
    submodule,
)

__all__ = [
    "GitDaemon",
    "HTTPRequest",
    "SSHDMissingError",
    "SSHServer",
    "SmartHTTP",
    "StandardRepo",
    "commit",
    "git",
    "git_env",
    "init_upstream",
    "make_standard_repo",
    "publish",
    "run_git",
    "serve_config",
    "served_repo",
    "served_super",
    "submodule",
]


@pytest.fixture
def upstream_repo(tmp_path: Path) -> StandardRepo:
    """The standard repo: source in tmp_path/upstream-src, served as
    tmp_path/served/repo.git (upstream_repo.bare)."""
    return make_standard_repo(tmp_path / "upstream-src", served_dir=tmp_path / "served")


def _served(repo: StandardRepo) -> Path:
    assert repo.served_dir is not None
    return repo.served_dir


@pytest.fixture
def git_daemon(upstream_repo: StandardRepo, tmp_path: Path) -> Iterator[GitDaemon]:
    with GitDaemon(_served(upstream_repo), workdir=tmp_path / "git-daemon") as daemon:
        yield daemon


@pytest.fixture
def smart_http(upstream_repo: StandardRepo) -> Iterator[SmartHTTP]:
    with SmartHTTP(_served(upstream_repo)) as server:
        yield server


@pytest.fixture
def smart_http_auth(upstream_repo: StandardRepo) -> Iterator[SmartHTTP]:
    with SmartHTTP(_served(upstream_repo), username="ci-bot", password=secrets.token_urlsafe(24)) as server:
        yield server


@pytest.fixture
def ca(tmp_path: Path) -> PrivateCA:
    """A private certificate authority made for this test (tests/pki.py)."""
    return PrivateCA(tmp_path / "pki")


@pytest.fixture
def https_upstream(upstream_repo: StandardRepo, ca: PrivateCA) -> Iterator[SmartHTTP]:
    """The smart HTTP upstream over TLS, with a certificate of the private CA."""
    with SmartHTTP(_served(upstream_repo), tls=ca.server_context()) as server:
        yield server


@pytest.fixture
def ssh_server(upstream_repo: StandardRepo, tmp_path: Path) -> Iterator[SSHServer]:
    with SSHServer(_served(upstream_repo), tmp_path / "sshd") as server:
        yield server
