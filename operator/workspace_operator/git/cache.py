"""Opening the bare clone of one project: create crash-safely, trust only after checks.

Resolving revisions (fetching) lives in `resolve.py`, upkeep in `housekeeping.py`,
the marker and stamp files in `markers.py`.

Callers hold the project's lock (the Lease) around every method here; that is
what makes "any *.lock file in the shared store is stale" and "an operation
marker means a crash" true statements.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from pathlib import Path

from workspace_operator.git import safepath
from workspace_operator.git.errors import GitError, Reason
from workspace_operator.git.layout import QUARANTINE_PREFIX, READY_DIR, STAGING_PREFIX, ProjectLayout, is_worktree_name
from workspace_operator.git.markers import HOLD_MARKER, LAST_FETCH, OPERATION_MARKER, entries, stamp
from workspace_operator.git.resolve import Answer, Answers, Resolution, Resolver
from workspace_operator.git.runner import GitRunner
from workspace_operator.git.source import Revision, local_ref_for

log = logging.getLogger("workspace_operator.cache")

# Every key the engine (or git itself, for a bare repo and sparse worktrees) writes.
_EXPECTED_CONFIG = frozenset(
    {
        "core.repositoryformatversion",
        "core.filemode",
        "core.bare",
        "core.logallrefupdates",
        "core.ignorecase",
        "core.precomposeunicode",
        "core.symlinks",
        "remote.origin.url",
        "remote.origin.promisor",
        "remote.origin.partialclonefilter",
        "extensions.partialclone",
        "extensions.worktreeconfig",
        "extensions.objectformat",
    }
)
# Output cap of the config listing (a few lines): anything more is an attack.
CONFIG_LIMIT = 64 * 1024


# The namespace UID the cache was created for: a namespace deleted and created
# again under the same name is another tenant and must not inherit the cache.
OWNER = "workspace-operator.owner"
# Keys git writes to a worktree's own config.worktree (sparse-checkout); any other is planted.
_WORKTREE_CONFIG = frozenset({"core.sparsecheckout", "core.sparsecheckoutcone", "index.sparse"})
# Files that would make git read objects or history from elsewhere, or redirect the repository:
# git run in the cache looks for `.git` there first and, found, uses it as the repository instead.
_REDIRECTS = ("objects/info/alternates", "objects/info/http-alternates", "info/grafts", "commondir", ".git")
_GIT_ENTRIES = ("HEAD", "config", "objects", "refs", "packed-refs", "info", "worktrees", "shallow", "index")


def worktree_config_keys(text: str) -> list[str] | None:
    """Keys of a config.worktree in the plain form git writes; None if it uses anything else
    (includes, subsections, continuation lines), which git never writes there."""
    section: str | None = None
    keys: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        header = re.fullmatch(r"\[([A-Za-z0-9-]+)\]", line)
        if header:
            section = header[1].lower()
            continue
        entry = re.fullmatch(r"([A-Za-z][A-Za-z0-9-]*)\s*(=[^\\]*)?", line)
        if entry is None or section is None:
            return None
        keys.append(f"{section}.{entry[1].lower()}")
    return keys


class Cache:
    def __init__(self, runner: GitRunner, layout: ProjectLayout, answers: Answers | None = None) -> None:
        self.runner = runner
        self.layout = layout
        self.path = layout.cache_dir
        self.answers = answers or Answers()

    async def open(
        self,
        url: str,
        env: dict[str, str],
        revision: Revision,
        *,
        verified: bool,
        owner: str | None = None,
        not_before: float | None = None,
        checked: frozenset[str] | None = None,
    ) -> Resolution:
        """Make sure a trustworthy cache exists and holds the revision; return its commit.

        `verified` says this process already opened this cache since it started;
        the cheap checks run every time regardless — except when `checked` is given:
        this very hold of the lock already inspected the cache (nothing else wrote
        it since), and these commits were found in it. Upstream answers asked at or
        after `not_before` may stand in for asking again (see `Answers`). `owner` (the
        namespace UID) is recorded with a new cache; an existing cache recorded for
        another owner is quarantined and the old owner's worktrees removed.
        """
        root = self.layout.root
        safepath.make_dirs(root, self.layout.project_dir)
        repaired: str | None = None
        if checked is not None and safepath.kind(self.path) == "dir":
            return await self._resolver(self.path).resolve(env, revision, not_before=not_before, present=checked)
        if safepath.kind(self.path) is not None:
            problem = await self.inspect(url, first_use=not verified, owner=owner)
            if problem is not None:
                repaired = problem
                self.quarantine(problem)
                self.answers.forget(self.path)
                if problem.startswith(_FOREIGN):
                    self._drop_worktrees()
            elif owner and safepath.mtime(root, self.path / OWNER) is None:
                safepath.write_atomic(root, self.path / OWNER, owner)  # a cache from before owners were kept
        if safepath.kind(self.path) is None:
            resolution = await self._create(url, env, revision, owner)
            return Resolution(resolution.commit, False, True, resolution.fetch_seconds, True, repaired)
        resolution = await self._resolver(self.path).resolve(env, revision, not_before=not_before)
        return Resolution(
            resolution.commit, resolution.cache_hit, resolution.fetched, resolution.fetch_seconds, False, repaired
        )

    def _resolver(self, repo: Path) -> Resolver:
        return Resolver(self.runner, self.layout.root, repo, self.answers, key=self.path)

    async def inspect(self, url: str | None, *, first_use: bool, owner: str | None = None) -> str | None:
        """None if the cache can be trusted, else what is wrong with it.

        Raises RepositoryMismatch when the cache is healthy but tracks another URL:
        that is the user's mistake, never a reason to re-point or replace it.
        `url=None` (garbage collection) skips that comparison only. `first_use`: the
        first opening by this process, which also looks deeper (links in objects/,
        ref tips that parse).
        """
        problem = self._inspect_files(owner, deep=first_use) or await self._inspect_config(url)
        if problem is not None:
            return problem
        why = await self._reason_for_fsck(first_use)
        if why is not None:
            if not await self.runner.ok(
                "fsck", ["fsck", "--connectivity-only", "--no-dangling", "--no-progress"], cwd=self.path
            ):
                return f"fsck failed after {why}"
            log.info("cache %s verified (%s)", self.layout.relative_dir, why)
            self._drop_temporary_packs()
            safepath.remove(self.layout.root, self.path / OPERATION_MARKER)
            safepath.remove(self.layout.root, self.path / HOLD_MARKER)
        return None

    async def inspect_mounted(self) -> str | None:
        """The same inspection for a reader that may not write the cache: a job's checkout
        from a read-only mount, perhaps at another path than the operator's, as another uid.

        Every check that only reads, in depth (links below objects/ too); nothing is
        repaired, removed or quarantined, and no origin is compared. Worktree metadata names
        the operator's paths, so there only its place relative to the project is compared.
        None if git may read the cache, else what is wrong with it.
        """
        return self._inspect_files(None, deep=True, anchored=False) or await self._inspect_config(None)

    async def _inspect_config(self, url: str | None) -> str | None:
        try:
            config = await self._read_config()
        except GitError as error:
            return f"unreadable config ({error.message})"
        if config.get("core.bare") != "true":
            return "not a bare repository"
        origin = config.get("remote.origin.url", "")
        if not origin:
            return "no origin configured"
        if url is not None and origin != url:
            # An earlier Workspace's own words: shown as a label, never searched for secrets.
            self.runner.redact.quote(origin, "another repository")
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
        if tampered:
            return f"unexpected settings in the cache's config ({', '.join(sorted(tampered)[:5])})"
        return None

    async def _reason_for_fsck(self, first_use: bool) -> str | None:
        """Why the cache needs the full connectivity check, or None.

        The check costs seconds on a large cache, so it runs only on evidence:
        a marker of an interrupted fetch or of a holder that never finished,
        lock files a killed git left, or — once per process — tips that do not
        even parse. A clean stop leaves none of these.
        """
        removed = self.remove_stale_locks()
        if safepath.kind(self.path / OPERATION_MARKER) is not None:
            return "interrupted fetch"
        if safepath.kind(self.path / HOLD_MARKER) is not None:
            return "unclean stop of the previous holder"
        if removed:
            return "stale lock files"
        if first_use and not await self.runner.ok(
            "check-tips", ["rev-list", "--no-walk", "--all", "--quiet"], cwd=self.path
        ):
            return "unreadable ref tips"
        return None

    def _inspect_files(self, owner: str | None, *, deep: bool, anchored: bool = True) -> str | None:
        """Checks by looking at files only (no git): links, redirections, replace refs, owner.

        `anchored`: the volume is mounted where the operator's git wrote its paths."""
        root, path = self.layout.root, self.path
        found = safepath.kind(path)
        if found != "dir":
            return "the cache is a symlink" if found == "link" else "the cache is not a directory"
        safepath.check_real_dirs(root, path)
        links = [name for name in _GIT_ENTRIES if safepath.kind(path / name) == "link"]
        if links:
            return f"symlinks in the cache ({', '.join(links)})"
        # Without refs/ git would not take it for a repository and look above it instead.
        if any(
            safepath.kind(path / name) != kind for name, kind in (("HEAD", "file"), ("objects", "dir"), ("refs", "dir"))
        ):
            return "not a git repository"
        recorded = safepath.read_text(root, path / OWNER).strip() if safepath.mtime(root, path / OWNER) else None
        if owner and recorded and recorded != owner:
            return f"{_FOREIGN} (namespace uid {recorded}, now {owner})"
        planted = [name for name in (*_REDIRECTS, "info/attributes") if safepath.kind(path / name) is not None]
        if planted:
            return f"unexpected files in the cache ({', '.join(planted)})"
        if entries(path / "refs" / "replace") or _packed_replace_refs(path / "packed-refs"):
            return "replace refs in the cache (refs/replace/)"
        # worktrees/ is checked entry by entry below (its modules/ may be large).
        for tree in ("refs", *(("objects",) if deep else ())):
            if safepath.is_real_dir(path / tree) and (links := safepath.find_links(root, path / tree)):
                return f"symlinks in the cache ({tree}/{links[0]})"
        return self._inspect_worktree_metadata(anchored)

    def _inspect_worktree_metadata(self, anchored: bool = True) -> str | None:
        """Each worktrees/<id>: points back into this project, shares this cache, plain config.

        Read through one directory descriptor: a few system calls per worktree. Not
        `anchored` (mounted elsewhere), a worktree's path is compared from the namespace on.
        """
        metadata = self.path / "worktrees"
        if not safepath.is_real_dir(metadata):
            return None
        with safepath.open_dir(self.layout.root, metadata) as worktrees:
            for name in sorted(os.listdir(worktrees)):
                try:
                    files = safepath.read_files_at(worktrees, name, ("commondir", "gitdir", "config.worktree"))
                except OSError:
                    return f"unreadable worktree metadata ({name})"
                if files is None:
                    return f"worktree metadata {name} is a symlink or not a directory"
                if "commondir" not in files or "gitdir" not in files:
                    continue  # a crash's leftover: prune drops it
                gitdir = Path(files["gitdir"].strip())
                project = gitdir.parent.parent
                if (
                    files["commondir"].strip() != "../.."
                    or (
                        project != self.layout.project_dir
                        if anchored
                        else project.parts[-2:] != self.layout.relative_dir.parts
                    )
                    or gitdir.name != ".git"
                    or not is_worktree_name(gitdir.parent.name)
                ):
                    return f"worktree metadata {name} points elsewhere"
                if "config.worktree" in files:
                    keys = worktree_config_keys(files["config.worktree"])
                    unexpected = sorted(set(keys) - _WORKTREE_CONFIG) if keys is not None else ["(unparseable)"]
                    if unexpected:
                        return f"unexpected settings in worktree {name}'s config.worktree ({', '.join(unexpected[:5])})"
        return None

    async def _read_config(self) -> dict[str, str]:
        """The cache's own config (common and, once sparse worktrees enabled
        extensions.worktreeConfig, its config.worktree, where git then keeps
        core.bare) in one git call; keys lowercased, as git reports them."""
        result = await self.runner.run(
            "read-config", ["config", "--list", "--null", "--show-scope"], cwd=self.path, max_stdout=CONFIG_LIMIT
        )
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
        crashed instead, it is rebuilt whole anyway).

        Directories are walked without following links (the inspection refused
        caches with links in refs/ and worktrees/ before this runs).
        """
        candidates = [Path(e.path) for e in entries(self.path) if e.name.endswith(".lock")]
        for meta in entries(self.path / "worktrees"):
            completed = safepath.kind(self.layout.ready_dir / meta.name) is not None
            if completed and meta.is_dir(follow_symlinks=False):
                candidates += [Path(e.path) for e in entries(Path(meta.path)) if e.name.endswith(".lock")]
        if safepath.is_real_dir(self.path / "refs"):
            for dirpath, _dirs, files in os.walk(self.path / "refs"):  # os.walk never follows links
                candidates += [Path(dirpath) / name for name in files if name.endswith(".lock")]
        for lock in candidates:
            log.warning("removing stale lock %s", lock.relative_to(self.layout.root))
            safepath.remove(self.layout.root, lock)
        return candidates

    def _drop_temporary_packs(self) -> None:
        for tmp in entries(self.path / "objects" / "pack"):
            if tmp.name.startswith("tmp_"):
                safepath.remove(self.layout.root, Path(tmp.path))

    def quarantine(self, why: str) -> Path:
        """Move a broken cache aside (kept for inspection, collected by GC later).

        A link planted at the cache's place is moved aside as a link: never followed.
        """
        target = self.layout.project_dir / f"{QUARANTINE_PREFIX}{int(time.time())}-{uuid.uuid4().hex[:6]}"
        log.warning("quarantining cache %s: %s -> %s", self.layout.relative_dir, why, target.name)
        safepath.rename(self.layout.root, self.path, target.name)
        return target

    def _drop_worktrees(self) -> None:
        """Remove every worktree and completion record of the project (another tenant's)."""
        for entry in entries(self.layout.project_dir):
            if is_worktree_name(entry.name) or entry.name == READY_DIR:
                log.warning(
                    "removing %s/%s: made for a deleted namespace of the same name",
                    self.layout.relative_dir,
                    entry.name,
                )
                safepath.remove(self.layout.root, Path(entry.path))

    async def _create(self, url: str, env: dict[str, str], revision: Revision, owner: str | None = None) -> Resolution:
        """Build the cache in a staging directory, then rename: it exists whole or not at all."""
        staging = self.layout.project_dir / f"{STAGING_PREFIX}cache-{uuid.uuid4().hex[:8]}"
        try:
            if revision.branch or revision.tag or not (revision.name or revision.commit):
                resolution = await self._clone(url, env, revision, staging, owner)
            else:
                resolution = await self._init_and_fetch(url, env, revision, staging, owner)
            safepath.rename(self.layout.root, staging, self.path.name)
            log.info("cache %s created", self.layout.relative_dir)
            return resolution
        finally:
            safepath.remove(self.layout.root, staging)

    async def _clone(
        self, url: str, env: dict[str, str], revision: Revision, staging: Path, owner: str | None
    ) -> Resolution:
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
        try:
            await self.runner.run(
                "clone", ["clone", *options, "--", url, str(staging)], cwd=self.layout.project_dir, env=env, config=fsck
            )
        except GitError as error:
            if error.reason is Reason.REF_NOT_FOUND and revision.remote_ref:  # say it as ls-remote would
                raise GitError(
                    Reason.REF_NOT_FOUND, f"{revision.remote_ref} not found upstream", step="clone"
                ) from None
            raise
        # Leave the config as init + fetch would (inspect trusts no other key).
        await self.runner.run("configure", ["config", "--unset-all", "remote.origin.tagOpt"], cwd=staging)
        if owner:
            safepath.write_atomic(self.layout.root, staging / OWNER, owner)
        resolver = self._resolver(staging)
        if revision.remote_ref:
            remote_ref = revision.remote_ref
        else:
            head = await self.runner.run(
                "default-branch", ["symbolic-ref", "--quiet", "HEAD"], cwd=staging, max_stdout=1024
            )
            remote_ref = head.stdout.strip()
        try:
            tip = await resolver.peel(remote_ref)
        except GitError:
            raise GitError(
                Reason.REF_NOT_FOUND, f"{remote_ref} not found upstream (empty repository?)", step="clone"
            ) from None
        local_ref = local_ref_for(remote_ref)
        if local_ref != remote_ref:  # a branch: kept where a worktree can never check it out
            await self.runner.run("move-ref", ["update-ref", "--no-deref", local_ref, tip], cwd=staging)
            await self.runner.run("move-ref", ["update-ref", "-d", remote_ref], cwd=staging)
        stamp(self.layout.root, staging, LAST_FETCH)
        self.answers.put(self.path, revision.remote_ref or "HEAD", Answer(remote_ref, tip, asked))
        if revision.commit and revision.commit != tip:
            pinned = await resolver.resolve(env, revision)  # fetches the pinned commit if the clone lacks it
            return Resolution(pinned.commit, False, True, pinned.fetch_seconds, True, None)
        seconds = self.answers.clock() - asked
        return Resolution(revision.commit or tip, False, True, seconds, True, None)

    async def _init_and_fetch(
        self, url: str, env: dict[str, str], revision: Revision, staging: Path, owner: str | None
    ) -> Resolution:
        """A bare commit or another ref (refs/pull/...): fetch exactly that."""
        await self.runner.run("init", ["init", "--bare", "--quiet", "--", str(staging)], cwd=self.layout.project_dir)
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
        if owner:
            safepath.write_atomic(self.layout.root, staging / OWNER, owner)
        return await self._resolver(staging).resolve(env, revision)

    async def fetch_tags(self, env: dict[str, str]) -> float:
        """Every upstream tag (and the commits they need), under the project lock."""
        return await self._resolver(self.path).fetch(env, "refs/tags/*", "refs/tags/*")

    async def check_for_maintenance(self) -> bool:
        """The same inspection as before a checkout (origin aside): False if the cache was
        untrustworthy and has been quarantined, so no git runs in it."""
        problem = await self.inspect(None, first_use=False)
        if problem is None:
            return True
        self.quarantine(problem)
        return False


_FOREIGN = "made for another namespace of this name"


def _packed_replace_refs(packed: Path) -> bool:
    """Does packed-refs list a refs/replace/ entry? Read in chunks: the file may be large."""
    if safepath.kind(packed) != "file":
        return False
    needle = b" refs/replace/"
    tail = b""
    with open(packed, "rb") as handle:
        while chunk := handle.read(1 << 16):
            if needle in tail + chunk:
                return True
            tail = chunk[-len(needle) :]
    return False
