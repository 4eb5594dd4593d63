"""Running git hermetically: never the developer's or CI's own git config (identity,
signing, credential helpers, url rewrites), never a prompt, stderr in every error."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

GIT_TIMEOUT = 60.0
# All fixed so that the same build steps always produce the same SHAs.
AUTHOR = ("Upstream Author", "author@upstream.test")
COMMITTER = ("Upstream Committer", "committer@upstream.test")
BASE_EPOCH = 1_700_000_000


class GitCommandError(AssertionError, RuntimeError):
    """A git command failed; the message carries git's stderr (CalledProcessError hides it).
    An AssertionError for tests, a RuntimeError for scripts."""


def hermetic_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment minus every git configuration source."""
    env = dict(os.environ)
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    env.update(extra or {})
    return env


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """`hermetic_env` plus a fixed identity and date, for commits with reproducible SHAs."""
    return hermetic_env(
        {
            "GIT_AUTHOR_NAME": AUTHOR[0],
            "GIT_AUTHOR_EMAIL": AUTHOR[1],
            "GIT_COMMITTER_NAME": COMMITTER[0],
            "GIT_COMMITTER_EMAIL": COMMITTER[1],
            "GIT_AUTHOR_DATE": f"@{BASE_EPOCH} +0000",
            "GIT_COMMITTER_DATE": f"@{BASE_EPOCH} +0000",
            **(extra or {}),
        }
    )


def run_git(
    *args: str,
    cwd: Path | None = None,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    timeout: float = GIT_TIMEOUT,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`git ARGS` in cwd (any owner: `safe.directory=*`); raises GitCommandError if check and it fails."""
    proc = subprocess.run(
        ["git", "-c", "safe.directory=*", *args],
        cwd=cwd,
        env=git_env(env),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        where = f" in {cwd}" if cwd else ""
        raise GitCommandError(f"git {' '.join(args)}{where} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def git(repo: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = GIT_TIMEOUT) -> str:
    """`git -C repo ARGS`, checked; its stdout, stripped."""
    return run_git("-C", str(repo), *args, env=env, timeout=timeout).stdout.strip()
