"""Attacks through submodules, performed for real against loopback servers.

* Fan-out: a superproject whose submodules list submodules (each within the
  depth bound) multiplies clones; the Workspace's budget (all levels counted)
  stops it before anything beyond it is fetched.
* Time: the whole submodule phase sits under one git timeout, however many git
  calls it takes, host name lookups on a name server that never answers included.
* Oracle: a server outside the credentials' grant echoes guesses into its error
  text; what the Workspace reports must be the same whether a guess is the
  secret or not (redaction would have turned only the right guess into `***`).
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from pathlib import Path

import pytest

from attackers import CredentialSink, error_advertisement
from engine_fixtures import checkout, layout, make_settings, request, tree_files, worktree_path
from upstreams import GitDaemon, SmartHTTP, StandardRepo, served_repo, served_super, submodule
from workspace_operator.git import Credentials, Engine, GitError, Reason, Revision
from workspace_operator.git.policy import URLPolicy
from workspace_operator.git.resolver import Resolver

pytestmark = [pytest.mark.upstreams, pytest.mark.usefixtures("no_leftover_processes")]

USER = "ci7q"  # short: masked as a whole word only
TOKEN = "tok-" + secrets.token_hex(12)
WRONG = "tok-" + secrets.token_hex(12)


def fan_out(served: Path, width: int) -> None:
    """super -> `width` x mid -> `width` x leaf: width + width**2 submodules, 2 levels deep."""
    leaf = served_repo(served, "leaf", {"leaf.txt": "leaf\n"})
    mid = served_repo(
        served,
        "mid",
        {"mid.txt": "mid\n"},
        {f"l{i}": leaf for i in range(width)},
        "".join(submodule(f"l{i}", f"l{i}", "../leaf.git") for i in range(width)),
    )
    served_repo(
        served,
        "super",
        {"top.txt": "top\n"},
        {f"m{i}": mid for i in range(width)},
        "".join(submodule(f"m{i}", f"m{i}", "../mid.git") for i in range(width)),
    )


async def test_submodule_fan_out_stops_at_the_budget(
    volume: Path, scratch: Path, upstream_repo: StandardRepo, git_daemon: GitDaemon
) -> None:
    fan_out(git_daemon.base, 4)  # 4 + 16 = 20 submodules
    url = git_daemon.url("super")

    engine = Engine(volume, make_settings(scratch, max_submodules=6))
    with pytest.raises(GitError) as caught:
        await checkout(engine, request(url, Revision(branch="main"), submodules=True))
    assert caught.value.reason is Reason.TOO_MANY_SUBMODULES and not caught.value.retryable
    assert "more than 6 submodules" in caught.value.message and "WORKSPACE_MAX_SUBMODULES" in caught.value.message
    assert not layout(volume).ready_record("ws").exists()  # never complete, so never Ready
    # The first level (4) fit and was cloned; the second was counted (4 + 4 > 6) before any fetch.
    assert git_daemon.count("mid") == 4 and git_daemon.count("leaf") == 0, git_daemon.requests()

    # All levels counted exactly: 20 submodules fit a budget of 20.
    enough = Engine(volume, make_settings(scratch, max_submodules=20))
    result = await checkout(enough, request(url, Revision(branch="main"), submodules=True, name="all"))
    files = tree_files(worktree_path(volume, result))
    assert sum(name.endswith("leaf.txt") for name in files) == 16 and files["m3/l3/leaf.txt"] == "leaf\n"


async def test_the_submodule_phase_runs_under_one_git_timeout(
    volume: Path, scratch: Path, upstream_repo: StandardRepo, git_daemon: GitDaemon
) -> None:
    served = git_daemon.base
    leaf = served_repo(served, "leaf", {"leaf.txt": "leaf\n"})
    width = 4
    served_repo(
        served,
        "super",
        {"top.txt": "top\n"},
        {f"l{i}": leaf for i in range(width)},
        "".join(submodule(f"l{i}", f"l{i}", git_daemon.url("leaf")) for i in range(width)),
    )
    # Each submodule (one git call each: no credentials cover them) takes 3 s, well
    # within the 8 s per call; together they take longer than one timeout.
    slow_git = scratch.parent / "slow-git"
    slow_git.write_text('#!/bin/bash\ncase " $* " in *" submodule update "*) sleep 3;; esac\nexec git "$@"\n')
    slow_git.chmod(0o755)
    engine = Engine(volume, make_settings(scratch, timeout_seconds=8.0, git_binary=str(slow_git)))
    with pytest.raises(GitError) as caught:
        await checkout(engine, request(git_daemon.url("super"), Revision(branch="main"), submodules=True))
    assert caught.value.reason is Reason.TIMEOUT, caught.value
    assert "submodules not done within 8s" in caught.value.message
    assert not layout(volume).ready_record("ws").exists()


async def test_submodule_host_lookups_count_against_the_phase(
    volume: Path, scratch: Path, upstream_repo: StandardRepo
) -> None:
    """Submodules on hosts whose name server never answers: the level's lookups run at
    once, each host once, and end with the phase's time (not the lookup deadline)."""
    assert upstream_repo.served_dir is not None
    hosts = [f"h{i}.attacker.example" for i in range(3)]
    served_repo(
        upstream_repo.served_dir,
        "super",
        {"top.txt": "top\n"},
        {f"m{i}": upstream_repo.main for i in range(4)},
        "".join(submodule(f"m{i}", f"m{i}", f"https://{hosts[i % 3]}/x.git") for i in range(4)),
    )
    asked: list[str] = []
    never = threading.Event()

    def tarpit(host: str, port: int | None) -> list[str]:
        asked.append(host)
        never.wait()
        return []

    settings = make_settings(scratch, timeout_seconds=3.0, allow_private_networks=False, resolve_timeout_seconds=600)
    engine = Engine(volume, settings)
    engine.policy = URLPolicy(settings, volume, resolver=Resolver(per_namespace=len(hosts), lookup=tarpit))
    try:
        with pytest.raises(GitError) as caught:
            url = f"file://{upstream_repo.served_dir}/super.git"
            await checkout(engine, request(url, Revision(branch="main"), submodules=True))
    finally:
        never.set()
    assert caught.value.reason is Reason.TIMEOUT, caught.value
    assert "submodules not done within 3s" in caught.value.message
    assert sorted(asked) == hosts


_SECONDS = re.compile(r"\d+\.\d+s")
_SHA = re.compile(r"\b[0-9a-f]{40}\b")


@pytest.mark.parametrize("answer", ["err-line", "http-403"])
async def test_a_server_outside_the_grant_cannot_tell_a_right_guess_from_the_status(
    volume: Path,
    scratch: Path,
    upstream_repo: StandardRepo,
    credential_sink: CredentialSink,
    caplog: pytest.LogCaptureFixture,
    answer: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="workspace_operator")
    guess = {"user": "", "password": ""}

    def echo() -> str:
        return f"access denied for {guess['user']} {guess['password']}"

    if answer == "err-line":  # git: "fatal: remote error: <echo>", among the last lines it prints
        credential_sink.status, credential_sink.content_type = 200, "application/x-git-upload-pack-advertisement"
        credential_sink.body = lambda _path: error_advertisement(echo())
    else:  # git: "remote: <echo>" lines, then its own
        credential_sink.status = 403
        credential_sink.body = lambda _path: f"{echo()}\n{guess['password']}\n".encode()
    assert upstream_repo.served_dir is not None
    served_super(upstream_repo, credential_sink.url("org/lib.git"))
    engine = Engine(volume, make_settings(scratch))

    with SmartHTTP(upstream_repo.served_dir, username=USER, password=TOKEN) as server:
        url = server.url("super")
        creds = Credentials(username=USER, password=TOKEN, scopes=(url,))

        async def attempt(user: str, password: str) -> tuple[str, list[str]]:
            """What a tenant and the operator's log see of one attempt."""
            guess.update(user=user, password=password)
            await engine.remove("team-a", "proj", "ws")
            caplog.clear()
            with pytest.raises(GitError) as caught:
                await checkout(engine, request(url, submodules=True, credentials=creds))
            assert not layout(volume).ready_record("ws").exists()
            logged = [_SECONDS.sub("Ns", r.getMessage()) for r in caplog.records]
            return f"{caught.value.reason.value}: {caught.value}", logged

        await attempt("warm-up", "the-cache")  # the superproject's cache is there for both runs alike
        right = await attempt(USER, TOKEN)
        wrong = await attempt("ci8z", WRONG)

    assert credential_sink.received(), "git never asked the attacker"
    assert all(r.authorization is None for r in credential_sink.received())
    assert right == wrong  # byte for byte: the message, the reason and every log line
    message, logged = right
    assert f"submodule 'lib' at 127.0.0.1:{credential_sink.port} failed" in message, message
    for text in [message, *logged]:
        assert TOKEN not in text and USER not in text and "***" not in text, text


async def test_below_a_server_outside_the_grant_nothing_is_granted(
    volume: Path, scratch: Path, upstream_repo: StandardRepo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The public `lib` (outside the grant) names a nested submodule on the granted server,
    its path the guess. Treated as granted, git's "repository '<url>' not found" came back
    redacted: `***` exactly when the guess was the token, and the credentials went along."""
    caplog.set_level(logging.DEBUG, logger="workspace_operator")
    served = upstream_repo.served_dir
    assert served is not None
    outsider_dir = tmp_path / "outsider" / "served"
    outsider_dir.mkdir(parents=True)
    engine = Engine(volume, make_settings(scratch))

    with (
        SmartHTTP(served, username=USER, password=TOKEN) as granted,
        SmartHTTP(outsider_dir) as outsider,
    ):
        url = granted.url("super")
        org = f"http://127.0.0.1:{granted.port}/org/"  # the Secret covers the organisation
        creds = Credentials(username=USER, password=TOKEN, scopes=(url, org))

        async def attempt(guess: str) -> tuple[str, list[str]]:
            lib = served_repo(
                outsider_dir,
                "lib",
                {"lib.txt": "lib\n"},
                {"inner": upstream_repo.main},
                submodule("inner", "inner", granted.url(f"org/{guess}")),
            )
            served_repo(
                served,
                "super",
                {"top.txt": "top\n"},
                {"lib": lib},
                submodule("lib", "lib", outsider.url("lib")),
            )
            await engine.remove("team-a", "proj", "ws")
            caplog.clear()
            with pytest.raises(GitError) as caught:
                await checkout(engine, request(url, submodules=True, credentials=creds))
            # Each attempt serves other commits and another path: those differ, nothing else may.
            logged = [
                _SHA.sub("SHA", _SECONDS.sub("Ns", r.getMessage())).replace(guess, "GUESS") for r in caplog.records
            ]
            return f"{caught.value.reason.value}: {caught.value}".replace(guess, "GUESS"), logged

        await attempt("warm-up")  # the superproject's cache is there for both runs alike
        right = await attempt(TOKEN)
        wrong = await attempt(WRONG)
        asked = [r for r in granted.requests() if "/org/" in r.path]

    assert asked, "git never asked the granted server for the nested submodule"
    assert all(r.user is None for r in asked), "credentials went to a URL an outsider chose"
    assert right == wrong  # the same, byte for byte, whether the guess is the token or not
    message, logged = right
    assert "outside the credentials Secret's repositories" in message, message
    for text in [message, *logged]:
        assert TOKEN not in text and "***" not in text, text


@pytest.mark.parametrize(("declared", "present"), [(12_000, 0), (300, 2)])
async def test_a_huge_gitmodules_is_refused_or_read_in_batches(
    volume: Path, scratch: Path, upstream_repo: StandardRepo, git_daemon: GitDaemon, declared: int, present: int
) -> None:
    """Entries without a gitlink cost only an ls-tree argument each: thousands of long ones
    once overflowed the argument list (a crash, retried until the deadline)."""
    long = "d" * 200
    lib = served_repo(git_daemon.base, "lib", {"lib.txt": "lib\n"})
    entries = "".join(submodule(f"n{i}", f"{long}/{i}", git_daemon.url("lib")) for i in range(declared))
    served_repo(git_daemon.base, "huge", {"a.txt": "a\n"}, {f"{long}/{i}": lib for i in range(present)}, entries)
    engine = Engine(volume, make_settings(scratch))
    job = request(git_daemon.url("huge"), Revision(branch="main"), submodules=True)

    if present:
        result = await checkout(engine, job)
        assert (worktree_path(volume, result) / long / "1" / "lib.txt").read_text() == "lib\n"
        return
    with pytest.raises(GitError) as caught:
        await checkout(engine, job)
    assert caught.value.reason is Reason.TOO_MANY_SUBMODULES and f"declares {declared}" in str(caught.value)
    assert git_daemon.count("lib") == 0
