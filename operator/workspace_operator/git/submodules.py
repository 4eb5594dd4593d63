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
   the others run without them (no helper answer, no ssh key);
5. recurse into each submodule, up to MAX_DEPTH levels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from workspace_operator.git.credentials import CredentialSession
from workspace_operator.git.layout import check_relpath, invalid
from workspace_operator.git.policy import URLPolicy
from workspace_operator.git.runner import GitRunner

MAX_DEPTH = 8
# A name goes into `-c submodule.<name>.url=...`: no '=', nothing git refuses.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/ -]*$")
_PATHSPEC_MAGIC = re.compile(r"[*?\[\]\\:]")


@dataclass(frozen=True)
class Submodule:
    name: str
    path: str
    url: str


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
        self.policy = policy
        self.session = session
        self.repository = repository

    async def update(self, worktree: Path) -> None:
        await self._update(worktree, self.repository, 0)

    async def _update(self, worktree: Path, super_url: str, depth: int) -> None:
        plan = await self._plan(worktree, super_url)
        if not plan:
            return
        if depth >= MAX_DEPTH:
            raise invalid(f"submodules are nested more than {MAX_DEPTH} levels deep")
        granted = [sub for sub in plan if self.session.allows(sub.url)]
        for sub in granted:
            self.session.grant(sub.url)
        public = [sub for sub in plan if sub not in granted]
        for group, env in ((granted, self.session.env), (public, self.session.anonymous)):
            if not group:
                continue
            config = ["fetch.fsckObjects=true"] if self.runner.settings.fsck_objects else []
            for sub in group:
                config += [
                    f"submodule.{sub.name}.url={sub.url}",
                    f"submodule.{sub.name}.active=true",
                    f"submodule.{sub.name}.update=checkout",
                ]
            await self.runner.run(
                "submodules",
                ["submodule", "update", "--quiet", "--", *(s.path for s in group)],
                cwd=worktree,
                env=env,
                config=config,
            )
        for sub in plan:
            await self._update(worktree / sub.path, sub.url, depth + 1)

    async def _plan(self, worktree: Path, super_url: str) -> list[Submodule]:
        """The submodules of the commit checked out in worktree, every URL checked."""
        if not await self.runner.ok("has-gitmodules", ["cat-file", "-e", "HEAD:.gitmodules"], cwd=worktree):
            return []
        # --no-includes: an `[include] path=` in a pushed .gitmodules would otherwise read
        # files of the operator's pod (another tenant's worktree on the volume, say).
        listing = await self.runner.run(
            "read-gitmodules",
            ["config", "--no-includes", "--blob", "HEAD:.gitmodules", "--list", "--null"],
            cwd=worktree,
        )
        included = [
            entry.partition("\n")[0]
            for entry in listing.stdout.split("\0")
            if entry.lower().startswith(("include.", "includeif."))
        ]
        if included:
            raise invalid(f".gitmodules may not include other files ({included[0]})")
        declared = parse_gitmodules(listing.stdout)
        paths = {name: fields.get("path", "") for name, fields in declared.items()}
        for name, path in paths.items():
            if not _NAME.match(name) or ".." in name.split("/") or "\n" in name:
                raise invalid(f"submodule name {name!r} is not allowed")
            check_relpath(f"submodule {name!r} path", path)
            if _PATHSPEC_MAGIC.search(path):
                raise invalid(f"submodule {name!r} path {path!r} contains pathspec characters")
        gitlinks = await self._gitlinks(worktree, sorted(set(paths.values())))
        plan: list[Submodule] = []
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
            what = f"submodule {name!r}"
            url = resolve_relative(super_url, fields["url"])
            origin = self.policy.check(url, what)
            await self.policy.check_addresses(origin, what)
            plan.append(Submodule(name, path, url))
        return plan

    async def _gitlinks(self, worktree: Path, paths: list[str]) -> set[str]:
        if not paths:
            return set()
        listing = await self.runner.run("list-gitlinks", ["ls-tree", "-z", "HEAD", "--", *paths], cwd=worktree)
        found: set[str] = set()
        for entry in listing.stdout.split("\0"):
            meta, _, path = entry.partition("\t")
            if meta.startswith("160000 "):
                found.add(path)
        return found
