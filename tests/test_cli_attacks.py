"""Attacks on the job's `kubectl workspace checkout`, each performed for real.

The operator's engine makes the caches (two namespaces on one volume, loopback
upstreams); the job-side checkout (`workspace_operator.cli.checkout`) then runs
against a hostile `.gitmodules`, a planted cache or a link on the volume. Every
refusal is asserted with its exit code and message, and with what did not
happen: no fetch, no command run, no git at all where the cache is refused,
nothing of the other namespace read or touched.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

from attackers import CredentialSink
from engine_fixtures import NS, PROJECT, request, snapshot
from pod import EmulatedPod
from test_tamper_checks import PLANTS, pwned, two_namespaces
from upstreams import GitDaemon, StandardRepo, commit, git, publish, run_git, served_repo
from workspace_operator.cli.checkout import Source, checkout
from workspace_operator.cli.errors import CliError, Exit
from workspace_operator.git import ALL_SCHEMES, Engine, GitSettings
from workspace_operator.git.submodules import MAX_DEPTH

pytestmark = pytest.mark.usefixtures("no_leftover_processes")

VICTIM = "team-b"


class GitLog:
    """A git binary that logs every call's arguments, then runs the real git."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "calls.log"
        self.binary = directory / "git"
        self.binary.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {shlex.quote(str(self.path))}\nexec git "$@"\n')
        self.binary.chmod(0o755)

    def calls(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []


@pytest.fixture
def git_log(tmp_path: Path) -> GitLog:
    (tmp_path / "bin").mkdir()
    return GitLog(tmp_path / "bin")


def job_settings(git_log: GitLog, **overrides: object) -> GitSettings:
    """What the job's command builds from WORKSPACE_* (cli.main.git_settings), loopback allowed."""
    values: dict[str, object] = {
        "allowed_schemes": ALL_SCHEMES,
        "allowed_hosts": ("127.0.0.1",),
        "git_binary": str(git_log.binary),
        "timeout_seconds": 60.0,
    }
    values.update(overrides)
    return GitSettings(**values)  # type: ignore[arg-type]


async def pinned(engine: Engine, url: str, *, namespace: str = NS, name: str = "job", **spec: object) -> Source:
    """A CacheOnly Workspace made by the engine, as the job's command reads it back."""
    result = await engine.pin(engine.validate(request(url, name=name, namespace=namespace, cache_only=True)))
    assert result.cache_path is not None
    return Source(url, result.commit, engine.root, PurePosixPath(result.cache_path), **spec)  # type: ignore[arg-type]


async def refused(source: Source, into: Path, settings: GitSettings) -> CliError:
    with pytest.raises(CliError) as caught:
        await checkout(source, into, clean=False, settings=settings)
    return caught.value


# -- submodules: the engine's URL policy and depth bound --------------------------------------


Hostile = Callable[[GitDaemon, Path], tuple[str, str]]


def _ext(_daemon: GitDaemon, marker: Path) -> tuple[str, str]:
    return f"ext::sh -c touch% {marker}", "TransportNotAllowed"


def _other_namespaces_cache(_daemon: GitDaemon, marker: Path) -> tuple[str, str]:
    volume = marker.parent / "volume"
    return f"file://{volume / VICTIM / PROJECT / '.cache'}", "HostNotAllowed"


def _host_not_listed(daemon: GitDaemon, _marker: Path) -> tuple[str, str]:
    return daemon.url("lib").replace("127.0.0.1", "localhost"), "HostNotAllowed"


HOSTILE: dict[str, Hostile] = {"ext": _ext, "file": _other_namespaces_cache, "host": _host_not_listed}


@pytest.mark.parametrize("url", sorted(HOSTILE))
async def test_hostile_submodule_urls_are_refused_before_anything_is_fetched(
    url: str,
    engine: Engine,
    upstream_repo: StandardRepo,
    git_daemon: GitDaemon,
    volume: Path,
    tmp_path: Path,
    git_log: GitLog,
) -> None:
    await pinned(engine, git_daemon.url("repo"), namespace=VICTIM)  # another tenant's cache on the volume
    marker = tmp_path / "pwned"
    hostile, reason = HOSTILE[url](git_daemon, marker)
    lib = served_repo(git_daemon.base, "lib", {"lib.txt": "library\n"})
    served_repo(
        git_daemon.base,
        "super",
        {"top.txt": "top\n"},
        {"a-lib": lib, "stolen": upstream_repo.main},
        f'[submodule "a-lib"]\n\tpath = a-lib\n\turl = {git_daemon.url("lib")}\n'
        f'[submodule "stolen"]\n\tpath = stolen\n\turl = {hostile}\n',
    )
    source = await pinned(engine, git_daemon.url("super"), submodules=True)
    fetches = git_daemon.count("lib")
    victim = snapshot(volume / VICTIM)

    # file:// is allowed below tmp_path, as WORKSPACE_FILE_ROOTS would: never on the volume.
    error = await refused(source, tmp_path / "job", job_settings(git_log, file_roots=(tmp_path,)))
    assert error.code is Exit.FAILED and f"submodules refused ({reason})" in error.message, error.message
    assert "submodule 'stolen'" in error.message
    assert not (tmp_path / "job").exists()  # a failed checkout leaves nothing: DIR was made here
    assert git_daemon.count("lib") == fetches  # nothing of the siblings either: refused first
    assert not [call for call in git_log.calls() if " submodule update " in call]
    assert not marker.exists()
    assert snapshot(volume / VICTIM) == victim


async def test_submodules_nested_deeper_than_the_bound_are_refused(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, tmp_path: Path, git_log: GitLog
) -> None:
    # super -> level-1 -> ... -> level-(MAX_DEPTH + 1): one level more than the engine allows.
    deepest = MAX_DEPTH + 1
    below = served_repo(git_daemon.base, f"level-{deepest}", {"leaf.txt": "leaf\n"})
    for level in range(deepest - 1, -1, -1):
        name = f"level-{level + 1}"
        below = served_repo(
            git_daemon.base,
            f"level-{level}" if level else "super",
            {f"{level}.txt": f"{level}\n"},
            {"next": below},
            f'[submodule "next"]\n\tpath = next\n\turl = {git_daemon.url(name)}\n',
        )
    source = await pinned(engine, git_daemon.url("super"), submodules=True)

    error = await refused(source, tmp_path / "job", job_settings(git_log))
    assert error.code is Exit.FAILED and f"nested more than {MAX_DEPTH} levels" in error.message, error.message
    assert git_daemon.count(f"level-{MAX_DEPTH}") >= 1  # every level within the bound was checked out
    assert git_daemon.count(f"level-{deepest}") == 0  # the one beyond it never fetched
    assert not (tmp_path / "job").exists()


@pytest.fixture
def job_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The job's own HOME with credentials for every loopback host: ~/.netrc, a global
    credential helper and askpass programs that would leave a marker."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text("machine 127.0.0.1 login job-user password netrc-secret\n")
    (home / ".netrc").chmod(0o600)
    helper = home / "helper.sh"
    helper.write_text(f"#!/bin/sh\ntouch {home / 'asked'}\necho username=job-user\necho password=helper-secret\n")
    helper.chmod(0o755)
    (home / ".gitconfig").write_text(f"[credential]\n\thelper = !{helper}\n")
    for name in ("HOME", "GIT_ASKPASS", "SSH_ASKPASS"):
        monkeypatch.setenv(name, str(home) if name == "HOME" else str(helper))
    return home


async def test_a_submodule_host_gets_no_credentials_from_the_jobs_environment(
    engine: Engine,
    upstream_repo: StandardRepo,
    git_daemon: GitDaemon,
    credential_sink: CredentialSink,
    job_home: Path,
    tmp_path: Path,
    git_log: GitLog,
) -> None:
    served_repo(
        git_daemon.base,
        "super",
        {"top.txt": "top\n"},
        {"lib": upstream_repo.main},
        f'[submodule "lib"]\n\tpath = lib\n\turl = {credential_sink.url("lib.git")}\n',
    )
    source = await pinned(engine, git_daemon.url("super"), submodules=True)

    error = await refused(source, tmp_path / "job", job_settings(git_log))
    assert error.code is Exit.FAILED and "git submodules failed" in error.message, error.message
    assert credential_sink.received(), "git never asked the submodule's host"
    assert [r.authorization for r in credential_sink.received()] == [None] * len(credential_sink.received())
    assert not (job_home / "asked").exists()


# -- the cache is inspected, reached without links, before git runs -----------------------


@pytest.mark.parametrize("plant", sorted(PLANTS))
async def test_a_planted_cache_is_refused_before_git_runs(
    plant: str,
    engine: Engine,
    ro_repo: StandardRepo,
    ro_daemon: GitDaemon,
    volume: Path,
    tmp_path: Path,
    git_log: GitLog,
) -> None:
    mine, other = await two_namespaces(engine, ro_repo, ro_daemon, volume)
    action, why = PLANTS[plant]
    action(mine, ro_repo, other)
    source = Source(ro_daemon.url("repo"), ro_repo.old, volume, PurePosixPath(NS, PROJECT, ".cache"), all_tags=True)
    before = snapshot(volume)

    error = await refused(source, tmp_path / "job", job_settings(git_log))
    assert error.code is Exit.UNSAFE_CACHE and why in error.message, error.message
    assert not (tmp_path / "job").exists()
    # Files and links are refused without git; config is read by `git config` only (no hook, no fsmonitor).
    assert all(call.endswith("config --list --null --show-scope") for call in git_log.calls()), git_log.calls()
    assert not pwned(mine).exists() and not Path("/tmp/pwned-by-config-worktree").exists()
    assert snapshot(volume) == before


LINKS = {
    ".cache": lambda volume, victim: (volume / NS / PROJECT / ".cache", victim),
    "project": lambda volume, victim: (volume / NS / PROJECT, victim.parent),
    "namespace": lambda volume, victim: (volume / NS, victim.parent.parent),
}


@pytest.mark.parametrize("level", sorted(LINKS))
async def test_a_link_to_another_namespaces_cache_is_never_followed(
    level: str,
    engine: Engine,
    ro_repo: StandardRepo,
    ro_daemon: GitDaemon,
    volume: Path,
    tmp_path: Path,
    git_log: GitLog,
) -> None:
    url = ro_daemon.url("repo")
    theirs = await pinned(engine, url, namespace=VICTIM)
    link, target = LINKS[level](volume, theirs.cache)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    before = snapshot(volume / VICTIM)
    mine = Source(url, theirs.commit, volume, PurePosixPath(NS, PROJECT, ".cache"))

    error = await refused(mine, tmp_path / "job", job_settings(git_log))
    assert error.code is Exit.UNSAFE_CACHE and "symlink" in error.message, error.message
    assert not (tmp_path / "job").exists() and git_log.calls() == []
    assert snapshot(volume / VICTIM) == before


# -- as the job runs it: another uid, the cache mounted read-only -----------------------------


async def test_git_trusts_the_mounted_cache_and_no_other_repository_of_another_owner(
    engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, pod: EmulatedPod
) -> None:
    source = await pinned(engine, ro_daemon.url("repo"))
    pod.mount_cache(engine.root, str(source.cache_path))
    foreign = pod.base / "foreign"  # a repository of another uid (root) the job can read
    git(pod.base, "init", "-q", str(foreign))
    git(foreign, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "--allow-empty", "-m", "x")
    script = f"""
import asyncio
from pathlib import Path, PurePosixPath
from workspace_operator.cli.checkout import Source, checkout
from workspace_operator.git import GitError, GitSettings, open_mounted_cache

root, relative = Path({str(pod.cache_root)!r}), PurePosixPath({str(source.cache_path)!r})
source = Source({source.repository!r}, {source.commit!r}, root, relative)
settings = GitSettings()
print("CHECKOUT", asyncio.run(checkout(source, Path({str(pod.empty_dir)!r}), clean=False, settings=settings)))
cache = asyncio.run(open_mounted_cache(settings, source.cache_root, source.cache_path))
for where in ({str(foreign)!r}, str(cache.path)):
    try:
        asyncio.run(cache.runner().run("probe", ["rev-parse", "--git-dir"], cwd=Path(where)))
        print("TRUSTED", where)
    except GitError as error:
        print("REFUSED", where, error.message)
"""
    done = pod.python(script)
    assert done.returncode == 0, done.stderr
    assert f"CHECKOUT {pod.empty_dir}" in done.stdout
    assert (pod.empty_dir / "README.md").stat().st_uid == pod.uid
    assert f"REFUSED {foreign} fatal: detected dubious ownership" in done.stdout, done.stdout
    assert f"TRUSTED {pod.cache_root / source.cache_path}" in done.stdout, done.stdout


# -- subPath: the job cds into what the command prints ---------------------------------------


def served_with_link(base: Path, name: str, link: str, target: str) -> None:
    """served/<name>.git: a commit whose `link` is a symlink to `target` (and one file)."""
    src = base.parent / f"{name}-src"
    git(base.parent, "init", "-q", "-b", "main", str(src))
    blob = run_git("-C", str(src), "hash-object", "-w", "--stdin", input=target).stdout.strip()
    git(src, "update-index", "--add", "--cacheinfo", f"120000,{blob},{link}")
    commit(src, {"README.md": "linked\n"}, "a symlink in the tree")
    publish(src, base / f"{name}.git")


@pytest.mark.parametrize(("link", "sub_path"), [("build", "build"), ("a", "a/b")])
async def test_a_subpath_through_a_committed_symlink_is_refused(
    engine: Engine, git_daemon: GitDaemon, tmp_path: Path, git_log: GitLog, link: str, sub_path: str
) -> None:
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    (outside / "secret.txt").write_text("not the job's\n")
    served_with_link(git_daemon.base, "linked", link, str(outside))
    source = await pinned(engine, git_daemon.url("linked"), sub_path=PurePosixPath(sub_path))

    error = await refused(source, tmp_path / "job", job_settings(git_log))
    assert error.code is Exit.FAILED and "goes through a symlink" in error.message, error.message
    assert (outside / "secret.txt").read_text() == "not the job's\n"
    assert not (tmp_path / "job").exists()  # found in the commit's tree, before anything was written
