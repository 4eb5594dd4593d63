"""A project's cache as a job sees it: mounted read-only, perhaps elsewhere, owned by another uid.

The job's `kubectl workspace checkout` makes a checkout that borrows the cache's
objects. It gets the engine's protections, not a weaker copy of them:

* the mount root is the job's own setting, resolved once; below it
  `<namespace>/<project>/.cache` is reached without following any link
  (safepath), and every path handed to git (the alternates entry too) is that
  checked path, never a resolved one;
* before git runs there, the cache passes the engine's inspection
  (`Cache.inspect_mounted`): no planted files, links, replace refs or config
  keys the operator never writes;
* git trusts that one directory although another uid owns it (`safe.directory`
  is its exact path, never `*`), and runs with HOME pointing nowhere, so no
  `~/.netrc` of the job answers for a host;
* submodules go through the engine's `Submodules`: every URL checked by the URL
  policy, at most MAX_DEPTH levels, never any credentials (the job has none).
"""

from __future__ import annotations

import dataclasses
import errno
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from workspace_operator.git import safepath
from workspace_operator.git.cache import Cache
from workspace_operator.git.credentials import CredentialSession
from workspace_operator.git.errors import GitError, Reason
from workspace_operator.git.layout import CACHE_DIR, ProjectLayout, invalid
from workspace_operator.git.policy import URLPolicy
from workspace_operator.git.runner import GitRunner, GitSettings
from workspace_operator.git.submodules import Submodules

NO_HOME = "/nonexistent"


@dataclass(frozen=True)
class MountedCache:
    root: Path  # the mount root, resolved once
    path: Path  # root/<namespace>/<project>/.cache: every component checked, no link
    settings: GitSettings  # for every git call of the job's checkout

    def runner(self) -> GitRunner:
        return GitRunner(self.settings)

    async def update_submodules(self, checkout: Path, repository: str) -> None:
        """The submodules of `checkout` (a commit of `repository`), as the engine checks them out,
        anonymously."""
        policy = URLPolicy(self.settings, self.root)
        await Submodules(self.runner(), policy, CredentialSession(None, None), repository).update(checkout)


async def open_mounted_cache(settings: GitSettings, root: Path, relative: PurePosixPath) -> MountedCache:
    """The cache at root/relative (a Workspace's status.cachePath), inspected before any git use.

    FileNotFoundError: nothing is mounted there. GitError(UnsafeVolumePath): a link on
    the way or in the cache, or a cache the operator did not leave as it is (git never ran
    in it). GitError(InvalidSpec): relative is not `<namespace>/<project>/.cache`.
    """
    root = root.resolve()  # the job's own setting: trusted; below it nothing is resolved
    parts = relative.parts
    if len(parts) != 3 or parts[2] != CACHE_DIR:
        raise invalid(f"cache path {str(relative)!r} is not <namespace>/<project>/{CACHE_DIR}")
    layout = ProjectLayout(root, parts[0], parts[1])
    path = layout.cache_dir
    safepath.check_real_dirs(root, layout.project_dir)  # UnsafeVolumePath through a link
    if safepath.kind(path) != "link" and all(safepath.kind(path / name) is None for name in ("HEAD", "objects")):
        raise FileNotFoundError(errno.ENOENT, "no git cache", str(path))
    job = dataclasses.replace(settings, safe_directories=(str(path),), home=NO_HOME)
    problem = await Cache(GitRunner(job), layout).inspect_mounted()
    if problem is not None:
        raise GitError(Reason.UNSAFE_PATH, f"{relative}: {problem}; refusing to run git with it", step="check-cache")
    return MountedCache(root, path, job)
