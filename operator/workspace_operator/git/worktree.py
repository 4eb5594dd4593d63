"""One detached worktree per Workspace, proven complete by a record written last.

A directory at the worktree path means nothing by itself: a crash can leave a
half-checked-out tree there. The worktree counts as complete only when its
completion record (`<project>/.ready/<name>`, written atomically after every
step succeeded) names the same commit. Anything else is torn down and rebuilt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from workspace_operator.git import safepath
from workspace_operator.git.errors import GitError, Reason
from workspace_operator.git.layout import ProjectLayout, invalid
from workspace_operator.git.markers import unlock_crashed_worktrees
from workspace_operator.git.runner import GitRunner
from workspace_operator.git.submodules import Submodules

log = logging.getLogger("workspace_operator.worktree")
T = TypeVar("T")


async def _in_thread(function: Callable[..., T], *args: Any) -> T:
    """Run blocking file work in a thread. A cancelled caller still waits for it to end:
    nothing it writes may land after the caller has moved on (to a teardown, say)."""
    work = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait({work})
        raise


@dataclass(frozen=True)
class WorktreeSpec:
    name: str
    commit: str
    sub_path: PurePosixPath | None = None
    sparse: tuple[PurePosixPath, ...] = ()
    submodules: bool = False


@dataclass(frozen=True)
class CompletionRecord:
    commit: str
    sub_path: str
    sparse: list[str]
    submodules: bool
    completed_at: float

    @classmethod
    def of(cls, spec: WorktreeSpec) -> CompletionRecord:
        return cls(spec.commit, str(spec.sub_path or ""), [str(p) for p in spec.sparse], spec.submodules, time.time())

    def matches(self, spec: WorktreeSpec) -> bool:
        other = CompletionRecord.of(spec)
        return (self.commit, self.sub_path, self.sparse, self.submodules) == (
            other.commit,
            other.sub_path,
            other.sparse,
            other.submodules,
        )


@dataclass(frozen=True)
class Registered:
    """A worktree whose git metadata exists and whose files are not written yet."""

    spec: WorktreeSpec
    path: Path
    started: float


@dataclass(frozen=True)
class WorktreeResult:
    path: Path
    workdir: Path
    reused: bool
    seconds: float


class Worktrees:
    def __init__(self, runner: GitRunner, layout: ProjectLayout) -> None:
        self.runner = runner
        self.layout = layout
        self.cache = layout.cache_dir

    def read_record(self, name: str) -> CompletionRecord | None:
        """The record, read without following links (a planted link reads as no record)."""
        try:
            data = json.loads(safepath.read_text(self.layout.root, self.layout.ready_record(name)))
            return CompletionRecord(**data)
        except (OSError, GitError, ValueError, TypeError):
            return None

    def is_complete(self, spec: WorktreeSpec) -> bool:
        record = self.read_record(spec.name)
        path = self.layout.worktree_dir(spec.name)
        return record is not None and record.matches(spec) and self._attached(path)

    def _attached(self, path: Path) -> bool:
        """`path/.git` and the current cache's metadata point at each other.

        A worktree made from a cache that was since quarantined keeps its files,
        record and `.git` file, but that file names metadata the new cache lacks:
        git fails inside it, so it must be rebuilt, not reused. File reads only,
        none through a link; paths compare as written (git writes real paths, and
        the root is resolved once at startup).
        """
        root = self.layout.root
        try:
            pointer = safepath.read_text(root, path / ".git")
            if not pointer.startswith("gitdir: "):
                return False
            metadata = Path(pointer.removeprefix("gitdir: ").strip())
            if metadata.parent != self.cache / "worktrees":
                return False
            back = Path(safepath.read_text(root, metadata / "gitdir").strip())
        except (OSError, GitError, ValueError):
            return False
        return back == path / ".git"

    async def add(
        self, spec: WorktreeSpec, env: dict[str, str], submodules: Submodules | None = None
    ) -> WorktreeResult:
        """Register and populate in one go (the caller holds the project lock throughout)."""
        registered = await self.register(spec, env)
        if isinstance(registered, WorktreeResult):
            return registered
        return await self.populate(registered, env, submodules)

    async def register(self, spec: WorktreeSpec, env: dict[str, str]) -> WorktreeResult | Registered:
        """The step that writes the cache: the worktree's git metadata, no files yet.

        Returns the finished result when an intact worktree is already there.
        The caller holds the project lock. The files are written by `populate`,
        which needs no lock: it touches only this worktree's directory and its
        private metadata (index, HEAD, submodules) — never the shared objects,
        refs or config.
        """
        started = time.monotonic()
        path = self.layout.worktree_dir(spec.name)
        if self.is_complete(spec):
            return WorktreeResult(path, workdir_of(path, spec.sub_path, spec.commit), True, time.monotonic() - started)
        if self._leftovers(spec.name):
            await self.remove(spec.name)  # whatever a crash or an older spec left there
        safepath.check_real_dirs(self.layout.root, self.cache)
        await self.runner.run(
            "worktree-add",
            ["worktree", "add", "--detach", "--quiet", "--no-checkout", "--", str(path), spec.commit],
            cwd=self.cache,
            env=env,
        )
        safepath.check_real_dirs(self.layout.root, path)  # git made it; nothing swapped it for a link since
        if spec.sparse:
            # Here rather than in populate: the first sparse worktree of a cache turns on
            # extensions.worktreeConfig in the cache's shared config.
            await self.runner.run(
                "sparse-checkout", ["sparse-checkout", "set", "--cone", "--", *map(str, spec.sparse)], cwd=path, env=env
            )
        return Registered(spec, path, started)

    async def populate(
        self, registered: Registered, env: dict[str, str], submodules: Submodules | None = None
    ) -> WorktreeResult:
        """Write a registered worktree's files, then its completion record (last).

        `submodules` is required when the spec asks for them;
        they live in this worktree's private metadata, so they need no lock either.
        """
        spec, path = registered.spec, registered.path
        safepath.check_real_dirs(self.layout.root, path)  # nothing swapped it for a link since registration
        workers = self.runner.settings.checkout_workers
        config = [f"checkout.workers={workers}"] if workers else []
        # Every checkout step gets the credentials: in a partial clone (blob:none)
        # git fetches the blobs it writes from the promisor remote right here.
        await self.runner.run(
            "checkout", ["checkout", "--quiet", "--detach", spec.commit, "--"], cwd=path, env=env, config=config
        )
        if spec.submodules:
            if submodules is None:
                raise ValueError("a worktree with submodules needs a Submodules updater")
            await submodules.update(path)
        workdir = workdir_of(path, spec.sub_path, spec.commit)
        # Its fsync waits for the disk: in a thread, so a burst's other work goes on meanwhile.
        await _in_thread(self._write_record, spec)
        return WorktreeResult(path, workdir, False, time.monotonic() - registered.started)

    def _leftovers(self, name: str) -> bool:
        """Anything of a previous attempt at this name: directory, record or git metadata."""
        path = self.layout.worktree_dir(name)
        record = self.layout.ready_record(name)
        return any(
            safepath.kind(p) is not None
            for p in (path, record, record.with_name(f".{name}.partial"), self.cache / "worktrees" / name)
        )

    def _write_record(self, spec: WorktreeSpec) -> None:
        root, ready = self.layout.root, self.layout.ready_dir
        if safepath.kind(ready) == "link":
            log.warning("removing the symlink planted at %s/%s", self.layout.relative_dir, ready.name)
            safepath.remove(root, ready)  # the link itself, never its target
        safepath.make_dirs(root, ready)
        safepath.write_atomic(root, self.layout.ready_record(spec.name), json.dumps(asdict(CompletionRecord.of(spec))))

    async def remove(self, name: str) -> bool:
        """Remove worktree `name` and its metadata; works without the cache or the directory.

        Nothing is followed: the project directory must be reached without links
        (else UnsafeVolumePath, nothing touched); a link at the worktree's or a
        record's place is removed as a link; git runs only on a real directory.
        """
        root, path = self.layout.root, self.layout.worktree_dir(name)
        try:
            safepath.check_real_dirs(root, self.layout.project_dir)
        except FileNotFoundError:
            return False
        record = self.layout.ready_record(name)
        if safepath.kind(self.layout.ready_dir) == "dir":
            safepath.remove(root, record)  # incomplete from here on
            safepath.remove(root, record.with_name(f".{name}.partial"))  # a crash mid-write
        found = safepath.kind(path)
        cache_ok = safepath.kind(self.cache) == "dir"
        if cache_ok:
            unlock_crashed_worktrees(root, self.cache)  # else git refuses to remove or prune them
        if found == "dir" and cache_ok:
            try:
                await self.runner.run(
                    "worktree-remove", ["worktree", "remove", "--force", "--force", "--", str(path)], cwd=self.cache
                )
            except GitError as error:
                log.info("worktree remove %s fell back to rmtree: %s", name, error)
        elif found == "link":
            log.warning("removing the symlink planted at %s/%s", self.layout.relative_dir, name)
        safepath.remove(root, path)
        if cache_ok:
            await self.runner.run("worktree-prune", ["worktree", "prune"], cwd=self.cache)
        return found is not None


def workdir_of(path: Path, sub_path: PurePosixPath | None, commit: str) -> Path:
    """path/subPath, every component a real directory: a committed symlink is never
    followed (the operator's worktree and a job's own checkout alike)."""
    if sub_path is None:
        return path
    workdir = path
    for part in sub_path.parts:
        workdir = workdir / part
        found = safepath.kind(workdir)
        if found == "link":
            raise _through_link(sub_path, commit)
        if found != "dir":
            raise _not_a_directory(sub_path, commit)
    return workdir


_TREE, _LINK, _GITLINK = "040000", "120000", "160000"


async def check_tree_path(
    runner: GitRunner, repo: Path, commit: str, sub_path: PurePosixPath, submodules: bool = False
) -> None:
    """Would `workdir_of` accept sub_path in a checkout of `commit`? Asked of the commit's
    tree in `repo` (no checkout needed), with the same verdicts: a component that is a
    symlink (mode 120000) is InvalidSpec, one missing or a file is SubPathNotFound.

    A submodule (a gitlink) is a directory in a checkout: as the last component always,
    and anything below it is the submodule's own, unknown here, when submodules are
    checked out (a job's checkout checks it on disk); without them it is empty. One
    `ls-tree` per component, naming the tree by id and the entry as a literal path:
    nothing is parsed as a pattern, and no lazy fetch is ever made.
    """
    tree = f"{commit}^{{tree}}"
    env = {"GIT_LITERAL_PATHSPECS": "1", "GIT_ALLOW_PROTOCOL": ""}
    for index, part in enumerate(sub_path.parts):
        listing = await runner.run("check-subpath", ["ls-tree", "-z", tree, "--", part], cwd=repo, env=env)
        entries = (line.partition("\t") for line in listing.stdout.split("\0") if line)
        named = [meta.split() for meta, _, name in entries if name == part]
        # A crafted (unsorted) tree can hold the name twice, say a tree and a link, of
        # which a checkout writes the link: a name that is not exactly one entry, or
        # any entry of it a link, is refused.
        if any(entry[0] == _LINK for entry in named) or len(named) > 1:
            raise _through_link(sub_path, commit)
        found = named[0] if named else None
        if found is not None and found[0] == _GITLINK and (submodules or index == len(sub_path.parts) - 1):
            return
        if found is None or found[0] != _TREE:
            raise _not_a_directory(sub_path, commit)
        tree = found[2]


def _through_link(sub_path: PurePosixPath, commit: str) -> GitError:
    return invalid(f"subPath {str(sub_path)!r} goes through a symlink at commit {commit[:12]}")


def _not_a_directory(sub_path: PurePosixPath, commit: str) -> GitError:
    return GitError(
        Reason.SUBPATH_NOT_FOUND,
        f"subPath {str(sub_path)!r} is not a directory at commit {commit[:12]}",
        step="check-subpath",
    )
