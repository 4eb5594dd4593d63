"""Planted git redirections in a cache are refused before git trusts them: checkout and GC alike.

Each case materializes a pinned commit, plants one redirection in the cache
(replace ref, alternates, grafts, commondir, worktree metadata), then runs a
checkout of the same pin (the cache must be quarantined and the new worktree
must hold exactly that commit's files) or a GC step (quarantined, no git run).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from engine_fixtures import assert_worktree_at, checkout, expected_files, layout, request, run_git, tree_files
from upstreams import GitDaemon, StandardRepo
from workspace_operator.git import Engine, Revision
from workspace_operator.git.cache import worktree_config_keys
from workspace_operator.git.engine import Maintenance
from workspace_operator.git.layout import ProjectLayout

pytestmark = pytest.mark.usefixtures("no_leftover_processes")

Plant = Callable[[ProjectLayout, StandardRepo, Path], None]


def _replace_ref(mine: ProjectLayout, repo: StandardRepo, _other: Path) -> None:
    # The pin (old) now reads as main's commit: other files, same SHA in status.
    run_git("replace", "-f", repo.old, repo.main, cwd=mine.cache_dir)


def _packed_replace_ref(mine: ProjectLayout, repo: StandardRepo, other: Path) -> None:
    _replace_ref(mine, repo, other)
    run_git("pack-refs", "--all", cwd=mine.cache_dir)
    assert not list((mine.cache_dir / "refs" / "replace").glob("*"))


def _alternates(mine: ProjectLayout, _repo: StandardRepo, other: Path) -> None:
    (mine.cache_dir / "objects" / "info").mkdir(parents=True, exist_ok=True)
    (mine.cache_dir / "objects" / "info" / "alternates").write_text(f"{other / 'objects'}\n")


def _grafts(mine: ProjectLayout, repo: StandardRepo, _other: Path) -> None:
    (mine.cache_dir / "info").mkdir(exist_ok=True)
    (mine.cache_dir / "info" / "grafts").write_text(f"{repo.old} {repo.main}\n")


def _commondir(mine: ProjectLayout, _repo: StandardRepo, other: Path) -> None:
    (mine.cache_dir / "commondir").write_text(f"{other}\n")


def _worktree_config(mine: ProjectLayout, _repo: StandardRepo, _other: Path) -> None:
    run_git("config", "extensions.worktreeConfig", "true", cwd=mine.cache_dir)  # a key git itself writes
    (mine.cache_dir / "worktrees" / "first" / "config.worktree").write_text(
        "[core]\n\tsparseCheckout = true\n\tsshCommand = touch /tmp/pwned-by-config-worktree\n"
    )


def _worktree_commondir(mine: ProjectLayout, _repo: StandardRepo, other: Path) -> None:
    (mine.cache_dir / "worktrees" / "first" / "commondir").write_text(f"{other}\n")


def _worktree_gitdir(mine: ProjectLayout, _repo: StandardRepo, other: Path) -> None:
    (mine.cache_dir / "worktrees" / "first" / "gitdir").write_text(f"{other.parent / 'backend' / '.git'}\n")


def _dot_git(mine: ProjectLayout, _repo: StandardRepo, other: Path) -> None:
    # git run in the cache takes `.cache/.git` for the repository: team-b's cache here.
    (mine.cache_dir / ".git").symlink_to(other)


def pwned(mine: ProjectLayout) -> Path:
    """What a planted command would create: next to the volume, never on it."""
    return mine.root.parent / "pwned"


def _command_config(key: str) -> Plant:
    def plant(mine: ProjectLayout, _repo: StandardRepo, _other: Path) -> None:
        script = mine.root.parent / "pwn.sh"
        script.write_text(f"#!/bin/sh\ntouch {pwned(mine)}\n")
        script.chmod(0o755)
        hooks = mine.root.parent / "hooks"
        hooks.mkdir(exist_ok=True)
        for hook in ("post-checkout", "reference-transaction", "post-index-change"):
            (hooks / hook).symlink_to(script)
        run_git("config", key, str(hooks if key == "core.hooksPath" else script), cwd=mine.cache_dir)

    return plant


def _include(mine: ProjectLayout, _repo: StandardRepo, other: Path) -> None:
    run_git("config", "include.path", str(other / "config"), cwd=mine.cache_dir)


PLANTS: dict[str, tuple[Plant, str]] = {
    "dot-git": (_dot_git, ".git"),
    "fsmonitor": (_command_config("core.fsmonitor"), "core.fsmonitor"),
    "hooks-path": (_command_config("core.hooksPath"), "core.hookspath"),
    "ssh-command": (_command_config("core.sshCommand"), "core.sshcommand"),
    "include": (_include, "include.path"),
    "replace-ref": (_replace_ref, "replace refs"),
    "packed-replace-ref": (_packed_replace_ref, "replace refs"),
    "alternates": (_alternates, "objects/info/alternates"),
    "grafts": (_grafts, "info/grafts"),
    "commondir": (_commondir, "commondir"),
    "config.worktree": (_worktree_config, "core.sshcommand"),
    "worktree-commondir": (_worktree_commondir, "points elsewhere"),
    "worktree-gitdir": (_worktree_gitdir, "points elsewhere"),
}


async def two_namespaces(
    engine: Engine, repo: StandardRepo, daemon: GitDaemon, volume: Path
) -> tuple[ProjectLayout, Path]:
    url = daemon.url("repo")
    other = await checkout(engine, request(url, namespace="team-b", name="backend"))
    assert other.commit == repo.main
    await checkout(engine, request(url, name="latest"))  # the cache holds main too: a replacement is at hand
    await checkout(engine, request(url, Revision(commit=repo.old), name="first"))
    return layout(volume), layout(volume, namespace="team-b").cache_dir


@pytest.mark.parametrize("plant", sorted(PLANTS))
async def test_planted_redirection_is_quarantined_before_checkout(
    plant: str, engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path
) -> None:
    mine, other = await two_namespaces(engine, ro_repo, ro_daemon, volume)
    action, why = PLANTS[plant]
    action(mine, ro_repo, other)

    result = await checkout(engine, request(ro_daemon.url("repo"), Revision(commit=ro_repo.old)))
    assert result.cache_repaired is not None and why in result.cache_repaired, result.cache_repaired
    assert result.commit == ro_repo.old
    assert tree_files(mine.worktree_dir("ws")) == expected_files(ro_repo, ro_repo.old)
    assert_worktree_at(mine, "ws", ro_repo.old)
    assert len(list(mine.project_dir.glob(".quarantine-*"))) == 1
    assert not Path("/tmp/pwned-by-config-worktree").exists() and not pwned(mine).exists()


@pytest.mark.parametrize("plant", sorted(PLANTS))
async def test_planted_redirection_is_quarantined_before_gc_runs_git(
    plant: str, engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path
) -> None:
    mine, other = await two_namespaces(engine, ro_repo, ro_daemon, volume)
    PLANTS[plant][0](mine, ro_repo, other)
    stamp = mine.cache_dir / "workspace-operator.last-gc"
    maintenance = Maintenance(engine)
    await maintenance.gc_cache("team-a", "proj")
    assert not stamp.exists() and not mine.cache_dir.exists()
    assert len(list(mine.project_dir.glob(".quarantine-*"))) == 1
    await maintenance.prune("team-a", "proj")  # nothing left to run git in: a no-op


async def test_replace_refs_are_ignored_by_every_git_call(
    engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path
) -> None:
    """Even where the inspection does not run, git reads the real objects."""
    mine, other = await two_namespaces(engine, ro_repo, ro_daemon, volume)
    _replace_ref(mine, ro_repo, other)
    real_tree = run_git(
        "rev-parse", f"{ro_repo.old}^{{tree}}", cwd=mine.cache_dir, env={"GIT_NO_REPLACE_OBJECTS": "1"}
    ).stdout.strip()
    replaced = run_git("rev-parse", f"{ro_repo.old}^{{tree}}", cwd=mine.cache_dir).stdout.strip()
    assert replaced != real_tree  # the plant works on plain git
    result = await engine.runner_for(None).run("tree", ["rev-parse", f"{ro_repo.old}^{{tree}}"], cwd=mine.cache_dir)
    assert result.stdout.strip() == real_tree


def test_worktree_config_parser_accepts_only_what_git_writes() -> None:
    assert worktree_config_keys("[core]\n\tsparseCheckout = true\n\tsparseCheckoutCone = true\n") == [
        "core.sparsecheckout",
        "core.sparsecheckoutcone",
    ]
    assert worktree_config_keys("# c\n[index]\n\tsparse\n") == ["index.sparse"]
    for hostile in (
        "[include]\n\tpath = /etc/x\n",
        '[remote "origin"]\n\turl = x\n',
        "[core]\n\tx = a\\\n b\n",
        "\tkey = before any section\n",
        "[core.x]\n\ty = 1\n",
    ):
        keys = worktree_config_keys(hostile)
        assert keys is None or not set(keys) <= {"core.sparsecheckout", "core.sparsecheckoutcone", "index.sparse"}


@pytest.mark.parametrize("plant", sorted(PLANTS))
async def test_planted_redirection_is_quarantined_before_teardown_runs_git(
    plant: str, engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path
) -> None:
    mine, other = await two_namespaces(engine, ro_repo, ro_daemon, volume)
    PLANTS[plant][0](mine, ro_repo, other)
    before = tree_files(other.parent / "backend")

    assert await engine.remove("team-a", "proj", "first")
    assert not mine.worktree_dir("first").exists() and not mine.cache_dir.exists()
    assert len(list(mine.project_dir.glob(".quarantine-*"))) == 1
    assert tree_files(other.parent / "backend") == before  # the other namespace's worktree is intact


async def test_a_planted_commondir_cannot_make_teardown_delete_another_namespaces_pin(
    engine: Engine, ro_repo: StandardRepo, ro_daemon: GitDaemon, volume: Path
) -> None:
    """The attack: team-a's cache points its commondir at team-b's, and a loose pin file
    makes teardown of team-a's `victim` run `update-ref -d` — on team-b's refs."""
    mine, other = await two_namespaces(engine, ro_repo, ro_daemon, volume)
    run_git("update-ref", "refs/workspaces/victim", ro_repo.main, cwd=other)  # team-b's live pin
    _commondir(mine, ro_repo, other)
    (mine.cache_dir / "refs" / "workspaces").mkdir(parents=True, exist_ok=True)
    (mine.cache_dir / "refs" / "workspaces" / "victim").write_text(f"{ro_repo.main}\n")

    await engine.remove("team-a", "proj", "victim")
    pinned = run_git("rev-parse", "--verify", "refs/workspaces/victim", cwd=other).stdout.strip()
    assert pinned == ro_repo.main
    assert not mine.cache_dir.exists() and len(list(mine.project_dir.glob(".quarantine-*"))) == 1
