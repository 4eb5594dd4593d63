"""Hostile input and hostile upstreams: nothing runs, nothing escapes the volume.

Every case snapshots the test's whole tmp tree (upstreams, scratch, volume)
before and after and allows changes only where the engine may write: the
project directory on the volume. Markers that a successful attack would
create must never appear.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from engine_fixtures import (
    ALL_SCHEMES,
    NAME,
    PROJECT,
    assert_cache_consistent,
    assert_worktree_at,
    checkout,
    expected_files,
    layout,
    make_settings,
    materialize,
    request,
    run_git,
    snapshot,
    tree_files,
    worktree_path,
)
from upstreams import GitDaemon, StandardRepo, commit, git, publish
from workspace_operator.git import CheckoutRequest, Engine, GitError, GitSettings, Reason, Revision, pins

pytestmark = [pytest.mark.upstreams, pytest.mark.usefixtures("no_leftover_processes")]

LITERAL_TMP_X = Path("/tmp/x")
Outside = Callable[[], Callable[[], None]]  # the path the classic payloads in the brief touch


@pytest.fixture
def pwned(tmp_path: Path) -> Path:
    """Where a successful payload would leave its mark; must stay absent."""
    return tmp_path / "pwned"


@pytest.fixture
def outside(tmp_path: Path, volume: Path) -> Outside:
    """Snapshot now; the returned check fails if anything outside the volume's
    project dirs (or /tmp/x) was written since."""

    def skip(path: Path) -> bool:
        return path.name in ("git-daemon", "sshd") or path == volume  # server logs change per request

    def start() -> Callable[[], None]:
        before = snapshot(tmp_path, skip)
        tmp_x_existed = LITERAL_TMP_X.exists()

        def check() -> None:
            assert snapshot(tmp_path, skip) == before, "files written outside the volume"
            assert LITERAL_TMP_X.exists() == tmp_x_existed
            for item in volume.rglob("*"):
                rel = item.relative_to(volume).parts
                assert rel[0] == "team-a", f"unexpected path {item}"
                if len(rel) > 2:
                    assert rel[2] in (NAME, ".cache", ".ready"), f"unexpected path {item}"

        return check

    return start


def _refused(engine: Engine, build: Callable[[], CheckoutRequest]) -> GitError:
    with pytest.raises(GitError) as caught:
        engine.validate(build())  # a bad Revision already refuses in its constructor
    assert caught.value.retryable is False
    return caught.value


# -- refused before anything runs ------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% /tmp/x",
        "ext::sh -c touch% {pwned}",
        "ext::sh%20-c%20touch%25%20{pwned}",
        "EXT::sh -c id",
        "fd::17",
        "fd::3/repo",
        "http::http://127.0.0.1/repo.git",
        "--upload-pack=touch /tmp/x",
        "-uhttps://example.com/repo.git",
        "ssh://-oProxyCommand=touch%20{pwned}/repo.git",
        "ssh://git@-oProxyCommand=touch%20{pwned}/repo.git",
        "ssh://-oProxyCommand=sh@example.com/repo.git",
        "git@-oProxyCommand:repo.git",
        "ssh://host:-1/repo.git",
        "https://user:token@example.com/repo.git",
        "/srv/git/repo.git",
        "../repo.git",
        "repo.git",
        "https:///repo.git",
        "https://example.com/repo.git\n--upload-pack=x",
        "https://example.com/a b",
    ],
)
async def test_hostile_urls_are_refused_at_validate(
    url: str, engine: Engine, volume: Path, pwned: Path, outside: Outside
) -> None:
    url = url.format(pwned=pwned)
    check = outside()
    error = _refused(engine, lambda: request(url))
    assert error.reason in (Reason.INVALID_SPEC, Reason.SCHEME_NOT_ALLOWED), error
    assert list(volume.iterdir()) == []
    assert not pwned.exists()
    check()


@pytest.mark.parametrize(
    "url",
    [
        "file:///srv/git/repo.git",
        "git://127.0.0.1/repo.git",
        "http://127.0.0.1/repo.git",
    ],
)
def test_transports_outside_the_allow_list_are_refused(url: str, volume: Path, scratch: Path) -> None:
    engine = Engine(volume, make_settings(scratch, allowed_schemes=frozenset({"https", "ssh"})))
    error = _refused(engine, lambda: request(url))
    assert error.reason is Reason.SCHEME_NOT_ALLOWED
    assert list(volume.iterdir()) == []


def test_unknown_transports_cannot_even_be_configured() -> None:
    for scheme in ("ext", "fd", "testgit"):
        with pytest.raises(ValueError, match="unknown git transports"):
            GitSettings(allowed_schemes=frozenset({"https", scheme}))


@pytest.mark.parametrize("kind", ["branch", "tag", "name"])
@pytest.mark.parametrize(
    "value",
    [
        "--upload-pack=touch /tmp/x",
        "--upload-pack=touch",
        "-x",
        "refs/heads/../../x",
        "main..x",
        "main@{1}",
        "x.lock",
        "x/",
        ".hidden",
        "a b",
        "a:b",
        "a~1",
        "a^",
        "a?",
        "a*",
        "a[b",
        "a\\b",
        "a//b",
    ],
)
def test_option_like_or_invalid_refs_are_refused(kind: str, value: str, engine: Engine, volume: Path) -> None:
    if kind == "name" and not value.startswith("-"):
        value = "refs/" + value  # so the rule that fails is the one under test, not "must start with refs/"
    error = _refused(engine, lambda: request("https://example.com/r.git", Revision(**{kind: value})))
    assert error.reason is Reason.INVALID_SPEC
    assert list(volume.iterdir()) == []


def test_ref_name_must_be_full_and_one_ref_only(engine: Engine) -> None:
    assert (
        _refused(engine, lambda: request("https://e.com/r.git", Revision(name="pull/1/head"))).reason
        is Reason.INVALID_SPEC
    )
    assert (
        _refused(engine, lambda: request("https://e.com/r.git", Revision(branch="a", tag="b"))).reason
        is Reason.INVALID_SPEC
    )
    for sha in ("abc123", "A" * 40, "g" * 40, "--all" + "0" * 35):
        assert (
            _refused(engine, lambda: request("https://e.com/r.git", Revision(commit=sha))).reason is Reason.INVALID_SPEC
        )


TRAVERSALS = [
    "..",
    "../x",
    "../../etc",
    "/abs",
    "/",
    ".",
    "a/../../b",
    "a/./b",
    "a//b",
    ".git",
    ".git/hooks",
    "a\\..\\b",
    "a\x00b",
    "a\nb",
    "",
]


@pytest.mark.parametrize("value", TRAVERSALS)
def test_traversal_in_any_path_component_is_refused(value: str, engine: Engine, volume: Path) -> None:
    url = "https://example.com/r.git"
    for build in (
        lambda: request(url, namespace=value),
        lambda: request(url, project=value),
        lambda: request(url, name=value),
        lambda: request(url, sub_path=value) if value else request(url, sub_path="/"),
        lambda: request(url, sparse=(value,)),
        lambda: request(url, sparse=("libs", value)),
    ):
        assert _refused(engine, build).reason is Reason.INVALID_SPEC
    assert list(volume.iterdir()) == []


@pytest.mark.parametrize(
    "label", ["UPPER", "dot.ted", "under_score", "-lead", "trail-", "x" * 64, ".cache", ".ready", "a/b"]
)
def test_names_must_be_dns_labels(label: str, engine: Engine) -> None:
    url = "https://example.com/r.git"
    for build in (
        lambda: request(url, namespace=label),
        lambda: request(url, project=label),
        lambda: request(url, name=label),
    ):
        assert _refused(engine, build).reason is Reason.INVALID_SPEC


# -- hostile content and upstreams ---------------------------------------------------


async def test_committed_symlinks_cannot_move_the_workdir_out(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path, outside: Outside
) -> None:
    src = upstream_repo.src
    (src / "up").symlink_to("..")
    (src / "etc").symlink_to("/etc")
    (src / "deep").mkdir()
    (src / "deep" / "out").symlink_to("../../../..")
    git(src, "add", "up", "etc", "deep/out")
    commit(src, {}, "symlinks")
    upstream_repo.republish()
    check = outside()
    for sub_path in ("up", "etc", "deep/out", "etc/ssh"):
        with pytest.raises(GitError) as caught:
            await checkout(engine, request(git_daemon.url("repo"), sub_path=sub_path))
        assert caught.value.reason is Reason.INVALID_SPEC, sub_path
        assert not layout(volume).ready_record(NAME).exists()
    # The symlinks themselves are checked out as symlinks, inside the worktree.
    worktree = layout(volume).worktree_dir(NAME)
    assert os.readlink(worktree / "etc") == "/etc"
    # A cache-only Workspace fails the same way, from the commit's tree, and pins nothing:
    # a job's checkout of it would go through the link.
    for sub_path in ("up", "etc", "deep/out", "etc/ssh"):
        with pytest.raises(GitError) as caught:
            await materialize(
                engine, request(git_daemon.url("repo"), name="pinned", sub_path=sub_path, cache_only=True)
            )
        assert caught.value.reason is Reason.INVALID_SPEC, sub_path
        assert "goes through a symlink" in caught.value.message
        assert pins.read(layout(volume).cache_dir, "pinned") is None
    check()


HOOKS = (
    "post-checkout",
    "post-merge",
    "reference-transaction",
    "post-index-change",
    "pre-auto-gc",
    "post-rewrite",
    "fsmonitor-watchman",
    "pre-push",
    "pre-commit",
    "push-to-checkout",
)


def _plant_hooks(directory: Path, pwned: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for hook in HOOKS:
        path = directory / hook
        path.write_text(f"#!/bin/sh\nmkdir -p {pwned}\ntouch {pwned}/{hook}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory


def _hostile_config(repo: Path, hooks: Path, pwned: Path) -> None:
    git(repo, "config", "core.hooksPath", str(hooks))
    git(repo, "config", "core.fsmonitor", str(hooks / "fsmonitor-watchman"))
    git(repo, "config", "uploadpack.packObjectsHook", f"touch {pwned}/pack-objects-hook;")
    git(repo, "config", "core.sshCommand", f"touch {pwned}/ssh-command;")


async def test_hooks_in_upstreams_and_cache_never_run(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path, pwned: Path, tmp_path: Path
) -> None:
    # Hostile served repo (git://) and a hostile local non-bare upstream (file://).
    _plant_hooks(upstream_repo.bare / "hooks", pwned)
    _hostile_config(upstream_repo.bare, _plant_hooks(tmp_path / "evil-hooks", pwned), pwned)
    _plant_hooks(upstream_repo.src / ".git" / "hooks", pwned)
    _hostile_config(upstream_repo.src, tmp_path / "evil-hooks", pwned)
    commit(upstream_repo.src, {"libs/new.py": "NEW = 1\n"}, "after hooks")
    assert pwned.exists()  # plain git ran the planted pre-commit hook: the hooks work when honoured
    for item in pwned.iterdir():
        item.unlink()
    pwned.rmdir()

    project = layout(volume)
    daemon_url = git_daemon.url("repo")
    first = await checkout(engine, request(daemon_url, Revision(tag="v1.1")))
    assert first.commit == upstream_repo.v1_1
    file_url = f"file://{upstream_repo.src}"
    local = await checkout(engine, request(file_url, Revision(branch="main"), project="local"))
    assert tree_files(worktree_path(volume, local))["libs/new.py"] == "NEW = 1\n"

    # A tampered cache: hooks in its own hooks dir. Fetch, worktree add, remove all run hook-free.
    cache = project.cache_dir
    _plant_hooks(cache / "hooks", pwned)
    await checkout(engine, request(daemon_url, Revision(name=upstream_repo.PULL_REF), name="second"))
    await checkout(engine, request(daemon_url, Revision(commit=upstream_repo.dangling)))  # replaces ws
    await engine.remove("team-a", PROJECT, "second")
    assert not pwned.exists(), sorted(p.name for p in pwned.iterdir())

    # Control: the same cache does run hooks under plain git, so the test above is not vacuous.
    run_git("worktree", "add", "--detach", "-q", str(tmp_path / "control"), upstream_repo.main, cwd=cache)
    assert (pwned / "post-checkout").exists()
    run_git("worktree", "remove", "--force", str(tmp_path / "control"), cwd=cache)
    for item in pwned.iterdir():
        item.unlink()
    pwned.rmdir()

    # Hostile config in the cache (hooksPath, fsmonitor, sshCommand...): the cache is either
    # distrusted and re-created or used with those settings overridden; nothing runs either way.
    _hostile_config(cache, tmp_path / "evil-hooks", pwned)
    result = await checkout(engine, request(daemon_url, Revision(tag="v1.0"), name="third"))
    assert result.commit == upstream_repo.v1_0
    await checkout(engine, request(daemon_url, Revision(branch=upstream_repo.FEATURE_BRANCH), name="fourth"))
    assert not pwned.exists(), sorted(p.name for p in pwned.iterdir())
    assert_cache_consistent(project, daemon_url)


def _super_repo(served: Path, name: str, gitmodules: str, gitlink: str) -> None:
    src = served.parent / f"{name}-src"
    git(served.parent, "init", "-q", "-b", "main", str(src))
    git(src, "update-index", "--add", "--cacheinfo", f"160000,{gitlink},sub")
    commit(src, {".gitmodules": gitmodules, "top.txt": "top\n"}, name)
    publish(src, served / f"{name}.git")


async def test_hostile_gitmodules(
    engine: Engine, upstream_repo: StandardRepo, git_daemon: GitDaemon, volume: Path, pwned: Path, outside: Outside
) -> None:
    served = git_daemon.base
    lib = upstream_repo.main
    _super_repo(served, "evil-ext", f'[submodule "sub"]\n\tpath = sub\n\turl = ext::sh -c touch% {pwned}\n', lib)
    _super_repo(
        served,
        "evil-update",
        f'[submodule "sub"]\n\tpath = sub\n\turl = {git_daemon.url("repo")}\n\tupdate = !touch {pwned}\n',
        lib,
    )
    _super_repo(
        served,
        "evil-path",
        f'[submodule "sub"]\n\tpath = sub\n\turl = {git_daemon.url("repo")}\n'
        f'\tupdate = checkout\n[submodule "../../x"]\n\tpath = x\n\turl = {git_daemon.url("repo")}\n',
        lib,
    )
    check = outside()

    with pytest.raises(GitError) as caught:
        await checkout(engine, request(git_daemon.url("evil-ext"), submodules=True, project="ext"))
    assert caught.value.reason is Reason.SCHEME_NOT_ALLOWED

    # "update = !cmd" is only honoured from local config: from .gitmodules git refuses it
    # ("invalid value for 'submodule.sub.update'"). A submodule named "../../x" would put its
    # git dir outside the modules dir: git ignores it. Either way, nothing runs or escapes.
    outcomes: dict[str, str] = {}
    for project in ("update", "path"):
        try:
            result = await checkout(
                engine, request(git_daemon.url(f"evil-{project}"), submodules=True, project=project)
            )
            outcomes[project] = f"ok at {result.commit[:8]}"
        except GitError as error:
            assert error.reason is not Reason.TIMEOUT
            outcomes[project] = f"{error.reason}: {error.message}"
    print(outcomes)
    for project in ("update", "path"):
        cache = volume / "team-a" / project / ".cache"
        assert not (cache / "x").exists() and not (cache / "worktrees" / "x").exists()
        assert not any(p.name == "x" for p in cache.rglob("x"))
    assert not pwned.exists()
    assert sorted(p.name for p in volume.glob("*/*")) == ["ext", "path", "update"]
    check()


async def test_submodules_follow_the_allow_list_too(
    volume: Path, scratch: Path, upstream_repo: StandardRepo, git_daemon: GitDaemon, pwned: Path
) -> None:
    served = git_daemon.base
    _super_repo(
        served,
        "via-file",
        f'[submodule "sub"]\n\tpath = sub\n\turl = file://{upstream_repo.bare}\n',
        upstream_repo.main,
    )
    strict = Engine(volume, make_settings(scratch, allowed_schemes=frozenset({"git"})))
    with pytest.raises(GitError) as caught:
        await checkout(strict, request(git_daemon.url("via-file"), submodules=True))
    assert caught.value.reason is Reason.SCHEME_NOT_ALLOWED
    # Allowed, the same submodule works: the refusal above was the allow-list's doing.
    lenient = Engine(volume, make_settings(scratch, allowed_schemes=ALL_SCHEMES))
    result = await checkout(lenient, request(git_daemon.url("via-file"), submodules=True))
    assert tree_files(worktree_path(volume, result) / "sub") == expected_files(upstream_repo, upstream_repo.main)
    assert_worktree_at(layout(volume), NAME, result.commit)
    assert_cache_consistent(layout(volume), git_daemon.url("via-file"))


async def test_environment_of_the_operator_does_not_leak_into_git(
    engine: Engine,
    ro_repo: StandardRepo,
    ro_daemon: GitDaemon,
    volume: Path,
    pwned: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    outside: Outside,
) -> None:
    hostile = tmp_path / "hostile.gitconfig"
    hostile.write_text(
        f"[core]\n\thooksPath = {_plant_hooks(tmp_path / 'env-hooks', pwned)}\n"
        f'[url "file:///nonexistent/"]\n\tinsteadOf = git://\n'
    )
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(hostile))
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", f"'core.hooksPath'='{tmp_path / 'env-hooks'}'")
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GIT_SSH_COMMAND", f"touch {pwned}/ssh;")
    check = outside()
    result = await checkout(engine, request(ro_daemon.url("repo"), Revision(tag="v1.0")))
    assert tree_files(worktree_path(volume, result)) == expected_files(ro_repo, ro_repo.v1_0)
    assert not pwned.exists()
    check()
