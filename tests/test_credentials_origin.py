"""Attacks on the engine's credentials, URL rules and shared cache, each performed for real.

Loopback upstreams (smart HTTP with Basic auth, git daemon, sshd) serve a
superproject; attacker servers record what reaches them. Every test asserts
that no credential reached a place it was not granted to, that no secret
appeared in any process's argv or environment, and that nothing on the volume
was touched beyond what the engine may write.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from attackers import CredentialSink, error_advertisement
from engine_fixtures import (
    NS,
    assert_cache_consistent,
    assert_worktree_at,
    checkout,
    layout,
    make_settings,
    processes_under,
    request,
    run_git,
    snapshot,
    tree_files,
    worktree_path,
)
from upstreams import (
    GitDaemon,
    SmartHTTP,
    SSHDMissingError,
    SSHServer,
    StandardRepo,
    git,
    git_env,
    publish,
    served_repo,
    served_super,
    submodule,
)
from workspace_operator.git import Credentials, Engine, GitError, Reason, Revision

pytestmark = [pytest.mark.upstreams, pytest.mark.usefixtures("no_leftover_processes")]

USER = "ci5x"  # short on purpose: masked too
TOKEN = "tok-" + secrets.token_hex(12)


class ProcessWatch:
    """Samples argv and environment of every process below the volume while the engine runs."""

    def __init__(self, volume: Path, needles: tuple[str, ...]) -> None:
        self.volume, self.needles = volume, needles
        self.seen: set[str] = set()
        self.leaks: list[str] = []

    async def run(self, done: asyncio.Event) -> None:
        while not done.is_set():
            for pid, cmdline in processes_under(self.volume).items():
                self.seen.add(cmdline.split(" ")[0])
                try:
                    environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
                except OSError:
                    environ = ""
                for needle in self.needles:
                    if needle in cmdline or needle in environ:
                        self.leaks.append(f"{needle[:3]}... in pid {pid}: {cmdline[:80]}")
            await asyncio.sleep(0.002)  # sampling interval, not synchronisation

    async def around(self, work: asyncio.Future[object] | asyncio.Task[object]) -> object:
        done = asyncio.Event()
        watcher = asyncio.create_task(self.run(done))
        try:
            return await work
        finally:
            done.set()
            await watcher


def assert_nowhere(texts: list[str], roots: list[Path], secrets_: tuple[str, ...]) -> None:
    for text in texts:
        for secret in secrets_:
            assert secret not in text, f"secret {secret[:3]}... in {text[:200]!r}"
    for root in roots:
        for item in root.rglob("*"):
            if item.is_file() and not item.is_symlink():
                data = item.read_bytes()
                for secret in secrets_:
                    assert secret.encode() not in data, f"secret {secret[:3]}... in file {item}"


@pytest.fixture
def auth_http(upstream_repo: StandardRepo) -> Iterator[SmartHTTP]:
    assert upstream_repo.served_dir is not None
    with SmartHTTP(upstream_repo.served_dir, username=USER, password=TOKEN) as server:
        yield server


# -- item 1: submodules never get credentials outside the grant ------------------------------------


async def test_submodule_on_an_attacker_host_gets_no_credentials(
    engine: Engine,
    upstream_repo: StandardRepo,
    auth_http: SmartHTTP,
    credential_sink: CredentialSink,
    volume: Path,
    scratch: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="workspace_operator")
    served_super(upstream_repo, credential_sink.url("org/lib.git"))
    url = auth_http.url("super")
    creds = Credentials(username=USER, password=TOKEN, scopes=(url,))
    watch = ProcessWatch(volume, (USER, TOKEN))

    with pytest.raises(GitError) as caught:
        await watch.around(asyncio.ensure_future(checkout(engine, request(url, submodules=True, credentials=creds))))
    assert caught.value.reason is Reason.AUTH_FAILED, caught.value
    # The attack happened (git asked the attacker) and the superproject was fetched with
    # the credentials, but the attacker never saw a user name or password.
    assert credential_sink.received(), "git never contacted the attacker"
    assert all(r.authorization is None for r in credential_sink.received()), credential_sink.received()
    assert {r.user for r in auth_http.requests() if r.status == 200} == {USER}
    assert not watch.leaks, watch.leaks
    assert "git" in watch.seen  # the watch did see the engine's processes
    assert not layout(volume).ready_record("ws").exists()
    assert_nowhere([r.getMessage() for r in caplog.records] + [str(caught.value)], [volume], (USER, TOKEN))
    assert list(scratch.iterdir()) == []


async def test_same_host_other_path_gets_credentials_only_when_the_secret_lists_it(
    engine: Engine, upstream_repo: StandardRepo, auth_http: SmartHTTP, volume: Path
) -> None:
    """A relative submodule URL reaching another repository of the same server."""
    served_super(upstream_repo, "../repo.git")
    url = auth_http.url("super")
    lib_path = "/repo.git/"

    only_super = Credentials(username=USER, password=TOKEN, scopes=(url,))
    with pytest.raises(GitError) as caught:
        await checkout(engine, request(url, submodules=True, credentials=only_super, project="narrow"))
    assert caught.value.reason is Reason.AUTH_FAILED
    assert not any(r.user == USER for r in auth_http.requests() if r.path.startswith(lib_path))

    whole_host = Credentials(username=USER, password=TOKEN, scopes=(url.rsplit("/", 1)[0] + "/",))
    result = await checkout(engine, request(url, submodules=True, credentials=whole_host, project="wide"))
    assert tree_files(worktree_path(volume, result) / "lib")["README.md"] == "# demo\n\nv1.1\n"
    assert any(r.user == USER and r.status == 200 for r in auth_http.requests() if r.path.startswith(lib_path))


async def test_dot_segments_never_reach_git(engine: Engine, auth_http: SmartHTTP, volume: Path) -> None:
    base = auth_http.url("repo")
    for url in (
        f"{base}/../../other/secret.git",
        f"{base}/%2e%2e/%2E%2E/other/secret.git",
        f"{base}?private_token={TOKEN}",
        base.replace("http://", f"http://{TOKEN}@"),
    ):
        with pytest.raises(GitError) as caught:
            await checkout(engine, request(url, credentials=Credentials(username=USER, password=TOKEN)))
        assert caught.value.reason is Reason.INVALID_SPEC, url
        assert TOKEN not in str(caught.value)
    assert auth_http.requests() == []
    assert list(volume.iterdir()) == []


async def test_ssh_key_only_for_granted_submodules(
    engine: Engine, upstream_repo: StandardRepo, tmp_path: Path, volume: Path
) -> None:
    assert upstream_repo.served_dir is not None
    try:
        server = SSHServer(upstream_repo.served_dir, tmp_path / "sshd").start()
    except SSHDMissingError as error:
        pytest.skip(str(error))
    try:
        served_repo(
            upstream_repo.served_dir,
            "super",
            {"top.txt": "top\n"},
            {"lib": upstream_repo.main},
            submodule("lib", "lib", "../repo.git"),
        )
        url = server.url("super")
        key, known = server.client_key_text, server.known_hosts_text
        narrow = Credentials(ssh_private_key=key, known_hosts=known, scopes=(url,))
        with pytest.raises(GitError) as caught:
            await checkout(engine, request(url, submodules=True, credentials=narrow, project="narrow"))
        assert caught.value.reason is Reason.AUTH_FAILED, caught.value  # the submodule ran without the key
        wide = Credentials(ssh_private_key=key, known_hosts=known, scopes=(url.rsplit("/", 1)[0] + "/",))
        result = await checkout(engine, request(url, submodules=True, credentials=wide, project="wide"))
        assert (worktree_path(volume, result) / "lib" / "README.md").is_file()
    finally:
        server.stop()


# -- item 7: submodules leave the shared cache alone ---------------------------------------------------


async def test_submodule_workspace_keeps_one_clean_cache(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path
) -> None:
    served = git_daemon.base
    deep = served_repo(served, "deep", {"deep.txt": "deepest\n"})
    lib = served_repo(
        served, "lib", {"lib.txt": "library\n"}, {"deep": deep}, submodule("deep", "deep", git_daemon.url("deep"))
    )
    top = served_repo(
        served, "super", {"top.txt": "top\n"}, {"vendor/lib": lib}, submodule("lib", "vendor/lib", "../lib.git")
    )
    url = git_daemon.url("super")
    cache = layout(volume).cache_dir

    first = await checkout(engine, request(url, Revision(branch="main"), submodules=True, name="ws-0"))
    config_after_first = run_git("config", "--list", "--local", cwd=cache).stdout
    assert "submodule." not in config_after_first
    inode = cache.stat().st_ino
    for index in range(1, 6):
        result = await checkout(
            engine, request(url, Revision(branch="main"), submodules=index % 2 == 0, name=f"ws-{index}")
        )
        assert result.cache_repaired is None, result.cache_repaired
        assert (result.cache_hit, result.fetched) == (True, False)
    assert cache.stat().st_ino == inode
    assert not list(layout(volume).project_dir.glob(".quarantine-*"))
    assert run_git("config", "--list", "--local", cwd=cache).stdout == config_after_first
    for index in range(6):
        assert_worktree_at(layout(volume), f"ws-{index}", top)
    files = tree_files(worktree_path(volume, first))
    assert files["vendor/lib/lib.txt"] == "library\n" and files["vendor/lib/deep/deep.txt"] == "deepest\n"
    # A restarted engine (deep check of the cache) still trusts it.
    restarted = Engine(volume, engine.settings)
    again = await checkout(restarted, request(url, Revision(branch="main"), submodules=True, name="ws-6"))
    assert again.cache_repaired is None
    assert_cache_consistent(layout(volume), url)


async def test_unsafe_submodule_urls_are_refused_before_any_update(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, credential_sink: CredentialSink, volume: Path
) -> None:
    served = git_daemon.base
    cases = {
        "dots": (submodule("lib", "lib", "../repo.git/../../x.git/../y"), Reason.INVALID_SPEC),
        "query": (submodule("lib", "lib", "http://h.example/x.git?token=1"), Reason.INVALID_SPEC),
        "dash": (submodule("lib", "lib", "ssh://-oProxyCommand=touch%20x/y"), Reason.INVALID_SPEC),
        "ext": (submodule("lib", "lib", "ext::sh -c id"), Reason.SCHEME_NOT_ALLOWED),
        "volume": (submodule("lib", "lib", f"file://{volume}/team-b/p/.cache"), Reason.HOST_NOT_ALLOWED),
        "name": (submodule("a=b", "lib", git_daemon.url("repo")), Reason.INVALID_SPEC),
        "command": (
            submodule("lib", "lib", git_daemon.url("repo")) + f"\tupdate = !touch {volume}/x\n",
            Reason.INVALID_SPEC,
        ),
    }
    for project, (gitmodules, _) in cases.items():
        served_repo(served, project, {"top.txt": "top\n"}, {"lib": upstream_repo.main}, gitmodules)
    before = credential_sink.received()
    for project, (_, reason) in cases.items():
        with pytest.raises(GitError) as caught:
            await checkout(engine, request(git_daemon.url(project), submodules=True, project=project))
        assert caught.value.reason is reason, (project, caught.value)
        assert not caught.value.retryable
        worktree = layout(volume, project).worktree_dir("ws")
        assert not (worktree / "lib" / ".git").exists()  # no submodule was updated
        assert not layout(volume, project).ready_record("ws").exists()
    assert credential_sink.received() == before
    assert git_daemon.count("repo") == 0


async def test_submodule_marked_update_none_is_left_out(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path
) -> None:
    served_repo(
        git_daemon.base,
        "super",
        {"top.txt": "top\n"},
        {"lib": upstream_repo.main},
        submodule("lib", "lib", git_daemon.url("repo")) + "\tupdate = none\n",
    )
    result = await checkout(engine, request(git_daemon.url("super"), submodules=True))
    assert sorted(tree_files(worktree_path(volume, result))) == [".gitmodules", "top.txt"]
    assert git_daemon.count("repo") == 0


# -- item 5: file:// cannot reach the volume -----------------------------------------------------------


async def test_file_urls_cannot_reach_other_namespaces(
    upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path, scratch: Path, tmp_path: Path
) -> None:
    mirrors = tmp_path / "mirrors"
    mirrors.mkdir()
    engine = Engine(volume, make_settings(scratch, file_roots=(mirrors, volume)))
    # The victim namespace's cache, filled with someone's credentials (here: over git://).
    await checkout(engine, request(git_daemon.url("repo"), namespace="team-b", project="backend"))
    victim = volume / "team-b" / "backend"
    before = snapshot(victim)
    (mirrors / "link").symlink_to(victim / ".cache")
    run_git("clone", "-q", "--bare", str(upstream_repo.bare), str(mirrors / "ok.git"), cwd=tmp_path)

    for url in (f"file://{victim}/.cache", f"file://{mirrors}/link", f"file://{tmp_path}/served/repo.git"):
        with pytest.raises(GitError) as caught:
            await checkout(engine, request(url, project="steal"))
        assert caught.value.reason is Reason.HOST_NOT_ALLOWED, (url, caught.value)
    assert not (volume / NS).exists()
    assert snapshot(victim) == before
    result = await checkout(engine, request(f"file://{mirrors}/ok.git", project="mirror"))
    assert result.commit == upstream_repo.main
    # Without file roots, no file:// at all.
    closed = Engine(volume, make_settings(scratch, file_roots=()))
    with pytest.raises(GitError) as caught:
        await checkout(closed, request(f"file://{mirrors}/ok.git", project="mirror2"))
    assert caught.value.reason is Reason.HOST_NOT_ALLOWED and "WORKSPACE_FILE_ROOTS" in caught.value.message


# -- item 11: private networks only when allowed -----------------------------------------------------


async def test_loopback_upstreams_need_explicit_permission(
    upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path, scratch: Path
) -> None:
    strict = Engine(volume, make_settings(scratch, allow_private_networks=False))
    for url in (
        git_daemon.url("repo"),
        git_daemon.url("repo").replace("127.0.0.1", "localhost"),
        git_daemon.url("repo").replace("127.0.0.1", "2130706433"),
    ):
        with pytest.raises(GitError) as caught:
            await checkout(strict, request(url))
        assert caught.value.reason is Reason.HOST_NOT_ALLOWED, (url, caught.value)
    assert git_daemon.count() == 0
    assert list(volume.iterdir()) == []

    listed = Engine(volume, make_settings(scratch, allow_private_networks=False, allowed_hosts=("127.0.0.1",)))
    assert (await checkout(listed, request(git_daemon.url("repo")))).commit == upstream_repo.main
    # A submodule elsewhere on the private network is not covered by the superproject's listing.
    served_repo(
        git_daemon.base,
        "super",
        {"top.txt": "top\n"},
        {"lib": upstream_repo.main},
        submodule("lib", "lib", git_daemon.url("repo").replace("127.0.0.1", "127.0.0.2")),
    )
    with pytest.raises(GitError) as caught:
        await checkout(listed, request(git_daemon.url("super"), submodules=True, project="super"))
    assert caught.value.reason is Reason.HOST_NOT_ALLOWED


# -- item 12: fetched objects are checked ----------------------------------------------------------------


async def test_fetch_checks_objects_when_asked(
    upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path, scratch: Path
) -> None:
    """A tree with a `.GIT` entry (a hostile repository's classic) is refused at fetch."""
    engine = Engine(volume, make_settings(scratch, fsck_objects=True))
    src = git_daemon.base.parent / "evil-src"
    git(git_daemon.base.parent, "init", "-q", "-b", "main", str(src))
    empty_blob = run_git("hash-object", "-w", "-t", "blob", "/dev/null", cwd=src).stdout.strip()
    bad_tree = subprocess.run(  # noqa: ASYNC221 - setup, before anything runs concurrently
        ["git", "mktree"],
        input=f"100644 blob {empty_blob}\t.GIT\n",
        cwd=src,
        env=git_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    bad = git(src, "commit-tree", bad_tree, "-m", "evil").strip()
    git(src, "update-ref", "refs/heads/main", bad)
    publish(src, git_daemon.base / "evil.git")
    with pytest.raises(GitError) as caught:
        await checkout(engine, request(git_daemon.url("evil"), project="evil"))
    assert "fsck" in caught.value.message or "dotgit" in caught.value.message.lower(), caught.value
    assert not (volume / NS / "evil" / ".cache").exists()


# -- a granted server echoing what it was sent finds it masked, in the form it was sent too ---------


@pytest.mark.parametrize("user", [USER, "x-access-token"])  # a conventional name is no secret, the pair is
async def test_a_granted_server_echoing_the_basic_credentials_finds_them_masked(
    engine: Engine, credential_sink: CredentialSink, volume: Path, caplog: pytest.LogCaptureFixture, user: str
) -> None:
    """The repository's own server gets the credentials (curl sends `Authorization: Basic
    base64(user:token)`) and echoes them into an ERR line: the user name and token came
    back `***`, their base64 form as it was sent."""
    caplog.set_level(logging.DEBUG, logger="workspace_operator")
    basic = base64.b64encode(f"{user}:{TOKEN}".encode()).decode()
    forms = (basic, basic.rstrip("="), TOKEN, *([user] if user == USER else []))
    credential_sink.status, credential_sink.challenge = 200, True
    credential_sink.content_type = "application/x-git-upload-pack-advertisement"
    credential_sink.body = lambda _path: error_advertisement(f"denied {' '.join(forms)}")
    url = credential_sink.url("org/repo.git")
    creds = Credentials(username=user, password=TOKEN, scopes=(url,))

    with pytest.raises(GitError) as caught:
        await checkout(engine, request(url, credentials=creds))
    assert f"Basic {basic}" in {r.authorization for r in credential_sink.received()}, "git never sent them"
    message = str(caught.value)
    assert "remote error: denied ***" in message, message  # the echo did reach the message
    assert_nowhere([r.getMessage() for r in caplog.records] + [message], [volume], forms)


# -- the Workspace's own words are never redacted: that would be an oracle --------------------


@pytest.mark.parametrize("where", ["not-found", "mismatch"])
async def test_guesses_written_into_the_repository_url_come_back_alike(
    volume: Path, scratch: Path, upstream_repo: StandardRepo, where: str
) -> None:
    """A tenant may write anything below the granted prefix into spec.repository. Quoted
    back through the redactor, a guess came back as `***` exactly when it was the user
    name or the token (a 404 quoting the URL; RepositoryMismatch needs no server at all)."""
    assert upstream_repo.served_dir is not None
    engine = Engine(volume, make_settings(scratch))
    with SmartHTTP(upstream_repo.served_dir, username=USER, password=TOKEN) as server:
        base = f"http://127.0.0.1:{server.port}/"
        creds = Credentials(username=USER, password=TOKEN, scopes=(base,))  # the annotation: a prefix
        if where == "mismatch":  # the project's cache tracks the real repository
            await checkout(engine, request(server.url("repo"), Revision(branch="main"), credentials=creds))

        async def attempt(guess: str) -> str:
            url = f"{base}org/{guess}/x/{guess}.git"
            with pytest.raises(GitError) as caught:
                await checkout(engine, request(url, Revision(branch="main"), credentials=creds, name="probe"))
            return f"{caught.value.reason.value}: {caught.value}".replace(guess, "GUESS")

        right_user, right_token, wrong = await attempt(USER), await attempt(TOKEN), await attempt("ci9z")

    assert right_user == right_token == wrong, (right_user, right_token, wrong)
    assert "***" not in wrong and "<spec.repository>" in wrong, wrong


async def test_an_earlier_workspaces_repository_is_not_an_oracle(
    volume: Path, scratch: Path, tmp_path: Path, upstream_repo: StandardRepo
) -> None:
    """The project's cache was made for the attacker's own URL with the guess in it; a
    Workspace with the Secret then fails RepositoryMismatch quoting that origin. Redacted,
    it read `***` exactly when the guess was the token (no granted server asked at all)."""
    served = upstream_repo.served_dir
    assert served is not None
    attacker_dir = tmp_path / "attacker"
    engine = Engine(volume, make_settings(scratch))
    with (
        SmartHTTP(served, username=USER, password=TOKEN) as granted,
        SmartHTTP(attacker_dir) as attacker,
    ):
        creds = Credentials(username=USER, password=TOKEN, scopes=(f"http://127.0.0.1:{granted.port}/",))

        async def attempt(guess: str, project: str) -> str:
            publish(served / "repo.git", attacker_dir / f"{guess}.git")
            await checkout(engine, request(attacker.url(guess), Revision(branch="main"), project=project, name="a"))
            with pytest.raises(GitError) as caught:
                await checkout(
                    engine, request(granted.url("repo"), Revision(branch="main"), credentials=creds, project=project)
                )
            return f"{caught.value.reason.value}: {caught.value}".replace(guess, "GUESS")

        right, wrong = await attempt(TOKEN, "p1"), await attempt("tok-" + secrets.token_hex(12), "p2")

    assert right == wrong.replace("p2", "p1"), (right, wrong)
    assert right.startswith("RepositoryMismatch") and "***" not in right, right


async def test_a_project_named_like_the_user_is_not_an_oracle(
    volume: Path, scratch: Path, upstream_repo: StandardRepo
) -> None:
    """git's messages quote the worktree's path, which holds the project name the tenant
    chose: redacted with the Secret's user name, a project named like it came back `***`."""
    user = "ci-robot"
    assert upstream_repo.served_dir is not None
    engine = Engine(volume, make_settings(scratch))
    with SmartHTTP(upstream_repo.served_dir, username=user, password=TOKEN) as server:
        base = f"http://127.0.0.1:{server.port}/"
        creds = Credentials(username=user, password=TOKEN, scopes=(base,))
        served_super(upstream_repo, base + "gone.git")  # an ordinary submodule, gone upstream

        async def attempt(guess: str) -> str:
            with pytest.raises(GitError) as caught:
                await checkout(engine, request(server.url("super"), submodules=True, credentials=creds, project=guess))
            return f"{caught.value}".replace(guess, "GUESS")

        right, wrong = await attempt(user), await attempt("ci-rabot")

    assert right == wrong, (right, wrong)
    assert "***" not in right and user not in right, right


async def test_a_submodule_path_is_not_an_oracle(volume: Path, scratch: Path, upstream_repo: StandardRepo) -> None:
    """Whoever pushes to a covered repository names its submodules' paths; git quotes them
    (absolute, and relative in single quotes) when a submodule fails. Redacted, a path
    equal to the token came back `***`."""
    served = upstream_repo.served_dir
    assert served is not None
    engine = Engine(volume, make_settings(scratch))
    with SmartHTTP(served, username=USER, password=TOKEN) as server:
        base = f"http://127.0.0.1:{server.port}/"
        creds = Credentials(username=USER, password=TOKEN, scopes=(base,))

        async def attempt(guess: str, name: str) -> str:
            served_repo(
                served,
                name,
                {"top.txt": "x\n"},
                {guess: upstream_repo.main},
                submodule("lib", guess, base + "missing.git"),
            )
            with pytest.raises(GitError) as caught:
                await checkout(engine, request(server.url(name), submodules=True, credentials=creds, project=name))
            return f"{caught.value.reason.value}: {caught.value}".replace(guess, "GUESS").replace(name, "NAME")

        right, wrong = await attempt(TOKEN, "right"), await attempt("tok-" + secrets.token_hex(12), "wrong")

    assert right == wrong, (right, wrong)
    assert "***" not in right and TOKEN not in right, right
