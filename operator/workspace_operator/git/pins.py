"""Pins: one ref per cache-only Workspace, `refs/workspaces/<name>`, in the project's cache.

A job's own checkout borrows the cache's objects (alternates) instead of copying
them. Everything a pinned commit needs is reachable from its pin, so neither
`git gc --prune=now` nor a fetch that moves a branch away from the commit can
take those objects from under the checkout. The pin lives exactly as long as
its Workspace: the finalizer removes it, and GC removes pins whose Workspace no
longer exists.

Writing goes through git under the project lock; reading is plain file access
(loose ref, then `packed-refs`), cheap enough for every resume and GC snapshot.
Names are DNS-1123 labels; anything else found there is ignored, never used.
"""

from __future__ import annotations

import os
from pathlib import Path

from workspace_operator.git.layout import DNS1123_LABEL, check_label
from workspace_operator.git.runner import GitRunner

PIN_NAMESPACE = "refs/workspaces/"
_PACKED_REFS_LIMIT = 64 * 1024 * 1024


def pin_ref(name: str) -> str:
    return PIN_NAMESPACE + check_label("workspace name", name)


async def pin(runner: GitRunner, repo: Path, name: str, commit: str) -> None:
    await runner.run("pin", ["update-ref", "--no-deref", pin_ref(name), commit], cwd=repo)


async def unpin(runner: GitRunner, repo: Path, name: str) -> bool:
    """Remove the pin; False if there was none (or no cache)."""
    if read(repo, name) is None:
        return False
    await runner.run("unpin", ["update-ref", "--no-deref", "-d", pin_ref(name)], cwd=repo)
    return True


def read(repo: Path, name: str) -> str | None:
    """The commit a Workspace's pin names, without running git; None if unpinned."""
    loose = _read_small(repo / "refs" / "workspaces" / check_label("workspace name", name), 128)
    if loose is not None:
        return loose.strip() or None
    return _packed(repo).get(name)


def names(repo: Path) -> frozenset[str]:
    """Workspaces with a pin in this cache (loose or packed)."""
    found = set(_packed(repo))
    directory = repo / "refs" / "workspaces"
    try:
        entries = os.listdir(directory) if not directory.is_symlink() else []
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    for entry in entries:
        if DNS1123_LABEL.match(entry) and not (directory / entry).is_symlink():
            found.add(entry)
    return frozenset(found)


def _packed(repo: Path) -> dict[str, str]:
    text = _read_small(repo / "packed-refs", _PACKED_REFS_LIMIT) or ""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        sha, _, ref = line.partition(" ")
        name = ref.removeprefix(PIN_NAMESPACE)
        if ref.startswith(PIN_NAMESPACE) and DNS1123_LABEL.match(name):
            pins[name] = sha
    return pins


def _read_small(path: Path, limit: int) -> str | None:
    """A regular file's text, never through a symlink; None if absent or not a file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # absent, a symlink (ELOOP), ...
        return None
    with os.fdopen(fd, "rb") as handle:
        try:
            return handle.read(limit).decode("ascii", "replace")
        except OSError:  # a directory
            return None
