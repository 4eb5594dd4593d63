"""Opening the bare clone of one project: create crash-safely, trust only after checks.

Resolving revisions (fetching) lives in `resolve.py`, upkeep in `housekeeping.py`.

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
from pathlib import Path

from workspace_operator.git.errors import GitError, Reason
from workspace_operator.git.layout import QUARANTINE_PREFIX, STAGING_PREFIX, ProjectLayout
from workspace_operator.git.markers import HOLD_MARKER, LAST_FETCH, OPERATION_MARKER, stamp
from workspace_operator.git.resolve import Answer, Answers, Resolution, Resolver
from workspace_operator.git.runner import GitRunner
from workspace_operator.git.source import Revision, local_ref_for

log = logging.getLogger("workspace_operator.cache")

# Every key the engine (or git itself, for a bare repo and sparse worktrees) writes.
_EXPECTED_CONFIG = frozenset({
    "core.repositoryformatversion", "core.filemode", "core.bare", "core.logallrefupdates",
    "core.ignorecase", "core.precomposeunicode", "core.symlinks",
    "remote.origin.url", "remote.origin.promisor", "remote.origin.partialclonefilter",
    "extensions.partialclone", "extensions.worktreeconfig", "extensions.objectformat",
})


class Cache:
    def __init__(self, runner: GitRunner, layout: ProjectLayout, answers: Answers | None = None) -> None:
        self.runner = runner
        self.layout = layout
        self.path = layout.cache_dir
        self.answers = answers or Answers()

    async def open(self, url: str, env: dict[str, str], revision: Revision, *, verified: bool,
                   not_before: float | None = None) -> Resolution:
        """Make sure a trustworthy cache exists and holds the revision; return its commit.

        `verified` says this process already opened this cache since it started;
        the cheap checks run every time regardless. Upstream answers asked at or
        after `not_before` may stand in for asking again (see `Answers`).
        """
        self.layout.project_dir.mkdir(parents=True, exist_ok=True)
        repaired: str | None = None
        if self.path.exists():
            problem = await self.inspect(url, first_use=not verified)
            if problem is not None:
                repaired = problem
                self.quarantine(problem)
                self.answers.forget(self.path)
        if not self.path.exists():
            resolution = await self._create(url, env, revision)
            return Resolution(resolution.commit, False, True, resolution.fetch_seconds, True, repaired)
        resolution = await Resolver(self.runner, self.path, self.answers).resolve(env, revision,
                                                                                 not_before=not_before)
        return Resolution(resolution.commit, resolution.cache_hit, resolution.fetched,
                          resolution.fetch_seconds, False, repaired)

    async def inspect(self, url: str, *, first_use: bool) -> str | None:
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
        why = await self._reason_for_fsck(first_use)
        if why is not None:
            if not await self.runner.ok("fsck", ["fsck", "--connectivity-only", "--no-dangling", "--no-progress"],
                                        cwd=self.path):
                return f"fsck failed after {why}"
            log.info("cache %s verified (%s)", self.layout.relative_dir, why)
            self._drop_temporary_packs()
            (self.path / OPERATION_MARKER).unlink(missing_ok=True)
            (self.path / HOLD_MARKER).unlink(missing_ok=True)
        return None

    async def _reason_for_fsck(self, first_use: bool) -> str | None:
        """Why the cache needs the full connectivity check, or None.

        The check costs seconds on a large cache, so it runs only on evidence:
        a marker of an interrupted fetch or of a holder that never finished,
        lock files a killed git left, or — once per process — tips that do not
        even parse. A clean stop leaves none of these.
        """
        removed = self.remove_stale_locks()
        if (self.path / OPERATION_MARKER).exists():
            return "interrupted fetch"
        if (self.path / HOLD_MARKER).exists():
            return "unclean stop of the previous holder"
        if removed:
            return "stale lock files"
        if first_use and not await self.runner.ok("check-tips", ["rev-list", "--no-walk", "--all", "--quiet"],
                                                  cwd=self.path):
            return "unreadable ref tips"
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
        """Delete lock files a killed git left behind (no git writes the shared store
        without our lock). A worktree without a completion record may be being
        populated right now, outside the lock: its locks are left alone (if it
        crashed instead, it is rebuilt whole anyway)."""
        candidates = list(self.path.glob("*.lock"))
        for lock in self.path.glob("worktrees/*/*.lock"):
            if self.layout.ready_record(lock.parent.name).exists():
                candidates.append(lock)
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
        """Build the cache in a staging directory, then rename: it exists whole or not at all."""
        staging = self.layout.project_dir / f"{STAGING_PREFIX}cache-{uuid.uuid4().hex[:8]}"
        try:
            if revision.branch or revision.tag or not (revision.name or revision.commit):
                resolution = await self._clone(url, env, revision, staging)
            else:
                resolution = await self._init_and_fetch(url, env, revision, staging)
            os.rename(staging, self.path)
            log.info("cache %s created", self.layout.relative_dir)
            return resolution
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    async def _clone(self, url: str, env: dict[str, str], revision: Revision, staging: Path) -> Resolution:
        """One branch or tag (or the default branch) by `git clone`.

        Faster than init + fetch for the same objects: clone trusts a pack that
        is self-contained and skips fetch's connectivity walk over every object.
        """
        options = ["--bare", "--quiet", "--single-branch", "--no-tags", "--config", "core.logAllRefUpdates=false"]
        if self.runner.settings.partial_clone:
            options.append("--filter=blob:none")
        named = revision.branch or revision.tag
        if named:
            options += ["--branch", named]
        asked = self.answers.clock()
        # Every received object is checked (malformed trees, paths like .git or ../), as in fetch.
        fsck = ["transfer.fsckObjects=true"] if self.runner.settings.fsck_objects else []
        await self.runner.run("clone", ["clone", *options, "--", url, str(staging)], cwd=self.layout.project_dir,
                              env=env, config=fsck)
        # Leave the config as init + fetch would (inspect trusts no other key).
        await self.runner.run("configure", ["config", "--unset-all", "remote.origin.tagOpt"], cwd=staging)
        resolver = Resolver(self.runner, staging, self.answers, key=self.path)
        if revision.remote_ref:
            remote_ref = revision.remote_ref
        else:
            head = await self.runner.run("default-branch", ["symbolic-ref", "--quiet", "HEAD"], cwd=staging)
            remote_ref = head.stdout.strip()
        try:
            tip = await resolver.peel(remote_ref)
        except GitError:
            raise GitError(Reason.REF_NOT_FOUND, f"{remote_ref} not found upstream (empty repository?)",
                           step="clone") from None
        local_ref = local_ref_for(remote_ref)
        if local_ref != remote_ref:  # a branch: kept where a worktree can never check it out
            await self.runner.run("move-ref", ["update-ref", "--no-deref", local_ref, tip], cwd=staging)
            await self.runner.run("move-ref", ["update-ref", "-d", remote_ref], cwd=staging)
        stamp(staging, LAST_FETCH)
        self.answers.put(self.path, revision.remote_ref or "HEAD", Answer(remote_ref, tip, asked))
        if revision.commit and revision.commit != tip:
            pinned = await resolver.resolve(env, revision)  # fetches the pinned commit if the clone lacks it
            return Resolution(pinned.commit, False, True, pinned.fetch_seconds, True, None)
        seconds = self.answers.clock() - asked
        return Resolution(revision.commit or tip, False, True, seconds, True, None)

    async def fetch_tags(self, env: dict[str, str]) -> float:
        """Every upstream tag (and the commits they need), under the project lock."""
        return await Resolver(self.runner, self.path, self.answers).fetch(env, "refs/tags/*", "refs/tags/*")

    async def _init_and_fetch(self, url: str, env: dict[str, str], revision: Revision, staging: Path
                              ) -> Resolution:
        """A bare commit or another ref (refs/pull/...): fetch exactly that."""
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
        return await Resolver(self.runner, staging, self.answers, key=self.path).resolve(env, revision)
