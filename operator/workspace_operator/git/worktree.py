"""One detached worktree per Workspace, proven complete by a record written last.

A directory at the worktree path means nothing by itself: a crash can leave a
half-checked-out tree there. The worktree counts as complete only when its
completion record (`<project>/.ready/<name>`, written atomically after every
step succeeded) names the same commit. Anything else is torn down and rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from workspace_operator.git.cache import unlock_crashed_worktrees
from workspace_operator.git.errors import GitError, Reason
from workspace_operator.git.layout import ProjectLayout, resolve_inside
from workspace_operator.git.runner import GitRunner
from workspace_operator.git.submodules import Submodules

log = logging.getLogger("workspace_operator.worktree")


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
            other.commit, other.sub_path, other.sparse, other.submodules)


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
        try:
            data = json.loads(self.layout.ready_record(name).read_text())
            return CompletionRecord(**data)
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def is_complete(self, spec: WorktreeSpec) -> bool:
        record = self.read_record(spec.name)
        path = self.layout.worktree_dir(spec.name)
        return record is not None and record.matches(spec) and self._attached(path)

    def _attached(self, path: Path) -> bool:
        """`path/.git` and the current cache's metadata point at each other.

        A worktree made from a cache that was since quarantined keeps its files,
        record and `.git` file, but that file names metadata the new cache lacks:
        git fails inside it, so it must be rebuilt, not reused. File reads only.
        """
        try:
            pointer = (path / ".git").read_text()
            if not pointer.startswith("gitdir: "):
                return False
            metadata = Path(pointer.removeprefix("gitdir: ").strip())
            back = Path((metadata / "gitdir").read_text().strip())
        except (OSError, ValueError):
            return False
        return (metadata.parent.resolve() == (self.cache / "worktrees").resolve()
                and back.resolve() == (path / ".git").resolve())

    async def add(self, spec: WorktreeSpec, env: dict[str, str], submodules: tuple[Submodules, str] | None = None
                  ) -> WorktreeResult:
        """Check out spec; `submodules` (updater, superproject URL) is required when spec asks for them."""
        started = time.monotonic()
        path = self.layout.worktree_dir(spec.name)
        if self.is_complete(spec):
            return WorktreeResult(path, self._workdir(path, spec), True, time.monotonic() - started)
        if self._leftovers(spec.name):
            await self.remove(spec.name)  # whatever a crash or an older spec left there

        workers = self.runner.settings.checkout_workers
        config = [f"checkout.workers={workers}"] if workers else []
        sparse = bool(spec.sparse)
        # Every checkout step gets the credentials: in a partial clone (blob:none)
        # git fetches the blobs it writes from the promisor remote right here.
        await self.runner.run(
            "worktree-add",
            ["worktree", "add", "--detach", "--quiet", *(["--no-checkout"] if sparse else []),
             "--", str(path), spec.commit],
            cwd=self.cache,
            env=env,
            config=config,
        )
        if sparse:
            await self.runner.run("sparse-checkout",
                                  ["sparse-checkout", "set", "--cone", "--", *map(str, spec.sparse)],
                                  cwd=path, env=env)
            await self.runner.run("checkout", ["checkout", "--quiet", "--detach", spec.commit, "--"],
                                  cwd=path, env=env, config=config)
        if spec.submodules:
            if submodules is None:
                raise ValueError("a worktree with submodules needs a Submodules updater")
            updater, url = submodules
            await updater.update(path, url)
        workdir = self._workdir(path, spec)
        self._write_record(spec)
        return WorktreeResult(path, workdir, False, time.monotonic() - started)

    def _leftovers(self, name: str) -> bool:
        """Anything of a previous attempt at this name: directory, record or git metadata."""
        path = self.layout.worktree_dir(name)
        record = self.layout.ready_record(name)
        return (path.exists() or path.is_symlink() or record.exists()
                or record.with_name(f".{name}.partial").exists() or (self.cache / "worktrees" / name).exists())

    def _workdir(self, path: Path, spec: WorktreeSpec) -> Path:
        if spec.sub_path is None:
            return path
        workdir = resolve_inside(path, spec.sub_path)
        if not workdir.is_dir():
            raise GitError(Reason.SUBPATH_NOT_FOUND, f"subPath {str(spec.sub_path)!r} is not a directory "
                           f"at commit {spec.commit[:12]}", step="check-subpath")
        return workdir

    def _write_record(self, spec: WorktreeSpec) -> None:
        self.layout.ready_dir.mkdir(exist_ok=True)
        target = self.layout.ready_record(spec.name)
        partial = target.with_name(f".{target.name}.partial")
        with open(partial, "w") as handle:
            json.dump(asdict(CompletionRecord.of(spec)), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(partial, target)

    async def remove(self, name: str) -> bool:
        """Remove worktree `name` and its metadata; works without the cache or the directory."""
        path = self.layout.worktree_dir(name)
        record = self.layout.ready_record(name)
        record.unlink(missing_ok=True)  # incomplete from here on
        record.with_name(f".{name}.partial").unlink(missing_ok=True)  # a crash mid-write
        existed = path.exists() or path.is_symlink()
        if self.cache.is_dir():
            unlock_crashed_worktrees(self.cache)  # else git refuses to remove or prune them
        if existed and self.cache.is_dir():
            try:
                await self.runner.run("worktree-remove", ["worktree", "remove", "--force", "--force", "--", str(path)],
                                      cwd=self.cache)
            except GitError as error:
                log.info("worktree remove %s fell back to rmtree: %s", name, error)
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
        if self.cache.is_dir():
            await self.runner.run("worktree-prune", ["worktree", "prune"], cwd=self.cache)
        return existed
