"""Proves the loopback upstreams in upstreams.py really serve git."""

from __future__ import annotations

import gzip
import http.client
import socket
import stat
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from testsupport import gitenv
from upstreams import (
    GitDaemon,
    SmartHTTP,
    SSHServer,
    StandardRepo,
    commit,
    git,
    git_env,
    make_standard_repo,
)

pytestmark = pytest.mark.upstreams

TIMEOUT = 30


def run_git(
    *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return gitenv.run_git(*args, cwd=cwd, env=env, timeout=timeout, check=False)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def ls_remote(url: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    out = ok(run_git("ls-remote", url, env=env))
    return {ref: sha for sha, ref in (line.split("\t") for line in out.splitlines())}


def clone_and_check(url: str, dest: Path, repo: StandardRepo, env: Mapping[str, str] | None = None) -> None:
    ok(run_git("clone", "-q", url, str(dest), env=env))
    assert git(dest, "rev-parse", "HEAD") == repo.main
    assert git(dest, "rev-parse", f"origin/{repo.FEATURE_BRANCH}") == repo.feature
    assert git(dest, "rev-parse", "v1.1^{commit}") == repo.v1_1
    assert (dest / "services/api/app.py").read_text() == "print('api v1.1')\n"


def fetch_sha(url: str, sha: str, dest: Path, env: Mapping[str, str] | None = None) -> None:
    ok(run_git("init", "-q", str(dest)))
    ok(run_git("fetch", "-q", url, sha, cwd=dest, env=env))
    assert git(dest, "rev-parse", "FETCH_HEAD") == sha


# -- repository builders ----------------------------------------------------


def test_standard_repo_is_deterministic_and_shaped(tmp_path: Path) -> None:
    a = make_standard_repo(tmp_path / "a")
    b = make_standard_repo(tmp_path / "b")
    assert dataclass_shas(a) == dataclass_shas(b)

    src = a.src
    assert git(src, "rev-list", "main").split() == list(reversed(a.main_commits))
    assert a.old == a.main_commits[0] and len(a.main_commits) == 3
    files = git(src, "ls-tree", "-r", "--name-only", "main").split()
    assert {"README.md", "libs/util.py", "services/api/app.py"} <= set(files)
    assert git(src, "rev-parse", f"{a.feature}^") == a.main
    assert git(src, "cat-file", "-t", "v1.0") == "commit"
    assert git(src, "cat-file", "-t", a.v1_1_tag) == "tag" and a.v1_1_tag != a.v1_1
    assert git(src, "rev-parse", "v1.1^{commit}") == a.v1_1 == a.main
    assert git(src, "branch", "-a", "--contains", a.pull_42) == ""
    assert git(src, "for-each-ref", "--contains", a.dangling) == ""
    assert git(src, "cat-file", "-t", a.dangling) == "commit"


def dataclass_shas(r: StandardRepo) -> tuple[object, ...]:
    return (r.main_commits, r.feature, r.v1_0, r.v1_1_tag, r.v1_1, r.pull_42, r.dangling)


def test_published_mirror_and_republish(upstream_repo: StandardRepo) -> None:
    bare = upstream_repo.bare
    assert git(bare, "rev-parse", "--is-bare-repository") == "true"
    assert git(bare, "config", "uploadpack.allowAnySHA1InWant") == "true"
    assert git(bare, "rev-parse", upstream_repo.PULL_REF) == upstream_repo.pull_42
    # The dangling commit was copied although no ref reaches it.
    assert git(bare, "cat-file", "-t", upstream_repo.dangling) == "commit"
    assert git(bare, "for-each-ref", "--contains", upstream_repo.dangling) == ""

    new = commit(upstream_repo.src, {"libs/new.py": "NEW = 1\n"}, "new upstream commit")
    upstream_repo.republish()
    assert git(bare, "rev-parse", "refs/heads/main") == new


# -- git daemon --------------------------------------------------------------


def test_git_daemon_clone_ls_remote_and_counter(
    git_daemon: GitDaemon, upstream_repo: StandardRepo, tmp_path: Path
) -> None:
    url = git_daemon.url("repo")
    assert url == f"git://127.0.0.1:{git_daemon.port}/repo.git"
    clone_and_check(url, tmp_path / "clone", upstream_repo)
    assert git_daemon.requests() == ["/repo.git"]
    assert git_daemon.count("repo") == 1

    assert ls_remote(url) == upstream_repo.advertised_refs()
    assert git_daemon.count() == 2  # ls-remote opens a connection too

    fetch_sha(url, upstream_repo.dangling, tmp_path / "by-sha")
    # protocol v0 enforces allowAnySHA1InWant (v2 never checks reachability)
    fetch_sha(url, upstream_repo.pull_42, tmp_path / "by-sha-v0", env={"GIT_CONFIG_PARAMETERS": "'protocol.version=0'"})


# -- smart HTTP --------------------------------------------------------------


def test_smart_http_clone_ls_remote_and_counter(
    smart_http: SmartHTTP, upstream_repo: StandardRepo, tmp_path: Path
) -> None:
    url = smart_http.url("repo")
    assert url == f"http://127.0.0.1:{smart_http.port}/repo.git"
    clone_and_check(url, tmp_path / "clone", upstream_repo)
    assert smart_http.count() == 1
    assert smart_http.count(name="repo") == 1 and smart_http.count(name="other") == 0
    reqs = smart_http.requests()
    assert reqs[0].method == "GET" and reqs[0].path == "/repo.git/info/refs"
    assert reqs[0].query == "service=git-upload-pack" and reqs[0].status == 200
    # Protocol v2 went through: refs were listed by a POSTed ls-refs command.
    assert [r.command for r in reqs if r.method == "POST"] == ["ls-refs", "fetch"]

    assert ls_remote(url) == upstream_repo.advertised_refs()
    assert smart_http.count() == 1  # listing refs is not a fetch

    ok(run_git("fetch", "-q", "origin", cwd=tmp_path / "clone"))
    assert smart_http.count() == 1  # up to date: nothing fetched
    fetch_sha(url, upstream_repo.dangling, tmp_path / "by-sha")
    assert smart_http.count() == 2
    ok(run_git("-c", "protocol.version=0", "clone", "-q", "--bare", url, str(tmp_path / "v0")))
    assert smart_http.count() == 3


def test_smart_http_gzip_and_chunked_request_body(smart_http: SmartHTTP, upstream_repo: StandardRepo) -> None:
    body = f"0032want {upstream_repo.main}\n".encode() + b"0000" + b"0009done\n"
    conn = http.client.HTTPConnection("127.0.0.1", smart_http.port, timeout=TIMEOUT)
    try:
        conn.request(
            "POST",
            "/repo.git/git-upload-pack",
            body=iter([gzip.compress(body)]),
            encode_chunked=True,
            headers={"Content-Type": "application/x-git-upload-pack-request", "Content-Encoding": "gzip"},
        )
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, data
    assert data.startswith(b"0008NAK\n") and b"PACK" in data
    assert smart_http.count() == 1


def askpass_env(tmp_path: Path, user: str, password: str) -> dict[str, str]:
    script = tmp_path / "askpass.sh"
    script.write_text(
        '#!/bin/sh\ncase "$1" in Username*) echo "$UPSTREAM_USER";; *) echo "$UPSTREAM_PASSWORD";; esac\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"GIT_ASKPASS": str(script), "UPSTREAM_USER": user, "UPSTREAM_PASSWORD": password}


def test_smart_http_auth(smart_http_auth: SmartHTTP, upstream_repo: StandardRepo, tmp_path: Path) -> None:
    url = smart_http_auth.url("repo")
    assert "@" not in url
    no_creds = run_git("ls-remote", url, env={"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": ""})
    assert no_creds.returncode != 0
    assert [r.status for r in smart_http_auth.requests()] == [401]

    assert smart_http_auth.password
    bad = run_git("ls-remote", url, env=askpass_env(tmp_path, "ci-bot", "wrong"))
    assert bad.returncode != 0

    env = askpass_env(tmp_path, "ci-bot", smart_http_auth.password)
    clone_and_check(url, tmp_path / "clone", upstream_repo, env=env)
    assert smart_http_auth.count() == 1
    assert {r.user for r in smart_http_auth.requests() if r.status == 200} == {"ci-bot"}
    assert smart_http_auth.password not in git(tmp_path / "clone", "config", "remote.origin.url")


@pytest.mark.parametrize("fault", ["500", "drop", "hang"])
def test_smart_http_faults(smart_http: SmartHTTP, upstream_repo: StandardRepo, tmp_path: Path, fault: str) -> None:
    url = smart_http.url("repo")
    smart_http.fault = fault
    started = time.monotonic()
    failed = run_git(
        "clone",
        "-q",
        url,
        str(tmp_path / "clone"),
        env={"GIT_HTTP_LOW_SPEED_LIMIT": "1000", "GIT_HTTP_LOW_SPEED_TIME": "2"},
        timeout=20,
    )
    assert failed.returncode != 0
    assert time.monotonic() - started < 15
    assert smart_http.requests()[0].status == (500 if fault == "500" else None)
    assert smart_http.count() == 0

    smart_http.fault = None  # the server recovers
    assert ls_remote(url) == upstream_repo.advertised_refs()


# -- SSH ---------------------------------------------------------------------


def test_ssh_clone_and_ls_remote(ssh_server: SSHServer, upstream_repo: StandardRepo, tmp_path: Path) -> None:
    url = ssh_server.url("repo")
    assert url == f"ssh://{ssh_server.user}@127.0.0.1:{ssh_server.port}{upstream_repo.bare}"
    assert ssh_server.client_key_text.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(ssh_server.known_hosts_text)
    env = {
        "GIT_SSH_COMMAND": f"ssh -F /dev/null -i {ssh_server.client_key} -o IdentitiesOnly=yes -o BatchMode=yes "
        f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={known_hosts}"
    }
    assert env["GIT_SSH_COMMAND"] == ssh_server.ssh_command(known_hosts)
    clone_and_check(url, tmp_path / "clone", upstream_repo, env=env)
    assert ssh_server.connections() == 1
    listed = run_git("ls-remote", url, env={**env, "GIT_TRACE_PACKET": "1"})
    assert {ref: sha for sha, ref in (ln.split("\t") for ln in ok(listed).splitlines())} == (
        upstream_repo.advertised_refs()
    )
    # GIT_PROTOCOL reached git through sshd (AcceptEnv), so protocol v2 was spoken.
    assert "< version 2" in listed.stderr
    assert ssh_server.connections() == 2


def test_ssh_rejects_unknown_host_key(ssh_server: SSHServer, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    failed = run_git("ls-remote", ssh_server.url("repo"), env={"GIT_SSH_COMMAND": ssh_server.ssh_command(empty)})
    assert failed.returncode != 0
    assert "Host key verification failed" in failed.stderr
    assert ssh_server.connections() == 0


def test_servers_stop_their_processes(upstream_repo: StandardRepo, tmp_path: Path) -> None:
    served = upstream_repo.bare.parent
    with GitDaemon(served) as daemon:
        pid = daemon.pid
    assert pid is not None and not Path(f"/proc/{pid}").exists()
    assert not daemon.workdir.exists()  # its own temporary log dir is removed

    with SSHServer(served, tmp_path / "sshd") as sshd:
        pid = sshd.pid
    assert pid is not None and not Path(f"/proc/{pid}").exists()

    web = SmartHTTP(served).start()
    port = web.port
    web.fault = "hang"
    hung = subprocess.Popen(
        ["git", "ls-remote", web.url("repo")],
        env=git_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not web.requests():
            assert time.monotonic() < deadline, "hung request never arrived"
            time.sleep(0.02)
        web.stop()  # must release the hung handler instead of blocking
        assert hung.wait(timeout=TIMEOUT) != 0
    finally:
        web.stop()
        if hung.poll() is None:
            hung.kill()
            hung.wait(timeout=TIMEOUT)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
