"""Where things live on the shared volume, and the validation that keeps them there.

    <root>/<namespace>/<project>/.cache          bare clone (one per namespace+project)
    <root>/<namespace>/<project>/<name>          detached worktree of Workspace <name>
    <root>/<namespace>/<project>/.ready/<name>   completion record of that worktree
    <root>/<namespace>/<project>/.quarantine-*   a broken cache set aside for inspection

Every component is checked against a strict grammar before it touches a path,
and every derived path is checked to stay below the root: the CRD rejects bad
input first, this is the second line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from workspace_operator.git.errors import GitError, Reason

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
CACHE_DIR = ".cache"
READY_DIR = ".ready"
QUARANTINE_PREFIX = ".quarantine-"
STAGING_PREFIX = ".staging-"
MAX_RELPATH = 1024
# What `git sparse-checkout set --cone` refuses as a directory: a pattern (`*`, `?`, `[`, `]`
# anywhere, `!` first). It would fail every attempt; the CRD refuses the same.
_CONE_PATTERN = re.compile(r"^!|[*?\[\]]")


def invalid(message: str) -> GitError:
    return GitError(Reason.INVALID_SPEC, message, step="validate")


def check_label(kind: str, value: str) -> str:
    if not isinstance(value, str) or not DNS1123_LABEL.match(value):
        raise invalid(f"{kind} {value!r} is not a DNS-1123 label (lowercase letters, digits, '-', max 63)")
    return value


def check_relpath(kind: str, value: str) -> PurePosixPath:
    """A relative path inside a worktree: no traversal, no absolute, no oddities."""
    if not isinstance(value, str) or not value or len(value) > MAX_RELPATH:
        raise invalid(f"{kind} must be a non-empty relative path of at most {MAX_RELPATH} characters")
    if any(ord(c) < 0x20 or c in "\\\x7f" for c in value):
        raise invalid(f"{kind} {value!r} contains a backslash or control character")
    if value.startswith("/"):
        raise invalid(f"{kind} {value!r} must be relative")
    parts = value.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise invalid(f"{kind} {value!r} must not contain empty, '.' or '..' segments")
    if parts[0] == ".git":
        raise invalid(f"{kind} {value!r} must not point into .git")
    return PurePosixPath(*parts)


def check_sparse_dir(value: str) -> PurePosixPath:
    """A sparse entry: a relative path (as subPath) that cone mode takes as a directory."""
    path = check_relpath("sparse entry", value)
    if _CONE_PATTERN.search(value):
        raise invalid(
            f"sparse entry {value!r} is a pattern, not a directory: cone mode takes directories "
            "(no '*', '?', '[' or ']', and no leading '!')"
        )
    return path


@dataclass(frozen=True)
class ProjectLayout:
    """Paths of one (namespace, project) on the volume."""

    root: Path
    namespace: str
    project: str

    def __post_init__(self) -> None:
        check_label("namespace", self.namespace)
        check_label("project", self.project)

    @property
    def relative_dir(self) -> PurePosixPath:
        return PurePosixPath(self.namespace, self.project)

    @property
    def project_dir(self) -> Path:
        return self.root / self.namespace / self.project

    @property
    def cache_dir(self) -> Path:
        return self.project_dir / CACHE_DIR

    @property
    def ready_dir(self) -> Path:
        return self.project_dir / READY_DIR

    def worktree_dir(self, name: str) -> Path:
        return self.project_dir / check_label("workspace name", name)

    def ready_record(self, name: str) -> Path:
        return self.ready_dir / check_label("workspace name", name)

    def relative_worktree(self, name: str) -> PurePosixPath:
        return self.relative_dir / check_label("workspace name", name)


def is_worktree_name(entry: str) -> bool:
    """Directory entries of a project dir that are (or were) worktrees."""
    return not entry.startswith(".") and bool(DNS1123_LABEL.match(entry))
