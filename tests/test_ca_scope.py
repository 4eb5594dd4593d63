"""A Secret's `ca.crt` in every git call for the origins it is granted for, and in no other.

The upstream is git http-backend over TLS on loopback with a certificate of a
private CA made per test (tests/pki.py). git trusts that CA only through the
Secret's bundle: the cache's fetch, the files of a partial clone (fetched lazily
while the worktree is written), a cache-only pin, and the submodules the Secret
covers. A submodule it does not cover is fetched without it, and fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine_fixtures import checkout, expected_files, make_settings, request, tree_files, worktree_path
from pki import PrivateCA
from upstreams import SmartHTTP, StandardRepo, served_repo
from workspace_operator.git import Credentials, Engine, GitError, Reason

pytestmark = pytest.mark.usefixtures("no_leftover_processes")


def ca_secret(ca: PrivateCA, *scopes: str) -> Credentials:
    """A Secret holding only `ca.crt`, lent to `scopes` (its crafting.dev/repositories)."""
    return Credentials(ca_bundle=ca.ca_pem, scopes=scopes)


async def test_submodules_the_secret_covers_get_its_ca_and_no_others(
    engine: Engine, upstream_repo: StandardRepo, https_upstream: SmartHTTP, ca: PrivateCA, volume: Path
) -> None:
    served = https_upstream.base
    lib_commit = served_repo(served, "lib", {"lib.txt": "library\n"})
    lib = https_upstream.url("lib")
    served_repo(
        served,
        "super",
        {"top.txt": "top\n"},
        {"vendor/lib": lib_commit},
        f'[submodule "lib"]\n\tpath = vendor/lib\n\turl = {lib}\n',
    )
    url = https_upstream.url("super")

    covered = await checkout(engine, request(url, submodules=True, credentials=ca_secret(ca, url, lib)))
    assert tree_files(worktree_path(volume, covered))["vendor/lib/lib.txt"] == "library\n"

    with pytest.raises(GitError) as caught:  # the Secret lends itself, and its CA, to the superproject only
        await checkout(engine, request(url, name="other", submodules=True, credentials=ca_secret(ca, url)))
    assert caught.value.reason is Reason.TLS_VERIFY_FAILED and caught.value.step == "submodules", caught.value

    with pytest.raises(GitError) as untrusted:
        await checkout(engine, request(url, name="none", project="fresh", submodules=True))
    assert untrusted.value.reason is Reason.TLS_VERIFY_FAILED


async def test_a_partial_clone_fetches_its_blobs_with_the_secrets_ca(
    volume: Path, scratch: Path, upstream_repo: StandardRepo, https_upstream: SmartHTTP, ca: PrivateCA
) -> None:
    engine = Engine(volume, make_settings(scratch, partial_clone=True))
    url = https_upstream.url("repo")
    result = await checkout(engine, request(url, credentials=ca_secret(ca, url)))
    assert tree_files(worktree_path(volume, result)) == expected_files(upstream_repo, upstream_repo.main)
    blobs_fetched = https_upstream.count(name="repo")
    assert blobs_fetched >= 2  # the clone, then the blobs the checkout needed

    with pytest.raises(GitError) as caught:
        await checkout(engine, request(url, project="untrusted"))
    assert caught.value.reason is Reason.TLS_VERIFY_FAILED


async def test_a_cache_only_pin_uses_the_secrets_ca(
    engine: Engine, upstream_repo: StandardRepo, https_upstream: SmartHTTP, ca: PrivateCA
) -> None:
    url = https_upstream.url("repo")
    pinned = await engine.pin(engine.validate(request(url, cache_only=True, credentials=ca_secret(ca, url))))
    assert pinned.commit == upstream_repo.main
    with pytest.raises(GitError) as caught:
        await engine.pin(engine.validate(request(url, name="other", project="untrusted", cache_only=True)))
    assert caught.value.reason is Reason.TLS_VERIFY_FAILED
