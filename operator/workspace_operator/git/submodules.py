"""Submodules of a worktree: validated like spec.repository, kept out of the shared cache.

`git submodule update --init` would write `submodule.<name>.*` into the cache's
config (which the next Workspace then distrusts) and trust whatever URLs the
commit's `.gitmodules` names. Instead, one level at a time:

1. read `.gitmodules` of the checked-out commit (from the object, not the file);
2. resolve relative URLs against the superproject's URL as git does, and check
   every URL with the same rules as spec.repository (URLPolicy);
3. run `git submodule update` (no --init) with the validated URL, `active` and
   `update=checkout` as `-c` overrides: nothing is written to the cache's
   config; the submodules' own repositories live in the worktree's metadata
   (`.cache/worktrees/<name>/modules`) and go with it;
4. credentials only for submodules the Secret's list of repositories covers;
   the others run without them (no helper answer, no ssh key), one git call
   each, and when the Workspace has a Secret their failures are reported as a
   fixed message (reason, path, host): nothing such a server says reaches a
   message, and nothing read from it passes a redactor that knows the secrets
   (a server echoing guesses would otherwise see from the status which of them
   came back as `***`);
5. recurse into each submodule, up to MAX_DEPTH levels.

Bounded as a whole: at most `max_submodules` submodules per worktree, every
level counted, checked before anything of a level is fetched (so a fan-out of
submodules listing submodules costs at most that many clones), and the whole
phase within one git timeout (host name lookups included: a level's hosts are
looked up at once, within the time left).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from pathlib import Path

from workspace_operator.git.credentials import CredentialSession
from workspace_operator.git.errors import GitError, Reason
from workspace_operator.git.layout import check_relpath, invalid
from workspace_operator.git.origins import Origin
from workspace_operator.git.policy import URLPolicy
from workspace_operator.git.runner import GitRunner

MAX_DEPTH = 8
# A .gitmodules may declare entries the commit has no gitlink for (they cost nothing but
# an ls-tree argument each); past this many it is refused before anything else is done.
MAX_DECLARED = 1024
_LS_TREE_BATCH = 256  # paths per ls-tree call: the argument list stays far below ARG_MAX
# A name goes into `-c submodule.<name>.url=...`: no '=', nothing git refuses.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/ -]*$")
_PATHSPEC_MAGIC = re.compile(r"[*?\[\]\\:]")


@dataclass(frozen=True)
class Submodule:
    name: str
    path: str  # relative to its superproject's worktree
    url: str
    origin: Origin
    shown: str  # its path relative to the Workspace's worktree, for messages


def resolve_relative(base: str, url: str) -> str:
    """git's resolution of a `./` or `../` submodule URL against the superproject's URL."""
    if not url.startswith(("./", "../")):
        return url
    remote = base.removesuffix("/")
    colon = False
    while True:
        if url.startswith("../"):
            url = url[3:]
            slash = remote.rfind("/")
            if slash >= 0:
                remote = remote[:slash]
            elif ":" in remote:
                remote, colon = remote[: remote.rfind(":")], True
            else:
                raise invalid("a relative submodule URL climbs above its superproject's URL")
        elif url.startswith("./"):
            url = url[2:]
        else:
            break
    return f"{remote}{':' if colon else '/'}{url}".removesuffix("/")


def parse_gitmodules(text: str) -> dict[str, dict[str, str]]:
    """`git config --list --null` output → name → {path, url, ...}."""
    found: dict[str, dict[str, str]] = {}
    for entry in text.split("\0"):
        key, _, value = entry.partition("\n")
        if not key.startswith("submodule.") or key.count(".") < 2:
            continue
        name, _, var = key.removeprefix("submodule.").rpartition(".")
        found.setdefault(name, {})[var] = value
    return found


class Submodules:
    """Checks out the submodules of worktrees of `repository`, level by level."""

    def __init__(self, runner: GitRunner, policy: URLPolicy, session: CredentialSession, repository: str) -> None:
        self.runner = runner
        # For what servers outside the grant send (their .gitmodules, say): it knows no secrets.
        self.outsider = GitRunner(runner.settings, namespace=runner.namespace)
        self.policy = policy
        self.session = session
        self.repository = repository
        self._top = Path()
        self._count = 0
        self._deadline = 0.0

    async def update(self, worktree: Path) -> None:
        timeout = self.runner.settings.timeout_seconds
        self._top, self._count, self._deadline = worktree, 0, time.monotonic() + timeout
        try:
            await self._update(worktree, self.repository, 0, self.runner)
        except GitError as error:
            if error.reason is not Reason.TIMEOUT:
                raise
            raise GitError(
                Reason.TIMEOUT,
                f"submodules not done within {timeout:.0f}s (one git timeout covers all of them)",
                step=error.step,
            ) from None

    def _left(self) -> float:
        """Seconds left for the submodule phase; a GitTimeout when none are."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise GitError(Reason.TIMEOUT, "no time left", step="submodules")
        return left

    async def _update(self, worktree: Path, super_url: str, depth: int, runner: GitRunner) -> None:
        """The submodules of worktree; `runner` is the one for what its server sent."""
        plan = await self._plan(runner, worktree, super_url)
        if not plan:
            return
        if depth >= MAX_DEPTH:
            raise invalid(f"submodules are nested more than {MAX_DEPTH} levels deep")
        # Below a submodule outside the grant nothing is granted, whatever its URL: that
        # server chose the URLs (and a granted one's errors would be redacted with the secret).
        outside = runner is self.outsider
        granted = [] if outside else [sub for sub in plan if self.session.allows(sub.url)]
        for sub in granted:
            self.session.grant(sub.url)
            # Written by whoever pushes to the repository: never a place to redact in
            # (a guess there would come back as `***` exactly when right). git quotes the
            # path absolute and, in single quotes, relative to the superproject.
            self.runner.redact.quote(sub.url, f"<submodule {sub.shown!r} url>")
            self.runner.redact.quote(str(worktree / sub.path), f"<project>/{self._top.name}/{sub.shown}")
            for phrase in (f"submodule path '{sub.path}'", f"Failed to clone '{sub.path}'"):
                self.runner.redact.quote(phrase, phrase)  # git's own words around the path only
        if granted:
            await self._checkout(worktree, granted, self.runner, self.session.env)
        for sub in plan:
            if sub not in granted:
                await self._checkout_outside_grant(worktree, sub)
        for sub in plan:
            await self._update(
                worktree / sub.path, sub.url, depth + 1, self.runner if sub in granted else self.outsider
            )

    async def _checkout(
        self, worktree: Path, group: list[Submodule], runner: GitRunner, env: dict[str, str], conceal: str | None = None
    ) -> None:
        config = ["fetch.fsckObjects=true"] if runner.settings.fsck_objects else []
        for sub in group:
            config += [
                f"submodule.{sub.name}.url={sub.url}",
                f"submodule.{sub.name}.active=true",
                f"submodule.{sub.name}.update=checkout",
            ]
        await runner.run(
            "submodules",
            ["submodule", "update", "--quiet", "--", *(s.path for s in group)],
            cwd=worktree,
            env=env,
            config=config,
            timeout=self._left(),
            conceal=conceal,
        )

    async def _checkout_outside_grant(self, worktree: Path, sub: Submodule) -> None:
        """One submodule the credentials do not cover, run without them; its server's
        words reach no message when there is a secret it could be fishing for."""
        where = f"submodule {sub.shown!r} at {sub.origin.authority}"
        if self.session.creds is None:
            try:
                await self._checkout(worktree, [sub], self.outsider, self.session.anonymous)
            except GitError as error:
                raise GitError(error.reason, f"{where}: {error.message}", step=error.step) from None
            return
        conceal = (
            f"{where} failed; its server is outside the credentials Secret's repositories, "
            "so what it answered is not shown"
        )
        await self._checkout(worktree, [sub], self.outsider, self.session.anonymous, conceal)

    async def _plan(self, runner: GitRunner, worktree: Path, super_url: str) -> list[Submodule]:
        """The submodules of the commit checked out in worktree, counted against the
        budget and every URL checked, before any of them is fetched."""
        if not await runner.ok(
            "has-gitmodules", ["cat-file", "-e", "HEAD:.gitmodules"], cwd=worktree, timeout=self._left()
        ):
            return []
        # --no-includes: an `[include] path=` in a pushed .gitmodules would otherwise read
        # files of the operator's pod (another tenant's worktree on the volume, say).
        listing = await runner.run(
            "read-gitmodules",
            ["config", "--no-includes", "--blob", "HEAD:.gitmodules", "--list", "--null"],
            cwd=worktree,
            timeout=self._left(),
        )
        included = [
            entry.partition("\n")[0]
            for entry in listing.stdout.split("\0")
            if entry.lower().startswith(("include.", "includeif."))
        ]
        if included:
            raise invalid(f".gitmodules may not include other files ({included[0]})")
        declared = parse_gitmodules(listing.stdout)
        if len(declared) > MAX_DECLARED:
            raise GitError(
                Reason.TOO_MANY_SUBMODULES,
                f"the .gitmodules declares {len(declared)} submodules, more than the {MAX_DECLARED} "
                "the operator reads at one level",
                step="submodules",
            )
        paths = {name: fields.get("path", "") for name, fields in declared.items()}
        for name, path in paths.items():
            if not _NAME.match(name) or ".." in name.split("/") or "\n" in name:
                raise invalid(f"submodule {name!r} is not allowed")
            check_relpath(f"submodule {name!r} path", path)
            if _PATHSPEC_MAGIC.search(path):
                raise invalid(f"submodule {name!r} path {path!r} contains pathspec characters")
        gitlinks = await self._gitlinks(runner, worktree, sorted(set(paths.values())))
        wanted: list[tuple[str, str, str]] = []
        for name, fields in sorted(declared.items()):
            path = paths[name].rstrip("/")
            if fields.get("update", "checkout") not in ("checkout", "rebase", "merge", "none"):
                raise invalid(
                    f"submodule {name!r} has an update mode other than checkout, rebase, merge "
                    "or none (commands are never run)"
                )
            if path not in gitlinks or fields.get("update") == "none":
                continue  # not in this commit, or not to be checked out: git skips it too
            if not fields.get("url"):
                raise invalid(f"submodule {name!r} has no url")
            wanted.append((name, path, fields["url"]))
        self._count += len(wanted)
        budget = self.runner.settings.max_submodules
        if self._count > budget:
            raise GitError(
                Reason.TOO_MANY_SUBMODULES,
                f"more than {budget} submodules, all levels counted (WORKSPACE_MAX_SUBMODULES={budget})",
                step="submodules",
            )
        plan: list[Submodule] = []
        for name, path, declared_url in wanted:
            url = resolve_relative(super_url, declared_url)
            origin = self.policy.check(url, f"submodule {name!r}")
            plan.append(Submodule(name, path, url, origin, str((worktree / path).relative_to(self._top))))
        await self._check_addresses(plan)
        return plan

    async def _check_addresses(self, plan: list[Submodule]) -> None:
        """The hosts of a level, each looked up once, all at once, within the phase's time left."""
        hosts: dict[tuple[str, int | None], Submodule] = {}
        for sub in plan:
            hosts.setdefault((sub.origin.host, sub.origin.port), sub)  # the first one names it in messages
        left = self._left()
        results = await asyncio.gather(
            *(
                self.policy.check_addresses(
                    sub.origin, f"submodule {sub.name!r}", within=left, namespace=self.runner.namespace
                )
                for sub in hosts.values()
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _gitlinks(self, runner: GitRunner, worktree: Path, paths: list[str]) -> set[str]:
        if not paths:
            return set()
        found: set[str] = set()
        for start in range(0, len(paths), _LS_TREE_BATCH):
            batch = paths[start : start + _LS_TREE_BATCH]
            listing = await runner.run(
                "list-gitlinks", ["ls-tree", "-z", "HEAD", "--", *batch], cwd=worktree, timeout=self._left()
            )
            for entry in listing.stdout.split("\0"):
                meta, _, path = entry.partition("\t")
                if meta.startswith("160000 "):
                    found.add(path)
        return found
