"""The git engine's public face: validate a request, materialize it, remove it.

It knows paths, git and credentials, and nothing of Kubernetes (an import-linter
contract enforces that). Callers hold the project's lock around `checkout` and
`remove`; `validate` and `is_complete` need no lock.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from workspace_operator.git.cache import LAST_USED, Cache, stamp
from workspace_operator.git.credentials import Credentials, credential_env
from workspace_operator.git.errors import Redactor
from workspace_operator.git.layout import (
    QUARANTINE_PREFIX,
    STAGING_PREFIX,
    ProjectLayout,
    check_label,
    check_relpath,
    invalid,
)
from workspace_operator.git.policy import URLPolicy
from workspace_operator.git.runner import GitRunner, GitSettings
from workspace_operator.git.source import Revision
from workspace_operator.git.submodules import Submodules
from workspace_operator.git.tls import ca_env
from workspace_operator.git.worktree import Worktrees, WorktreeSpec


@dataclass(frozen=True)
class CheckoutRequest:
    namespace: str
    project: str
    name: str
    repository: str
    revision: Revision = Revision()
    sub_path: str | None = None
    sparse: tuple[str, ...] = ()
    submodules: bool = False
    credentials: Credentials | None = None


@dataclass(frozen=True)
class CheckoutResult:
    commit: str
    path: PurePosixPath  # worktree, relative to the volume root
    workdir: PurePosixPath  # path + subPath
    cache_hit: bool
    fetched: bool
    reused: bool  # an intact worktree was already there: nothing was done
    cache_repaired: str | None
    fetch_seconds: float
    checkout_seconds: float
    total_seconds: float


@dataclass(frozen=True)
class ValidRequest:
    request: CheckoutRequest
    layout: ProjectLayout
    sub_path: PurePosixPath | None
    sparse: tuple[PurePosixPath, ...]

    def worktree_spec(self, commit: str) -> WorktreeSpec:
        return WorktreeSpec(self.request.name, commit, self.sub_path, self.sparse, self.request.submodules)


class Engine:
    def __init__(self, root: Path, settings: GitSettings) -> None:
        self.root = root
        self.settings = settings
        self.policy = URLPolicy(settings, root)
        # Caches fully checked (fsck) by this process; others get the deep check first.
        self._verified: set[PurePosixPath] = set()

    def validate(self, request: CheckoutRequest) -> ValidRequest:
        """Every rule the CRD enforces, again, before anything touches the disk or network."""
        layout = ProjectLayout(self.root, request.namespace, request.project)
        check_label("workspace name", request.name)
        self.policy.check(request.repository)
        sub_path = check_relpath("subPath", request.sub_path) if request.sub_path else None
        sparse = tuple(check_relpath("sparse entry", entry) for entry in request.sparse)
        if sub_path and sparse and not any(sub_path == s or s in sub_path.parents for s in sparse):
            raise invalid(f"subPath {str(sub_path)!r} is outside every sparse directory")
        return ValidRequest(request, layout, sub_path, sparse)

    def forget(self, layout: ProjectLayout) -> None:
        """The cache was removed: a new one must be fully checked again."""
        self._verified.discard(layout.relative_dir)

    def runner_for(self, credentials: Credentials | None) -> GitRunner:
        redact = Redactor()
        if credentials:
            credentials.register(redact)
        return GitRunner(self.settings, redact)

    def is_complete(self, valid: ValidRequest, commit: str) -> bool:
        """An intact, completed worktree for this request at this commit exists (no git call)."""
        worktrees = Worktrees(self.runner_for(None), valid.layout)
        return worktrees.is_complete(valid.worktree_spec(commit))

    async def checkout(self, valid: ValidRequest) -> CheckoutResult:
        """Cache → fetch (only if needed) → worktree. The caller holds the project lock."""
        started = time.monotonic()
        request, layout = valid.request, valid.layout
        runner = self.runner_for(request.credentials)
        cache = Cache(runner, layout)
        await self.policy.check_addresses(self.policy.check(request.repository))
        ca_bundle = request.credentials.ca_bundle if request.credentials else None
        with credential_env(request.credentials, self.settings.scratch_dir, request.repository) as session, \
                ca_env(ca_bundle, self.settings.scratch_dir) as tls_env:
            # The Secret's CA is for its repository (and submodules it covers), not for others.
            session.env.update(tls_env)
            env = session.env
            resolution = await cache.open(request.repository, env, request.revision,
                                          verified=layout.relative_dir in self._verified)
            self._verified.add(layout.relative_dir)
            checkout_started = time.monotonic()
            submodules = (Submodules(runner, self.policy, session), request.repository)
            worktree = await Worktrees(runner, layout).add(valid.worktree_spec(resolution.commit), env, submodules)
            stamp(layout.cache_dir, LAST_USED)
        checkout_seconds = time.monotonic() - checkout_started
        return CheckoutResult(
            commit=resolution.commit,
            path=_relative(self.root, worktree.path),
            workdir=_relative(self.root, worktree.workdir),
            cache_hit=resolution.cache_hit,
            fetched=resolution.fetched,
            reused=worktree.reused,
            cache_repaired=resolution.repaired,
            fetch_seconds=resolution.fetch_seconds,
            checkout_seconds=checkout_seconds,
            total_seconds=time.monotonic() - started,
        )

    async def remove(self, namespace: str, project: str, name: str) -> bool:
        """Remove a Workspace's worktree; the caller holds the project lock."""
        layout = ProjectLayout(self.root, namespace, project)
        return await Worktrees(self.runner_for(None), layout).remove(name)


def _relative(root: Path, path: Path) -> PurePosixPath:
    return PurePosixPath(path.resolve().relative_to(root.resolve()))


class Maintenance:
    """GC's git and filesystem steps; the caller holds the project lock for each."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _layout(self, namespace: str, project: str) -> ProjectLayout:
        return ProjectLayout(self.engine.root, namespace, project)

    async def prune(self, namespace: str, project: str) -> None:
        layout = self._layout(namespace, project)
        if layout.cache_dir.is_dir():
            await Cache(self.engine.runner_for(None), layout).prune_worktrees()

    async def gc_cache(self, namespace: str, project: str) -> None:
        layout = self._layout(namespace, project)
        if layout.cache_dir.is_dir():
            await Cache(self.engine.runner_for(None), layout).gc()

    def delete_cache(self, namespace: str, project: str) -> None:
        """Remove the cache; the project directory goes too once nothing else is in it."""
        layout = self._layout(namespace, project)
        shutil.rmtree(layout.cache_dir, ignore_errors=True)
        shutil.rmtree(layout.ready_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            layout.project_dir.rmdir()
        self.engine.forget(layout)

    def remove_debris(self, namespace: str, project: str, entry: str) -> None:
        layout = self._layout(namespace, project)
        if not entry.startswith((STAGING_PREFIX, QUARANTINE_PREFIX)) or "/" in entry:
            raise ValueError(f"not a debris entry: {entry!r}")
        shutil.rmtree(layout.project_dir / entry, ignore_errors=True)
