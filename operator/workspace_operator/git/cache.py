"""The bare clone of one project: create crash-safely, trust only after checks, fetch little.

Callers hold the project's lock (the Lease) around every method here; that is
what makes "any *.lock file is stale" and "an operation marker means a crash"
true statements.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from workspace_operator.git import safepath
from workspace_operator.git.errors import GitError, Reason
from workspace_operator.git.layout import QUARANTINE_PREFIX, READY_DIR, STAGING_PREFIX, ProjectLayout, is_worktree_name
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
# Output caps of the calls whose answer is a few lines: anything more is an attack.
LS_REMOTE_LIMIT = 64 * 1024
CONFIG_LIMIT = 64 * 1024
REV_PARSE_LIMIT = 4 * 1024
# Timestamps (file mtimes) that garbage collection decides on.
LAST_USED = "workspace-operator.last-used"
LAST_FETCH = "workspace-operator.last-fetch"
LAST_GC = "workspace-operator.last-gc"


# The namespace UID the cache was created for: a namespace deleted and created
# again under the same name is another tenant and must not inherit the cache.
OWNER = "workspace-operator.owner"
# Keys git writes to a worktree's own config.worktree (sparse-checkout); any other is planted.
_WORKTREE_CONFIG = frozenset({"core.sparsecheckout", "core.sparsecheckoutcone", "index.sparse"})
# Files that would make git read objects or history from elsewhere, or redirect the repository.
_REDIRECTS = ("objects/info/alternates", "objects/info/http-alternates", "info/grafts", "commondir")
_GIT_ENTRIES = ("HEAD", "config", "objects", "refs", "packed-refs", "info", "worktrees", "shallow", "index")


def stamp(root: Path, repo: Path, name: str) -> None:
    safepath.touch(root, repo / name)


def unlock_crashed_worktrees(root: Path, repo: Path) -> None:
    """Drop the `locked` marks that killed `git worktree add` runs left behind.

    `worktree add` locks new metadata ("initializing") until it is done. Killed
    mid-add, the mark stays: prune then keeps the entry forever, and any later
    add at that path fails ("missing but locked worktree"). The engine never
    locks a worktree itself and callers hold the project lock, so no add is in
    progress and every mark is a crash's leftover.
    """
    for entry in _entries(repo / "worktrees"):
        if entry.is_dir(follow_symlinks=False):
            safepath.remove(root, Path(entry.path) / "locked")


def _entries(path: Path) -> list[os.DirEntry[str]]:
    """Entries of a directory that is not itself a link (callers check the parents)."""
    if not safepath.is_real_dir(path):
        return []
    try:
        with os.scandir(path) as listing:
            return list(listing)
    except (FileNotFoundError, NotADirectoryError):
        return []


def stamp_time(root: Path, repo: Path, name: str) -> float | None:
    return safepath.mtime(root, repo / name)


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

    async def open(self, url: str, env: dict[str, str], revision: Revision, *, verified: bool,
                   owner: str | None = None) -> Resolution:
        """Make sure a trustworthy cache exists and holds the revision; return its commit.

        `verified` says this process already ran the full check on this cache since
        it started; the cheap checks run every time regardless. `owner` (the
        namespace UID) is recorded with a new cache; an existing cache recorded for
        another owner is quarantined and the old owner's worktrees removed.
        """
        root = self.layout.root
        safepath.make_dirs(root, self.layout.project_dir)
        repaired: str | None = None
        if safepath.kind(self.path) is not None:
            problem = await self.inspect(url, deep=not verified, owner=owner)
            if problem is not None:
                repaired = problem
                self.quarantine(problem)
                if problem.startswith(_FOREIGN):
                    self._drop_worktrees()
            elif owner and safepath.mtime(root, self.path / OWNER) is None:
                safepath.write_atomic(root, self.path / OWNER, owner)  # a cache from before owners were kept
        if safepath.kind(self.path) is None:
            resolution = await self._create(url, env, revision, owner)
            return Resolution(resolution.commit, False, True, resolution.fetch_seconds, True, repaired)
        resolution = await self.resolve(env, revision)
        return Resolution(resolution.commit, resolution.cache_hit, resolution.fetched,
                          resolution.fetch_seconds, False, repaired)

    async def inspect(self, url: str | None, *, deep: bool, owner: str | None = None) -> str | None:
        """None if the cache can be trusted, else what is wrong with it.

        Raises RepositoryMismatch when the cache is healthy but tracks another URL:
        that is the user's mistake, never a reason to re-point or replace it.
        `url=None` (garbage collection) skips that comparison only.
        """
        problem = self._inspect_files(owner, deep=deep)
        if problem is not None:
            return problem
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
        crashed = safepath.kind(self.path / OPERATION_MARKER) is not None
        removed = self.remove_stale_locks()
        if crashed or deep or removed:
            why = "interrupted fetch" if crashed else ("stale lock files" if removed else "first use")
            if not await self.runner.ok("fsck", ["fsck", "--connectivity-only", "--no-dangling", "--no-progress"],
                                        cwd=self.path):
                return f"fsck failed after {why}"
            log.info("cache %s verified (%s)", self.layout.relative_dir, why)
            self._drop_temporary_packs()
            safepath.remove(self.layout.root, self.path / OPERATION_MARKER)
        return None

    def _inspect_files(self, owner: str | None, *, deep: bool) -> str | None:
        """Checks by looking at files only (no git): links, redirections, replace refs, owner."""
        root, path = self.layout.root, self.path
        found = safepath.kind(path)
        if found != "dir":
            return "the cache is a symlink" if found == "link" else "the cache is not a directory"
        safepath.check_real_dirs(root, path)
        links = [name for name in _GIT_ENTRIES if safepath.kind(path / name) == "link"]
        if links:
            return f"symlinks in the cache ({', '.join(links)})"
        if safepath.kind(path / "HEAD") != "file" or safepath.kind(path / "objects") != "dir":
            return "not a git repository"
        recorded = safepath.read_text(root, path / OWNER).strip() if safepath.mtime(root, path / OWNER) else None
        if owner and recorded and recorded != owner:
            return f"{_FOREIGN} (namespace uid {recorded}, now {owner})"
        planted = [name for name in (*_REDIRECTS, "info/attributes") if safepath.kind(path / name) is not None]
        if planted:
            return f"unexpected files in the cache ({', '.join(planted)})"
        if _entries(path / "refs" / "replace") or _packed_replace_refs(path / "packed-refs"):
            return "replace refs in the cache (refs/replace/)"
        # worktrees/ is checked entry by entry below (its modules/ may be large).
        for tree in ("refs", *(("objects",) if deep else ())):
            if safepath.is_real_dir(path / tree) and (links := safepath.find_links(root, path / tree)):
                return f"symlinks in the cache ({tree}/{links[0]})"
        return self._inspect_worktree_metadata()

    def _inspect_worktree_metadata(self) -> str | None:
        """Each worktrees/<id>: points back into this project, shares this cache, plain config.

        Read through one directory descriptor: a few system calls per worktree.
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
                if files["commondir"].strip() != "../.." or gitdir.parent.parent != self.layout.project_dir \
                        or gitdir.name != ".git" or not is_worktree_name(gitdir.parent.name):
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
        result = await self.runner.run("read-config", ["config", "--list", "--null", "--show-scope"], cwd=self.path,
                                      max_stdout=CONFIG_LIMIT)
        tokens = result.stdout.split("\0")
        config: dict[str, str] = {}
        for scope, entry in zip(tokens[0::2], tokens[1::2]):
            if scope in ("local", "worktree"):
                key, _, value = entry.partition("\n")
                config[key.lower()] = value
        return config

    def remove_stale_locks(self) -> list[Path]:
        """Delete lock files a killed git left behind (no git runs here without our lock).

        Directories are walked without following links (the inspection refused
        caches with links in refs/ and worktrees/ before this runs).
        """
        candidates = [Path(e.path) for e in _entries(self.path) if e.name.endswith(".lock")]
        for meta in _entries(self.path / "worktrees"):
            if meta.is_dir(follow_symlinks=False):
                candidates += [Path(e.path) for e in _entries(Path(meta.path)) if e.name.endswith(".lock")]
        if safepath.is_real_dir(self.path / "refs"):
            for dirpath, _dirs, files in os.walk(self.path / "refs"):  # os.walk never follows links
                candidates += [Path(dirpath) / name for name in files if name.endswith(".lock")]
        for lock in candidates:
            log.warning("removing stale lock %s", lock.relative_to(self.layout.root))
            safepath.remove(self.layout.root, lock)
        return candidates

    def _drop_temporary_packs(self) -> None:
        for tmp in _entries(self.path / "objects" / "pack"):
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
        for entry in _entries(self.layout.project_dir):
            if is_worktree_name(entry.name) or entry.name == READY_DIR:
                log.warning("removing %s/%s: made for a deleted namespace of the same name",
                            self.layout.relative_dir, entry.name)
                safepath.remove(self.layout.root, Path(entry.path))

    async def _create(self, url: str, env: dict[str, str], revision: Revision, owner: str | None = None
                      ) -> Resolution:
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
            if owner:
                safepath.write_atomic(self.layout.root, staging / OWNER, owner)
            resolution = await self._resolve_in(staging, env, revision)
            safepath.rename(self.layout.root, staging, self.path.name)
            log.info("cache %s created", self.layout.relative_dir)
            return resolution
        finally:
            safepath.remove(self.layout.root, staging)

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
                                       cwd=repo, max_stdout=REV_PARSE_LIMIT)
        return result.stdout.strip()

    async def _remote_tip(self, repo: Path, env: dict[str, str], revision: Revision) -> tuple[str, str]:
        """(full remote ref, commit it points at) via one ls-remote round trip."""
        wanted = revision.remote_ref
        if wanted is None:
            result = await self.runner.run("ls-remote", ["ls-remote", "--symref", "--", "origin", "HEAD"],
                                           cwd=repo, env=env, max_stdout=LS_REMOTE_LIMIT)
            for line in result.stdout.splitlines():
                if line.startswith("ref: ") and line.endswith("\tHEAD"):
                    wanted = line.removeprefix("ref: ").split("\t")[0]
            if wanted is None:
                raise GitError(Reason.REF_NOT_FOUND, "upstream has no default branch (HEAD)", step="ls-remote")
        result = await self.runner.run("ls-remote", ["ls-remote", "--", "origin", wanted, f"{wanted}^{{}}"],
                                       cwd=repo, env=env, max_stdout=LS_REMOTE_LIMIT)
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
        safepath.touch(self.layout.root, marker)
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
        safepath.remove(self.layout.root, marker)
        stamp(self.layout.root, repo, LAST_FETCH)
        return result.seconds

    async def fetch_tags(self, env: dict[str, str]) -> float:
        """Every upstream tag (and the commits they need), under the project lock."""
        return await self._fetch(self.path, env, "refs/tags/*", "refs/tags/*")

    # -- maintenance ---------------------------------------------------------------

    async def check_for_maintenance(self) -> bool:
        """The same inspection as before a checkout (origin aside): False if the cache was
        untrustworthy and has been quarantined, so no git runs in it."""
        problem = await self.inspect(None, deep=False)
        if problem is None:
            return True
        self.quarantine(problem)
        return False

    async def prune_worktrees(self) -> None:
        unlock_crashed_worktrees(self.layout.root, self.path)
        await self.runner.run("worktree-prune", ["worktree", "prune"], cwd=self.path)

    async def gc(self) -> None:
        # Unreachable objects go at once: nothing writes under our lock, worktrees' HEADs
        # and the pins of cache-only Workspaces (git/pins.py) keep what is in use reachable.
        await self.runner.run("gc", ["gc", "--quiet", "--prune=now"], cwd=self.path)
        stamp(self.layout.root, self.path, LAST_GC)


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
            tail = chunk[-len(needle):]
    return False
