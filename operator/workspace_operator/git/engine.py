"""The git engine's public face: validate a request, materialize it, remove it.

It knows paths, git and credentials, and nothing of Kubernetes (an import-linter
contract enforces that). Callers hold the project's lock around `checkout`,
`pin` and `remove`; `validate` and `is_complete` need no lock.

Two ways to materialize: `checkout` adds a worktree on the volume; `pin` (cache-only
Workspaces) only makes sure the commit is in the cache and pins it there, for a job
to make its own checkout from the read-only cache (see git/pins.py).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from workspace_operator.git import pins, safepath
from workspace_operator.git.cache import LAST_USED, Cache, Resolution, stamp
from workspace_operator.git.credentials import Credentials, credential_env
from workspace_operator.git.errors import GitError, Redactor
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
    cache_only: bool = False  # pin the commit in the cache; no worktree
    tags: bool = False  # also fetch every upstream tag into the cache
    # UID of the namespace now: a cache recorded for another UID (a namespace
    # deleted and created again) is not reused. None: not checked.
    namespace_uid: str | None = None


@dataclass(frozen=True)
class CheckoutResult:
    commit: str
    path: PurePosixPath | None  # worktree, relative to the volume root; None when cache-only
    workdir: PurePosixPath | None  # path + subPath
    cache_hit: bool
    fetched: bool
    reused: bool  # an intact worktree was already there: nothing was done
    cache_repaired: str | None
    fetch_seconds: float
    checkout_seconds: float  # worktree checkout, or pinning when cache-only
    total_seconds: float
    cache_path: PurePosixPath | None = None  # the project's cache, relative to the volume root


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
        # Resolved once: below it every path is compared as written, never resolved
        # again (resolving would follow links planted on the volume).
        self.root = root.resolve()
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
        """An intact, completed worktree (or, cache-only, the pin) at this commit exists (no git call)."""
        if valid.request.cache_only:
            return pins.read(valid.layout.cache_dir, valid.request.name) == commit
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
            resolution = await self._resolve(cache, valid, env)
            checkout_started = time.monotonic()
            submodules = Submodules(runner, self.policy, session, request.repository)
            worktree = await Worktrees(runner, layout).add(valid.worktree_spec(resolution.commit), env, submodules)
            stamp(layout.root, layout.cache_dir, LAST_USED)
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
            cache_path=_relative(self.root, layout.cache_dir),
        )

    async def pin(self, valid: ValidRequest) -> CheckoutResult:
        """Cache → fetch (only if needed) → pin ref; no worktree. The caller holds the project lock."""
        started = time.monotonic()
        request, layout = valid.request, valid.layout
        runner = self.runner_for(request.credentials)
        cache = Cache(runner, layout)
        await self.policy.check_addresses(self.policy.check(request.repository))
        with credential_env(request.credentials, self.settings.scratch_dir, request.repository) as session:
            resolution = await self._resolve(cache, valid, session.env)
            pin_started = time.monotonic()
            reused = pins.read(layout.cache_dir, request.name) == resolution.commit
            if not reused:
                await pins.pin(runner, layout.cache_dir, request.name, resolution.commit)
            stamp(layout.root, layout.cache_dir, LAST_USED)
        return CheckoutResult(
            commit=resolution.commit, path=None, workdir=None, cache_hit=resolution.cache_hit,
            fetched=resolution.fetched, reused=reused, cache_repaired=resolution.repaired,
            fetch_seconds=resolution.fetch_seconds, checkout_seconds=time.monotonic() - pin_started,
            total_seconds=time.monotonic() - started, cache_path=_relative(self.root, layout.cache_dir),
        )

    async def _resolve(self, cache: Cache, valid: ValidRequest, env: dict[str, str]) -> Resolution:
        layout, request = valid.layout, valid.request
        resolution = await cache.open(request.repository, env, request.revision,
                                      verified=layout.relative_dir in self._verified, owner=request.namespace_uid)
        self._verified.add(layout.relative_dir)
        if request.tags:
            # Every tag, so that `git describe` gives the same answer in every checkout.
            await cache.fetch_tags(env)
        return resolution

    async def remove(self, namespace: str, project: str, name: str) -> bool:
        """Remove a Workspace's worktree and pin; False if neither existed. The caller holds the project lock."""
        layout = ProjectLayout(self.root, namespace, project)
        runner = self.runner_for(None)
        existed = await Worktrees(runner, layout).remove(name)  # refuses a project reached through a link
        unpinned = safepath.kind(layout.cache_dir) == "dir" and await pins.unpin(runner, layout.cache_dir, name)
        return existed or unpinned


def _relative(root: Path, path: Path) -> PurePosixPath:
    return PurePosixPath(path.relative_to(root))


class Maintenance:
    """GC's git and filesystem steps; the caller holds the project lock for each."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _layout(self, namespace: str, project: str) -> ProjectLayout:
        return ProjectLayout(self.engine.root, namespace, project)

    async def _checked_cache(self, namespace: str, project: str) -> Cache | None:
        """The project's cache if git may run in it: present, and passing the same
        inspection as before a checkout (else it is quarantined now)."""
        layout = self._layout(namespace, project)
        try:
            safepath.check_real_dirs(layout.root, layout.project_dir)  # UnsafeVolumePath through a link
        except FileNotFoundError:
            return None
        if safepath.kind(layout.cache_dir) is None:
            return None
        cache = Cache(self.engine.runner_for(None), layout)
        if await cache.check_for_maintenance():
            return cache
        self.engine.forget(layout)
        return None

    async def prune(self, namespace: str, project: str) -> None:
        if cache := await self._checked_cache(namespace, project):
            await cache.prune_worktrees()

    async def unpin(self, namespace: str, project: str, name: str) -> None:
        if cache := await self._checked_cache(namespace, project):
            await pins.unpin(cache.runner, cache.path, name)

    async def gc_cache(self, namespace: str, project: str) -> None:
        if cache := await self._checked_cache(namespace, project):
            await cache.gc()

    def delete_cache(self, namespace: str, project: str) -> None:
        """Remove the cache; the project directory goes too once nothing else is in it."""
        layout = self._layout(namespace, project)
        safepath.remove(layout.root, layout.cache_dir)
        safepath.remove(layout.root, layout.ready_dir)
        with contextlib.suppress(OSError, GitError):
            safepath.rmdir(layout.root, layout.project_dir)
        self.engine.forget(layout)

    def remove_debris(self, namespace: str, project: str, entry: str) -> None:
        layout = self._layout(namespace, project)
        if not entry.startswith((STAGING_PREFIX, QUARANTINE_PREFIX)) or "/" in entry:
            raise ValueError(f"not a debris entry: {entry!r}")
        safepath.remove(layout.root, layout.project_dir / entry)
