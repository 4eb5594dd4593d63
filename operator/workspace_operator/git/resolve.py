"""Resolving a revision to a commit in a cache, fetching only what is missing.

Callers hold the project's lock: fetches write the object store and refs.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workspace_operator.git import safepath
from workspace_operator.git.errors import GitError, Reason
from workspace_operator.git.markers import LAST_FETCH, OPERATION_MARKER, stamp
from workspace_operator.git.runner import GitResult, GitRunner
from workspace_operator.git.source import Revision, local_ref_for

log = logging.getLogger("workspace_operator.cache")


@dataclass(frozen=True)
class Resolution:
    commit: str
    cache_hit: bool  # the commit was already in the cache
    fetched: bool  # a fetch transferred objects
    fetch_seconds: float
    created: bool  # the cache was (re)created by this call
    repaired: str | None  # why an existing cache was repaired or replaced


@dataclass(frozen=True)
class Answer:
    """What upstream said a ref points at, and when (monotonic) the question was asked."""

    ref: str  # full upstream ref
    tip: str
    asked_at: float


class Answers:
    """Recent upstream answers per cache, so a burst of one branch asks upstream once.

    An answer serves a request only if the question was asked *after* the request
    arrived (`not_before`): a Workspace never gets a tip older than itself.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._latest: dict[tuple[Path, str], Answer] = {}

    def get(self, repo: Path, question: str, not_before: float | None) -> Answer | None:
        answer = self._latest.get((repo, question))
        if answer is None or not_before is None or answer.asked_at < not_before:
            return None
        return answer

    def put(self, repo: Path, question: str, answer: Answer) -> None:
        latest = self._latest.get((repo, question))
        if latest is None or latest.asked_at <= answer.asked_at:
            self._latest[(repo, question)] = answer

    def forget(self, repo: Path) -> None:
        for key in [key for key in self._latest if key[0] == repo]:
            del self._latest[key]


# Where the cache keeps what it fetched of upstream refs (source.local_ref_for).
TRACKING_NAMESPACES = ("refs/remotes/origin/", "refs/tags/", "refs/cache/")
# Output caps of the calls whose answer is a few lines: anything more is an attack.
LS_REMOTE_LIMIT = 64 * 1024
REV_PARSE_LIMIT = 4 * 1024


class Resolver:
    def __init__(
        self, runner: GitRunner, root: Path, repo: Path, answers: Answers | None = None, key: Path | None = None
    ) -> None:
        self.runner = runner
        self.root = root  # the volume root: marker files are written without following links below it
        self.repo = repo
        self.answers = answers or Answers()
        self.key = key or repo  # the cache's path, also while it is built in a staging dir

    async def resolve(
        self,
        env: dict[str, str],
        revision: Revision,
        *,
        not_before: float | None = None,
        present: frozenset[str] = frozenset(),
    ) -> Resolution:
        """`present`: commits known to be in the cache already (no need to ask git)."""
        if revision.commit:
            commit = revision.commit
            # Exactly a commit: an annotated tag's own id peels to one, but it is not the
            # commit that would be checked out, reported and pinned.
            kind = "commit" if commit in present else await self.object_type(commit)
            if kind == "commit":
                return Resolution(commit, True, False, 0.0, False, None)
            seconds = 0.0
            if kind is None and revision.remote_ref:
                seconds += await self.fetch(env, revision.remote_ref, revision.local_ref)
                kind = await self.object_type(commit)
            if kind is None:
                kept = f"refs/cache/commits/{commit}"
                seconds += await self.fetch(env, commit, kept, missing=Reason.COMMIT_NOT_FOUND)
                kind = await self.object_type(commit)
                if kind not in (None, "commit"):  # the ref keeps commits alive, nothing else
                    await self.runner.run("drop-ref", ["update-ref", "--no-deref", "-d", kept], cwd=self.repo)
            if kind != "commit":
                raise GitError(Reason.COMMIT_NOT_FOUND, _not_a_commit(commit, kind), step="fetch")
            return Resolution(commit, False, True, seconds, False, None)

        question = revision.remote_ref or "HEAD"
        answer = self.answers.get(self.key, question, not_before)
        if answer is None:
            asked = self.answers.clock()
            remote_ref, tip = await self.remote_tip(env, revision)
            self.answers.put(self.key, question, Answer(remote_ref, tip, asked))
        else:
            remote_ref, tip = answer.ref, answer.tip
        local_ref = local_ref_for(remote_ref)
        if tip in present or await self.has_commit(tip):
            return Resolution(tip, True, False, 0.0, False, None)
        asked = self.answers.clock()
        seconds = await self.fetch(env, remote_ref, local_ref)
        commit = await self.peel(local_ref)
        # The fetch read the ref after `asked`: a fresher answer than the ls-remote's.
        self.answers.put(self.key, question, Answer(remote_ref, commit, asked))
        return Resolution(commit, False, True, seconds, False, None)

    async def has_commit(self, sha: str) -> bool:
        """The cache holds `sha` and it is a commit: not a tag object that peels to one
        (its id would then be reported, recorded and pinned as the commit)."""
        return await self.object_type(sha) == "commit"

    async def object_type(self, sha: str) -> str | None:
        """What kind of object `sha` names in the cache (commit, tag, tree, blob); None if
        absent. Never asks upstream (no transport: see GitRunner.ok)."""
        try:
            result = await self.runner.run(
                "object-type",
                ["cat-file", "-t", sha],
                cwd=self.repo,
                env={"GIT_ALLOW_PROTOCOL": ""},
                query=True,
                max_stdout=REV_PARSE_LIMIT,
            )
        except GitError as error:
            if error.reason is Reason.TIMEOUT:
                raise
            return None
        return result.stdout.strip()

    async def drop_conflicting_refs(self, ref: str) -> None:
        """Delete the cache's refs that stand where `ref` is to be written: one of its
        leading directories as a ref (`origin/p` for `origin/p/q`), or refs below it
        (`origin/p/q` for `origin/p`). git cannot store both, and neither can upstream:
        such a ref tracks an upstream ref deleted since, and would make the fetch fail
        to lock `ref`. Only below the namespaces the cache keeps upstream refs in:
        never a pin (refs/workspaces/), whose commit stays wherever it is pinned."""
        root = next((prefix for prefix in TRACKING_NAMESPACES if ref.startswith(prefix)), None)
        if root is None:
            return
        parts = ref[len(root) :].split("/")
        above = [root + "/".join(parts[:count]) for count in range(1, len(parts))]
        listed = await self.runner.run(
            "find-refs", ["for-each-ref", "--format=%(refname)", "--", ref, *above], cwd=self.repo
        )
        for stale in listed.stdout.splitlines():
            if stale in above or stale.startswith(ref + "/"):
                log.info("removing %s: upstream now has %s", stale, ref)
                await self.runner.run("drop-ref", ["update-ref", "--no-deref", "-d", stale], cwd=self.repo)

    async def peel(self, ref: str) -> str:
        result = await self.runner.run(
            "resolve",
            ["rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}"],
            cwd=self.repo,
            max_stdout=REV_PARSE_LIMIT,
        )
        return result.stdout.strip()

    async def remote_tip(self, env: dict[str, str], revision: Revision) -> tuple[str, str]:
        """(full remote ref, commit it points at) via one ls-remote round trip."""
        wanted = revision.remote_ref
        if wanted is None:
            result = await self.runner.run(
                "ls-remote",
                ["ls-remote", "--symref", "--", "origin", "HEAD"],
                cwd=self.repo,
                env=env,
                max_stdout=LS_REMOTE_LIMIT,
            )
            for line in result.stdout.splitlines():
                if line.startswith("ref: ") and line.endswith("\tHEAD"):
                    wanted = line.removeprefix("ref: ").split("\t")[0]
            if wanted is None:
                raise GitError(Reason.REF_NOT_FOUND, "upstream has no default branch (HEAD)", step="ls-remote")
        result = await self.runner.run(
            "ls-remote",
            ["ls-remote", "--", "origin", wanted, f"{wanted}^{{}}"],
            cwd=self.repo,
            env=env,
            max_stdout=LS_REMOTE_LIMIT,
        )
        found: dict[str, str] = {}
        for line in result.stdout.splitlines():
            sha, _, ref = line.partition("\t")
            found[ref] = sha
        tip = found.get(f"{wanted}^{{}}") or found.get(wanted)
        if tip is None:
            raise GitError(Reason.REF_NOT_FOUND, f"{wanted} not found upstream", step="ls-remote")
        return wanted, tip

    async def fetch(
        self, env: dict[str, str], source: str, destination: str | None, missing: Reason = Reason.REF_NOT_FOUND
    ) -> float:
        """Fetch exactly one ref or commit; auto-gc off; marked so a crash is detected.

        If git could not store the ref because a stale tracking ref stands in its way
        (directory/file conflict), those refs are removed and the fetch made once more;
        for a pattern (every tag), once more with `--prune`, which removes the refs
        under it that upstream no longer has.
        """
        refspec = f"+{source}:{destination}" if destination else source
        marker = self.repo / OPERATION_MARKER
        safepath.touch(self.root, marker)
        try:
            try:
                result = await self._fetch(env, refspec)
            except GitError as error:
                # Only once upstream has sent the ref: then it cannot also have the
                # conflicting ones, which track refs it deleted since.
                if destination is None or not _REF_IN_THE_WAY.search(error.message):
                    raise
                if "*" in destination:
                    result = await self._fetch(env, refspec, prune=True)
                else:
                    await self.drop_conflicting_refs(destination)
                    result = await self._fetch(env, refspec)
        except GitError as error:
            if error.reason is Reason.REF_NOT_FOUND and missing is not Reason.REF_NOT_FOUND:
                raise GitError(missing, error.message, step=error.step) from None
            raise
        safepath.remove(self.root, marker)
        stamp(self.root, self.repo, LAST_FETCH)
        return result.seconds

    async def _fetch(self, env: dict[str, str], refspec: str, *, prune: bool = False) -> GitResult:
        return await self.runner.run(
            "fetch",
            [
                "fetch",
                "--no-tags",
                "--no-auto-gc",
                "--no-recurse-submodules",
                "--no-write-fetch-head",
                "--quiet",
                *(["--prune"] if prune else []),
                "--",
                "origin",
                refspec,
            ],
            cwd=self.repo,
            env=env,
            # Every received object is checked (malformed trees, paths like .git or ../).
            config=["transfer.fsckObjects=true"] if self.runner.settings.fsck_objects else [],
        )


# git's words when a ref cannot be stored because another one is in its way.
_REF_IN_THE_WAY = re.compile(
    r"cannot lock ref '[^']*': '[^']*' exists|cannot lock ref '[^']*': there is a non-empty directory"
)


def _not_a_commit(sha: str, kind: str | None) -> str:
    if kind is None:
        return f"commit {sha} not found upstream"
    hint = ": give the id of the commit the tag points to" if kind == "tag" else ""
    return f"ref.commit {sha} names a {kind} object, not a commit{hint}"
