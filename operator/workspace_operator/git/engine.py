"""The git engine's public face: validate a request, materialize it, remove it.

It knows paths, git and credentials, and nothing of Kubernetes (an import-linter
contract enforces that). Callers hold the project's lock around `prepare`,
`checkout`, `pin` and `remove`; `populate` (writing a registered worktree's
files), `validate` and `is_complete` need no lock.

Two ways to materialize: `prepare` + `populate` (or `checkout`, both at once)
add a worktree on the volume; `pin` (cache-only Workspaces) only makes sure the
commit is in the cache and pins it there, for a job to make its own checkout
from the read-only cache (see git/pins.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from workspace_operator.git import pins, safepath
from workspace_operator.git.cache import Cache
from workspace_operator.git.credentials import Credentials, CredentialSession, credential_env
from workspace_operator.git.errors import GitError, Redactor
from workspace_operator.git.housekeeping import Housekeeping
from workspace_operator.git.layout import (
    CACHE_DIR,
    QUARANTINE_PREFIX,
    STAGING_PREFIX,
    ProjectLayout,
    check_label,
    check_relpath,
    check_sparse_dir,
    invalid,
)
from workspace_operator.git.markers import HOLD_MARKER, LAST_USED, stamp
from workspace_operator.git.policy import URLPolicy
from workspace_operator.git.resolve import Answers, Resolution
from workspace_operator.git.runner import GitRunner, GitSettings
from workspace_operator.git.source import Revision
from workspace_operator.git.submodules import Submodules
from workspace_operator.git.tls import ca_env
from workspace_operator.git.worktree import Registered, WorktreeResult, Worktrees, WorktreeSpec, check_tree_path

DEFER_CUT_OFF_STEP_SECONDS = 600.0


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


@dataclass(frozen=True)
class Prepared:
    """A request after the exclusive phase: commit resolved, worktree registered (or reused)."""

    valid: ValidRequest
    resolution: Resolution
    worktree: WorktreeResult | Registered
    started: float
    partial_clone: bool

    @property
    def needs_lock(self) -> bool:
        """Whether writing the files also writes the cache, so must stay under the lock:
        in a partial clone checkout fetches missing blobs into the shared object store."""
        return isinstance(self.worktree, Registered) and self.partial_clone


class Engine:
    def __init__(self, root: Path, settings: GitSettings) -> None:
        # Resolved once: below it every path is compared as written, never resolved
        # again (resolving would follow links planted on the volume).
        self.root = root.resolve()
        self.settings = settings
        self.policy = URLPolicy(settings, root)
        # Caches this process opened already; others get the once-per-process checks first.
        self._verified: set[PurePosixPath] = set()
        self.answers = Answers()
        # Per cache: the lock hold (the caller's token) in which it was last inspected, what
        # it was checked for (repository, namespace UID), and the commits found in it during
        # that hold; reused only by the same hold asking for the same repository.
        self._checked: dict[PurePosixPath, tuple[object, tuple[str, str | None], frozenset[str]]] = {}
        # Upkeep steps cut off by their time box, and until when they are not tried again.
        self._deferred: dict[tuple[PurePosixPath, str], float] = {}

    def validate(self, request: CheckoutRequest) -> ValidRequest:
        """Every rule the CRD enforces, again, before anything touches the disk or network."""
        layout = ProjectLayout(self.root, request.namespace, request.project)
        check_label("workspace name", request.name)
        self.policy.check(request.repository)
        sub_path = check_relpath("subPath", request.sub_path) if request.sub_path else None
        sparse = tuple(check_sparse_dir(entry) for entry in request.sparse)
        if sub_path and sparse and not any(sub_path == s or s in sub_path.parents for s in sparse):
            raise invalid(f"subPath {str(sub_path)!r} is outside every sparse directory")
        return ValidRequest(request, layout, sub_path, sparse)

    def forget(self, layout: ProjectLayout) -> None:
        """The cache was removed: a new one must be fully checked again."""
        self._verified.discard(layout.relative_dir)
        self._checked.pop(layout.relative_dir, None)
        self.answers.forget(layout.cache_dir)

    def runner_for(
        self,
        credentials: Credentials | None,
        repository: str | None = None,
        *,
        namespace: str = "",
        project_dir: Path | None = None,
        workspace: str | None = None,
    ) -> GitRunner:
        """A runner for one namespace's git calls (its process slots are shared fairly
        between namespaces) whose messages hide the credentials. What the requester
        wrote itself is shown as a label, never redacted (a guess at the credentials
        written into it would come back as `***` exactly when right): its `repository`
        as `<spec.repository>`, and paths below its project directory (project and
        Workspace names) from `<project>`."""
        redact = Redactor()
        if credentials:
            credentials.register(redact)
        if repository:
            redact.quote(repository, "<spec.repository>")
        if project_dir is not None:
            redact.quote(str(project_dir), "<project>")
            if workspace:  # its worktree and its metadata in the cache, named as it is
                redact.quote(str(project_dir / workspace), f"<project>/{workspace}")
                worktrees = project_dir / CACHE_DIR / "worktrees" / workspace
                redact.quote(str(worktrees), f"<project>/{CACHE_DIR}/worktrees/{workspace}")
        return GitRunner(self.settings, redact, namespace)

    @contextlib.contextmanager
    def _session(self, request: CheckoutRequest) -> Iterator[CredentialSession]:
        """The Secret's credentials and its CA (`ca.crt`), both for the granted origins only:
        `session.env` (the repository, the submodules the Secret covers), never
        `session.anonymous` (every other submodule)."""
        creds = request.credentials
        with (
            credential_env(creds, self.settings.scratch_dir, request.repository) as session,
            ca_env(creds.ca_bundle if creds else None, self.settings.scratch_dir) as tls_env,
        ):
            session.env.update(tls_env)
            yield session

    def is_complete(self, valid: ValidRequest, commit: str) -> bool:
        """An intact, completed worktree (or, cache-only, the pin) at this commit exists (no git call)."""
        if valid.request.cache_only:
            return pins.read(valid.layout.cache_dir, valid.request.name) == commit
        worktrees = Worktrees(self.runner_for(None, namespace=valid.layout.namespace), valid.layout)
        return worktrees.is_complete(valid.worktree_spec(commit))

    async def checkout(self, valid: ValidRequest) -> CheckoutResult:
        """Both phases in one go; the caller holds the project lock throughout."""
        return await self.populate(await self.prepare(valid))

    async def prepare(
        self, valid: ValidRequest, *, not_before: float | None = None, hold: object | None = None
    ) -> Prepared:
        """The exclusive phase: cache → fetch (only if needed) → worktree registered.

        The caller holds the project lock. While this runs, the cache carries a
        hold marker; a process that dies here leaves it, and the next opening
        of the cache checks it in depth. `not_before` (monotonic) is when the
        request arrived: upstream answers asked since then may serve it. `hold`
        identifies the caller's hold of the lock: the steps of one hold share
        what they found out about the cache (inspected, commits present), so a
        burst costs one inspection, not one per Workspace.
        """
        started = time.monotonic()
        request, layout = valid.request, valid.layout
        runner = await self._allowed_runner(valid)
        previous = self._checked.pop(layout.relative_dir, None)  # back only if this step succeeds
        purpose = (request.repository, request.namespace_uid)
        # A hold serves one project's queue, whatever repository each Workspace names: the
        # check (origin, owner) made for one repository says nothing for another.
        checked = previous[2] if previous is not None and hold is not None and previous[:2] == (hold, purpose) else None
        with self._session(request) as session:
            env = session.env
            resolution = await self._resolve(Cache(runner, layout, self.answers), valid, env, not_before, checked)
            held = layout.cache_dir / HOLD_MARKER
            safepath.touch(layout.root, held)
            worktree = await Worktrees(runner, layout).register(valid.worktree_spec(resolution.commit), env)
            stamp(layout.root, layout.cache_dir, LAST_USED)
            safepath.remove(layout.root, held)  # not in a finally: only a clean end proves nothing was cut short
        if hold is not None:
            self._checked[layout.relative_dir] = (hold, purpose, (checked or frozenset()) | {resolution.commit})
        return Prepared(valid, resolution, worktree, started, self.settings.partial_clone)

    async def populate(self, prepared: Prepared) -> CheckoutResult:
        """Write the worktree's files and its completion record.

        Needs no lock unless `prepared.needs_lock`: it writes only the worktree's
        own directory and private metadata (submodules included). Garbage
        collection must not remove the worktree or its cache meanwhile: the
        operator counts the name as live while it is in flight, and across
        replicas the Workspace is live and young directories are never orphans.
        """
        request, layout = prepared.valid.request, prepared.valid.layout
        worktree = prepared.worktree
        if isinstance(worktree, Registered):
            runner = self.runner_for(
                request.credentials,
                request.repository,
                namespace=request.namespace,
                project_dir=layout.project_dir,
                workspace=request.name,
            )
            with self._session(request) as session:
                submodules = Submodules(runner, self.policy, session, request.repository)
                worktree = await Worktrees(runner, layout).populate(worktree, session.env, submodules)
        resolution = prepared.resolution
        return CheckoutResult(
            commit=resolution.commit,
            path=_relative(self.root, worktree.path),
            workdir=_relative(self.root, worktree.workdir),
            cache_hit=resolution.cache_hit,
            fetched=resolution.fetched,
            reused=worktree.reused,
            cache_repaired=resolution.repaired,
            fetch_seconds=resolution.fetch_seconds,
            checkout_seconds=worktree.seconds,
            total_seconds=time.monotonic() - prepared.started,
            cache_path=_relative(self.root, layout.cache_dir),
        )

    async def _allowed_runner(self, valid: ValidRequest) -> GitRunner:
        """The Workspace's runner, once its repository passed the URL and address policy."""
        request = valid.request
        runner = self.runner_for(
            request.credentials,
            request.repository,
            namespace=request.namespace,
            project_dir=valid.layout.project_dir,
            workspace=request.name,
        )
        await self.policy.check_addresses(self.policy.check(request.repository), namespace=request.namespace)
        return runner

    async def pin(self, valid: ValidRequest, *, not_before: float | None = None) -> CheckoutResult:
        """Cache → fetch (only if needed) → pin ref; no worktree. The caller holds the project lock."""
        started = time.monotonic()
        request, layout = valid.request, valid.layout
        runner = await self._allowed_runner(valid)
        with self._session(request) as session:
            resolution = await self._resolve(Cache(runner, layout, self.answers), valid, session.env, not_before)
            pin_started = time.monotonic()
            if valid.sub_path is not None:
                # No worktree shows it: the commit's tree says whether a checkout would have it.
                await check_tree_path(runner, layout.cache_dir, resolution.commit, valid.sub_path, request.submodules)
            reused = pins.read(layout.cache_dir, request.name) == resolution.commit
            if not reused:
                await pins.pin(runner, layout.cache_dir, request.name, resolution.commit)
            stamp(layout.root, layout.cache_dir, LAST_USED)
        return CheckoutResult(
            commit=resolution.commit,
            path=None,
            workdir=None,
            cache_hit=resolution.cache_hit,
            fetched=resolution.fetched,
            reused=reused,
            cache_repaired=resolution.repaired,
            fetch_seconds=resolution.fetch_seconds,
            checkout_seconds=time.monotonic() - pin_started,
            total_seconds=time.monotonic() - started,
            cache_path=_relative(self.root, layout.cache_dir),
        )

    async def _resolve(
        self,
        cache: Cache,
        valid: ValidRequest,
        env: dict[str, str],
        not_before: float | None,
        checked: frozenset[str] | None = None,
    ) -> Resolution:
        layout, request = valid.layout, valid.request
        resolution = await cache.open(
            request.repository,
            env,
            request.revision,
            verified=layout.relative_dir in self._verified,
            owner=request.namespace_uid,
            not_before=not_before,
            checked=checked,
        )
        self._verified.add(layout.relative_dir)
        if request.tags:
            # Every tag, so that `git describe` gives the same answer in every checkout.
            await cache.fetch_tags(env)
        return resolution

    async def maintain(self, namespace: str, project: str, *, budget_seconds: float) -> str | None:
        """One time-boxed upkeep step on a busy cache, if one is due; its name, or None.

        The caller holds the project lock. A step cut off by the time box is not
        retried for a while: it is too big for this cache and waits for gc.
        """
        layout = ProjectLayout(self.root, namespace, project)
        if safepath.kind(layout.cache_dir) != "dir":
            return None
        housekeeping = Housekeeping(self.runner_for(None, namespace=namespace), layout.root, layout.cache_dir)
        task = housekeeping.due()
        now = time.monotonic()
        if task is None or self._deferred.get((layout.relative_dir, task), 0.0) > now:
            return None
        if not await housekeeping.step(task, budget_seconds):
            self._deferred[(layout.relative_dir, task)] = now + DEFER_CUT_OFF_STEP_SECONDS
            return None
        return task

    async def remove(self, namespace: str, project: str, name: str) -> bool:
        """Remove a Workspace's worktree and pin; False if neither existed. The caller holds the project lock."""
        layout = ProjectLayout(self.root, namespace, project)
        runner = self.runner_for(None, namespace=namespace)
        # Inspected first, like before a checkout or GC: a tampered cache (a planted
        # commondir, say) is quarantined, and the removal below runs no git in it.
        cache = await self.checked_cache(layout)
        existed = await Worktrees(runner, layout).remove(name)  # refuses a project reached through a link
        unpinned = cache is not None and await pins.unpin(runner, layout.cache_dir, name)
        return existed or unpinned

    async def checked_cache(self, layout: ProjectLayout) -> Cache | None:
        """The project's cache if git may run in it: present, and passing the same
        inspection as before a checkout (else it is quarantined now)."""
        try:
            safepath.check_real_dirs(layout.root, layout.project_dir)  # UnsafeVolumePath through a link
        except FileNotFoundError:
            return None
        if safepath.kind(layout.cache_dir) is None:
            return None
        cache = Cache(self.runner_for(None, namespace=layout.namespace), layout)
        if await cache.check_for_maintenance():
            return cache
        self.forget(layout)
        return None


def _relative(root: Path, path: Path) -> PurePosixPath:
    return PurePosixPath(path.relative_to(root))


class Maintenance:
    """GC's git and filesystem steps; the caller holds the project lock for each."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _layout(self, namespace: str, project: str) -> ProjectLayout:
        return ProjectLayout(self.engine.root, namespace, project)

    async def _checked_cache(self, namespace: str, project: str) -> Cache | None:
        return await self.engine.checked_cache(self._layout(namespace, project))

    async def prune(self, namespace: str, project: str) -> None:
        if cache := await self._checked_cache(namespace, project):
            await Housekeeping(cache.runner, cache.layout.root, cache.path).prune_worktrees()

    async def unpin(self, namespace: str, project: str, name: str) -> None:
        if cache := await self._checked_cache(namespace, project):
            await pins.unpin(cache.runner, cache.path, name)

    async def gc_cache(self, namespace: str, project: str) -> None:
        if cache := await self._checked_cache(namespace, project):
            await Housekeeping(cache.runner, cache.layout.root, cache.path).gc()

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
