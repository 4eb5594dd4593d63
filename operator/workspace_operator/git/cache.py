"""The bare clone of one project: create crash-safely, trust only after checks, fetch little.

Callers hold the project's lock (the Lease) around every method here; that is
what makes "any *.lock file is stale" and "an operation marker means a crash"
true statements.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from workspace_operator.git.errors import GitError, Reason
from workspace_operator.git.layout import QUARANTINE_PREFIX, STAGING_PREFIX, ProjectLayout
from workspace_operator.git.runner import GitRunner
from workspace_operator.git.source import Revision, local_ref_for

log = logging.getLogger("workspace_operator.cache")

# Present while a fetch writes into the cache; found at the start of an
# operation it means the previous holder died mid-write.
OPERATION_MARKER = "workspace-operator.fetching"
# Every key the engine (or git itself, for a bare repo and sparse worktrees) writes.
_EXPECTED_CONFIG = frozenset({
    "core.repositoryformatversion", "core.filemode", "core.bare", "core.logallrefupdates",
    "core.ignorecase", "core.precomposeunicode", "core.symlinks",
    "remote.origin.url", "remote.origin.promisor", "remote.origin.partialclonefilter",
    "extensions.partialclone", "extensions.worktreeconfig", "extensions.objectformat",
})
# Timestamps (file mtimes) that garbage collection decides on.
LAST_USED = "workspace-operator.last-used"
LAST_FETCH = "workspace-operator.last-fetch"
LAST_GC = "workspace-operator.last-gc"


def stamp(repo: Path, name: str) -> None:
    (repo / name).touch()


def unlock_crashed_worktrees(repo: Path) -> None:
    """Drop the `locked` marks that killed `git worktree add` runs left behind.

    `worktree add` locks new metadata ("initializing") until it is done. Killed
    mid-add, the mark stays: prune then keeps the entry forever, and any later
    add at that path fails ("missing but locked worktree"). The engine never
    locks a worktree itself and callers hold the project lock, so no add is in
    progress and every mark is a crash's leftover.
    """
    for locked in repo.glob("worktrees/*/locked"):
        locked.unlink(missing_ok=True)


def stamp_time(repo: Path, name: str) -> float | None:
    try:
        return (repo / name).stat().st_mtime
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class Resolution:
    commit: str
    cache_hit: bool  # the commit was already in the cache
    fetched: bool  # a fetch transferred objects
    fetch_seconds: float
    created: bool  # the cache was (re)created by this call
    repaired: str | None  # why an existing cache was repaired or replaced


class Cache:
    def __init__(self, runner: GitRunner, layout: ProjectLayout) -> None:
        self.runner = runner
        self.layout = layout
        self.path = layout.cache_dir

    # -- opening -------------------------------------------------------------------

    async def open(self, url: str, env: dict[str, str], revision: Revision, *, verified: bool) -> Resolution:
        """Make sure a trustworthy cache exists and holds the revision; return its commit.

        `verified` says this process already ran the full check on this cache since
        it started; the cheap checks run every time regardless.
        """
        self.layout.project_dir.mkdir(parents=True, exist_ok=True)
        repaired: str | None = None
        if self.path.exists():
            problem = await self.inspect(url, deep=not verified)
            if problem is not None:
                repaired = problem
                self.quarantine(problem)
        if not self.path.exists():
            resolution = await self._create(url, env, revision)
            return Resolution(resolution.commit, False, True, resolution.fetch_seconds, True, repaired)
        resolution = await self.resolve(env, revision)
        return Resolution(resolution.commit, resolution.cache_hit, resolution.fetched,
                          resolution.fetch_seconds, False, repaired)

    async def inspect(self, url: str, *, deep: bool) -> str | None:
        """None if the cache can be trusted, else what is wrong with it.

        Raises RepositoryMismatch when the cache is healthy but tracks another URL:
        that is the user's mistake, never a reason to re-point or replace it.
        """
        if not (self.path / "HEAD").is_file() or not (self.path / "objects").is_dir():
            return "not a git repository"
        try:
            config = await self._read_config()
        except GitError as error:
            return f"unreadable config ({error.message})"
        if config.get("core.bare") != "true":
            return "not a bare repository"
        origin = config.get("remote.origin.url", "")
        if not origin:
            return "no origin configured"
        if origin != url:
            raise GitError(
                Reason.REPOSITORY_MISMATCH,
                f"project cache tracks {self.runner.redact(origin)}, not {self.runner.redact(url)}; "
                "use another project name for another repository",
                step="check-origin",
            )
        # Keys we never write: anyone who can write the volume could otherwise plant
        # url.*.insteadOf, filter drivers or remote.*.uploadpack and make our git run
        # commands or send credentials elsewhere. Such a cache is not trusted.
        tampered = [key for key in config if key not in _EXPECTED_CONFIG]
        if (self.path / "info" / "attributes").exists():
            tampered.append("info/attributes")
        if tampered:
            return f"unexpected settings in the cache's config ({', '.join(sorted(tampered)[:5])})"
        crashed = (self.path / OPERATION_MARKER).exists()
        removed = self.remove_stale_locks()
        if crashed or deep or removed:
            why = "interrupted fetch" if crashed else ("stale lock files" if removed else "first use")
            if not await self.runner.ok("fsck", ["fsck", "--connectivity-only", "--no-dangling", "--no-progress"],
                                        cwd=self.path):
                return f"fsck failed after {why}"
            log.info("cache %s verified (%s)", self.layout.relative_dir, why)
            self._drop_temporary_packs()
            (self.path / OPERATION_MARKER).unlink(missing_ok=True)
        return None

    async def _read_config(self) -> dict[str, str]:
        """The cache's own config (common and, once sparse worktrees enabled
        extensions.worktreeConfig, its config.worktree, where git then keeps
        core.bare) in one git call; keys lowercased, as git reports them."""
        result = await self.runner.run("read-config", ["config", "--list", "--null", "--show-scope"], cwd=self.path)
        tokens = result.stdout.split("\0")
        config: dict[str, str] = {}
        for scope, entry in zip(tokens[0::2], tokens[1::2]):
            if scope in ("local", "worktree"):
                key, _, value = entry.partition("\n")
                config[key.lower()] = value
        return config

    def remove_stale_locks(self) -> list[Path]:
        """Delete lock files a killed git left behind (no git runs here without our lock)."""
        candidates = [*self.path.glob("*.lock"), *self.path.glob("worktrees/*/*.lock")]
        refs = self.path / "refs"
        if refs.is_dir():
            candidates += refs.rglob("*.lock")
        for lock in candidates:
            log.warning("removing stale lock %s", lock.relative_to(self.layout.root))
            lock.unlink(missing_ok=True)
        return candidates

    def _drop_temporary_packs(self) -> None:
        for tmp in (self.path / "objects" / "pack").glob("tmp_*"):
            tmp.unlink(missing_ok=True)

    def quarantine(self, why: str) -> Path:
        """Move a broken cache aside (kept for inspection, collected by GC later)."""
        target = self.layout.project_dir / f"{QUARANTINE_PREFIX}{int(time.time())}-{uuid.uuid4().hex[:6]}"
        log.warning("quarantining cache %s: %s -> %s", self.layout.relative_dir, why, target.name)
        os.rename(self.path, target)
        return target

    async def _create(self, url: str, env: dict[str, str], revision: Revision) -> Resolution:
        """init + fetch into a staging directory, then rename: a cache exists whole or not at all."""
        staging = self.layout.project_dir / f"{STAGING_PREFIX}cache-{uuid.uuid4().hex[:8]}"
        try:
            await self.runner.run("init", ["init", "--bare", "--quiet", "--", str(staging)],
                                  cwd=self.layout.project_dir)
            settings = [("remote.origin.url", url), ("core.logAllRefUpdates", "false")]
            if self.runner.settings.partial_clone:
                settings += [
                    ("core.repositoryFormatVersion", "1"),
                    ("extensions.partialClone", "origin"),
                    ("remote.origin.promisor", "true"),
                    ("remote.origin.partialCloneFilter", "blob:none"),
                ]
            for key, value in settings:
                await self.runner.run("configure", ["config", key, value], cwd=staging)
            resolution = await self._resolve_in(staging, env, revision)
            os.rename(staging, self.path)
            log.info("cache %s created", self.layout.relative_dir)
            return resolution
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    # -- resolving -----------------------------------------------------------------

    async def resolve(self, env: dict[str, str], revision: Revision) -> Resolution:
        return await self._resolve_in(self.path, env, revision)

    async def _resolve_in(self, repo: Path, env: dict[str, str], revision: Revision) -> Resolution:
        if revision.commit:
            if await self._has_commit(repo, revision.commit):
                return Resolution(revision.commit, True, False, 0.0, False, None)
            seconds = 0.0
            if revision.remote_ref:
                seconds += await self._fetch(repo, env, revision.remote_ref, revision.local_ref)
            if not await self._has_commit(repo, revision.commit):
                seconds += await self._fetch(repo, env, revision.commit, f"refs/cache/commits/{revision.commit}",
                                             missing=Reason.COMMIT_NOT_FOUND)
            if not await self._has_commit(repo, revision.commit):
                raise GitError(Reason.COMMIT_NOT_FOUND, f"commit {revision.commit} not found upstream", step="fetch")
            return Resolution(revision.commit, False, True, seconds, False, None)

        remote_ref, tip = await self._remote_tip(repo, env, revision)
        local_ref = local_ref_for(remote_ref)
        if await self._has_commit(repo, tip):
            return Resolution(tip, True, False, 0.0, False, None)
        seconds = await self._fetch(repo, env, remote_ref, local_ref)
        commit = await self._peel(repo, local_ref)
        return Resolution(commit, False, True, seconds, False, None)

    async def _has_commit(self, repo: Path, sha: str) -> bool:
        return await self.runner.ok("has-commit", ["cat-file", "-e", f"{sha}^{{commit}}"], cwd=repo)

    async def _peel(self, repo: Path, ref: str) -> str:
        result = await self.runner.run("resolve", ["rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}"],
                                       cwd=repo)
        return result.stdout.strip()

    async def _remote_tip(self, repo: Path, env: dict[str, str], revision: Revision) -> tuple[str, str]:
        """(full remote ref, commit it points at) via one ls-remote round trip."""
        wanted = revision.remote_ref
        if wanted is None:
            result = await self.runner.run("ls-remote", ["ls-remote", "--symref", "--", "origin", "HEAD"],
                                           cwd=repo, env=env)
            for line in result.stdout.splitlines():
                if line.startswith("ref: ") and line.endswith("\tHEAD"):
                    wanted = line.removeprefix("ref: ").split("\t")[0]
            if wanted is None:
                raise GitError(Reason.REF_NOT_FOUND, "upstream has no default branch (HEAD)", step="ls-remote")
        result = await self.runner.run("ls-remote", ["ls-remote", "--", "origin", wanted, f"{wanted}^{{}}"],
                                       cwd=repo, env=env)
        found: dict[str, str] = {}
        for line in result.stdout.splitlines():
            sha, _, ref = line.partition("\t")
            found[ref] = sha
        tip = found.get(f"{wanted}^{{}}") or found.get(wanted)
        if tip is None:
            raise GitError(Reason.REF_NOT_FOUND, f"{wanted} not found upstream", step="ls-remote")
        return wanted, tip

    async def _fetch(self, repo: Path, env: dict[str, str], source: str, destination: str | None,
                     missing: Reason = Reason.REF_NOT_FOUND) -> float:
        """Fetch exactly one ref or commit; auto-gc off; marked so a crash is detected."""
        refspec = f"+{source}:{destination}" if destination else source
        marker = repo / OPERATION_MARKER
        marker.touch()
        try:
            result = await self.runner.run(
                "fetch",
                ["fetch", "--no-tags", "--no-auto-gc", "--no-recurse-submodules", "--no-write-fetch-head",
                 "--quiet", "--", "origin", refspec],
                cwd=repo,
                env=env,
                # Every received object is checked (malformed trees, paths like .git or ../).
                config=["transfer.fsckObjects=true"] if self.runner.settings.fsck_objects else [],
            )
        except GitError as error:
            if error.reason is Reason.REF_NOT_FOUND and missing is not Reason.REF_NOT_FOUND:
                raise GitError(missing, error.message, step=error.step) from None
            raise
        marker.unlink(missing_ok=True)
        stamp(repo, LAST_FETCH)
        return result.seconds

    # -- maintenance ---------------------------------------------------------------

    async def prune_worktrees(self) -> None:
        unlock_crashed_worktrees(self.path)
        await self.runner.run("worktree-prune", ["worktree", "prune"], cwd=self.path)

    async def gc(self) -> None:
        # Default prune grace (2 weeks) keeps objects a concurrent reader might still need.
        await self.runner.run("gc", ["gc", "--quiet"], cwd=self.path)
        stamp(self.path, LAST_GC)
