"""Exit codes of `kubectl workspace`: one per failure a job script may want to tell apart.

They are a contract (scripts and docs rely on them); see docs/cli.md.
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    FAILED = 1  # anything not listed below (a git step in the checkout failed, ...)
    USAGE = 2  # bad flags (argparse's own code)
    NOT_FOUND = 3  # no such Workspace (or it was deleted while waiting)
    FORBIDDEN = 4  # the API refused: no credentials, or RBAC does not allow the verb
    PERMANENT_FAILURE = 5  # the Workspace failed for good (phase Failed or Stalled=True)
    DEADLINE = 6  # not Ready before --timeout
    CACHE_NOT_MOUNTED = 7  # status.cachePath is not a git cache under --cache-root
    COMMIT_MISSING = 8  # the cache does not hold the Workspace's commit
    DIRECTORY_NOT_EMPTY = 9  # --into names a non-empty directory (use --clean)
    API_UNAVAILABLE = 10  # the API server could not be reached or answered an error
    CONFLICT = 11  # create: a Workspace of that name exists with another spec
    WRONG_MODE = 12  # path: a CacheOnly Workspace has no worktree
    UNSAFE_CACHE = 13  # the mounted cache failed inspection (a symlink, planted files or config): no git ran


class CliError(Exception):
    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message
