"""A writable checkout owned by the job, borrowing the objects of the read-only cache.

Before anything else the mounted cache is checked as the operator checks it
(git/mounted.py): reached without following a link, no planted files or config;
else nothing runs. Then the cache is asked whether it holds the commit and
whether subPath is a directory in that commit (as the operator checks a
cache-only Workspace), before the target directory is touched. Then `git init`
in the target directory, the checked cache's object directory as its only
alternate (objects/info/alternates: nothing is copied), origin set to the
Workspace's repository without credentials, refs written as a packed-refs
file, then the commit checked out (sparse if asked; submodules if asked,
checked like the operator's). A failure from there on removes what was
written: the target directory itself (and parents) if the command made it,
else its contents. Every git call goes through the engine's hardened runner:
no hooks, no credential helpers, no user or system config, `safe.directory`
only for that one cache, a timeout. The cache is only ever read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from workspace_operator.cli.errors import CliError, Exit
from workspace_operator.git import (
    SHA,
    GitError,
    GitRunner,
    GitSettings,
    MountedCache,
    Reason,
    check_ref_name,
    check_relpath,
    check_sparse_dir,
    check_tree_path,
    open_mounted_cache,
    workdir_of,
)


@dataclass(frozen=True)
class Source:
    """What to check out, read from a Ready Workspace."""

    repository: str
    commit: str
    cache_root: Path  # where the job mounts the workspace volume (or the project's cache below it)
    cache_path: PurePosixPath  # status.cachePath: <namespace>/<project>/.cache below cache_root
    sub_path: PurePosixPath | None = None
    sparse: tuple[PurePosixPath, ...] = ()
    submodules: bool = False
    all_tags: bool = False  # spec.tags: the cache holds every upstream tag
    tag: str | None = None
    branch: str | None = None

    @property
    def cache(self) -> Path:
        return self.cache_root / self.cache_path


def source_of(obj: Mapping[str, Any], cache_root: Path) -> Source:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    commit, cache_path = str(status.get("commit") or ""), str(status.get("cachePath") or "")
    if not SHA.match(commit) or not cache_path:
        raise CliError(
            Exit.FAILED,
            "the Workspace's status has no commit or cachePath (an operator older than the cache-only mode?)",
        )
    try:
        relative = check_relpath("status.cachePath", cache_path)
        ref = spec.get("ref") or {}
        return Source(
            repository=str(spec.get("repository", "")),
            commit=commit,
            cache_root=cache_root,
            cache_path=relative,
            sub_path=check_relpath("subPath", spec["subPath"]) if spec.get("subPath") else None,
            sparse=tuple(check_sparse_dir(entry) for entry in spec.get("sparse") or ()),
            submodules=bool(spec.get("submodules")),
            all_tags=bool(spec.get("tags")),
            tag=check_ref_name("tag", ref["tag"]) if ref.get("tag") else None,
            branch=check_ref_name("branch", ref["branch"]) if ref.get("branch") else None,
        )
    except GitError as error:
        raise CliError(Exit.FAILED, f"unusable Workspace: {error.message}") from None


async def checkout(source: Source, into: Path, *, clean: bool, settings: GitSettings) -> Path:
    """Make the checkout; returns the directory to work in (into, or into/subPath).

    What the cache alone can tell (the commit is there, subPath is a directory in it)
    is asked before `into` is touched; a later failure removes what was written
    (`into` too, and its parents, if they were made here)."""
    cache = await _open_cache(source, settings)
    runner = cache.runner()
    await _check_commit(runner, source, cache)
    made = _prepare(into, clean)
    try:
        return await _fill(runner, source, cache, into)
    except BaseException:
        _undo(into, made)
        raise


async def _check_commit(runner: GitRunner, source: Source, cache: MountedCache) -> None:
    """The commit is in the cache, and subPath a directory in it (as the operator checks it)."""
    if not await runner.ok("has-commit", ["cat-file", "-e", f"{source.commit}^{{commit}}"], cwd=cache.path):
        raise CliError(
            Exit.COMMIT_MISSING,
            f"commit {source.commit} is not in the cache at {source.cache} "
            "(was the Workspace deleted, or is another volume mounted there?)",
        )
    if source.sub_path is not None:
        try:
            await check_tree_path(runner, cache.path, source.commit, source.sub_path, source.submodules)
        except GitError as error:
            raise CliError(Exit.FAILED, error.message) from None


async def _fill(runner: GitRunner, source: Source, cache: MountedCache, into: Path) -> Path:
    try:
        await runner.run("init", ["init", "--quiet", "--template=", "--", str(into)], cwd=into)
        info = into / ".git" / "objects" / "info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "alternates").write_text(f"{cache.path / 'objects'}\n")
        for key, value in (
            ("remote.origin.url", source.repository),
            ("remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*"),
        ):
            await runner.run("configure", ["config", key, value], cwd=into)
        await _write_refs(runner, source, cache, into)
        if source.sparse:
            await runner.run(
                "sparse-checkout", ["sparse-checkout", "set", "--cone", "--", *map(str, source.sparse)], cwd=into
            )
        await runner.run("checkout", ["checkout", "--quiet", "--detach", source.commit, "--"], cwd=into)
        if source.submodules:
            # From their own upstreams, without credentials: the cache holds only the superproject.
            await cache.update_submodules(into, source.repository)
    except GitError as error:
        if error.step == "validate":  # a submodule URL the policy refuses: nothing was fetched for it
            raise CliError(Exit.FAILED, f"submodules refused ({error.reason}): {error.message}") from None
        raise CliError(Exit.FAILED, f"git {error.step} failed in {into}: {error.message}") from None
    try:
        # The job cds there: a committed symlink on the way would lead it out of its checkout.
        return workdir_of(into, source.sub_path, source.commit)
    except GitError as error:
        raise CliError(Exit.FAILED, error.message) from None


async def _open_cache(source: Source, settings: GitSettings) -> MountedCache:
    try:
        return await open_mounted_cache(settings, source.cache_root, source.cache_path)
    except FileNotFoundError:
        raise CliError(
            Exit.CACHE_NOT_MOUNTED,
            f"no git cache at {source.cache}: mount the workspace volume (read-only) "
            "at --cache-root (WORKSPACE_CACHE_ROOT), or its status.cachePath at the same path below it",
        ) from None
    except GitError as error:
        if error.reason is Reason.UNSAFE_PATH:
            raise CliError(Exit.UNSAFE_CACHE, f"unsafe cache under {source.cache_root}: {error.message}") from None
        raise CliError(Exit.FAILED, f"unusable cache at {source.cache}: {error.message}") from None


def check_target(into: Path) -> None:
    """`--into` names a directory, or a path that can become one (before any waiting)."""
    for path in (into, *into.parents):
        if path.exists():
            if not path.is_dir():
                raise CliError(Exit.USAGE, f"--into {into}: {path} exists and is not a directory")
            return


def _prepare(into: Path, clean: bool) -> Path | None:
    """Make `into` ready: created if missing, else empty (emptied with `clean`).
    Returns the topmost directory made here (None if `into` existed)."""
    check_target(into)
    made = None
    for path in (into, *into.parents):
        if os.path.lexists(path):
            break
        made = path
    try:
        into.mkdir(parents=True, exist_ok=True)
        entries = list(into.iterdir())
    except OSError as error:
        raise CliError(Exit.FAILED, f"--into {into}: {error.strerror}") from None
    if entries and not clean:
        raise CliError(Exit.DIRECTORY_NOT_EMPTY, f"{into} is not empty (pass --clean to empty it first)")
    _empty(entries)
    return made


def _empty(entries: list[Path]) -> None:
    for entry in entries:  # the directory itself may be a mount point: keep it
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _undo(into: Path, made: Path | None) -> None:
    """After a failure: nothing of the checkout is left (what was made here goes whole)."""
    with contextlib.suppress(OSError):
        if made is not None:
            shutil.rmtree(made)
        else:
            _empty(list(into.iterdir()))


async def _write_refs(runner: GitRunner, source: Source, cache: MountedCache, into: Path) -> None:
    """Tags (all of the cache's with spec.tags, else the one asked for) and origin's branch, as packed refs."""
    refs: dict[str, str] = {}
    if source.all_tags or source.tag:
        wanted = "refs/tags/" if source.all_tags else f"refs/tags/{source.tag}"
        listing = await runner.run(
            "list-tags", ["for-each-ref", "--format=%(objectname) %(refname)", "--", wanted], cwd=cache.path
        )
        for line in listing.stdout.splitlines():
            sha, _, ref = line.partition(" ")
            if SHA.match(sha) and ref.startswith("refs/tags/"):
                refs[ref] = sha
    if source.branch:
        refs[f"refs/remotes/origin/{source.branch}"] = source.commit
    if refs:
        lines = "".join(f"{sha} {ref}\n" for ref, sha in sorted(refs.items()))
        packed = into / ".git" / "packed-refs"
        packed.write_text("# pack-refs with: sorted \n" + lines)
        os.chmod(packed, 0o644)
