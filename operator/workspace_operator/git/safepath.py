"""File operations on the shared volume that never follow a symlink they did not create.

Anyone who can write the volume can plant a symlink where the operator expects a
directory (`<root>/<ns>` -> another namespace, `<project>/.ready` -> elsewhere,
a worktree path -> a directory outside the volume). Every operation here starts
at the root (trusted: it is the operator's configuration) and opens each path
component relative to its parent with O_NOFOLLOW, then acts with `dir_fd`: a
component swapped for a link after a check is still never traversed.

A symlink where a directory is expected raises GitError(UnsafeVolumePath) and is
logged; the operation touches nothing. A symlink at the *final* component of a
removal is removed as a link, never followed.

git itself takes paths: `check_real_dirs` verifies every component before git
runs there (a check, so a window remains against a writer racing the operator).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from workspace_operator.git.errors import GitError, Reason

log = logging.getLogger("workspace_operator.safepath")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def unsafe(root: Path, path: Path, what: str) -> GitError:
    shown = _relative(root, path)
    log.warning("unsafe path on the volume: %s %s; not following it", shown, what)
    return GitError(Reason.UNSAFE_PATH, f"{shown} {what} on the volume; refusing to follow it", step="check-path")


def _relative(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _parts(root: Path, path: Path) -> tuple[str, ...]:
    parts = path.relative_to(root).parts
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"not a plain path below the root: {path}")
    return parts


def kind(path: Path) -> str | None:
    """'dir', 'link', 'file' or 'other' for the entry itself (lstat), None if absent."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


def is_real_dir(path: Path) -> bool:
    return kind(path) == "dir"


def check_real_dirs(root: Path, path: Path) -> None:
    """Every component of `path` below `root` is a directory, not a symlink; else UnsafeVolumePath.

    A missing component raises FileNotFoundError. Call before running git in `path`.
    """
    current = root
    for part in _parts(root, path):
        current = current / part
        found = kind(current)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, "no such directory", str(current))
        if found != "dir":
            raise unsafe(root, current, "is a symlink" if found == "link" else "is not a directory")


@contextlib.contextmanager
def open_dir(root: Path, path: Path, *, create: bool = False) -> Iterator[int]:
    """A file descriptor of directory `path`, reached from `root` without following any link.

    `create` makes missing components (mode 0777 & ~umask). Missing without
    `create`: FileNotFoundError. A link or non-directory: UnsafeVolumePath.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        current = root
        for part in _parts(root, path):
            current = current / part
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise unsafe(
                        root, current, "is a symlink" if _is_link_at(fd, part) else "is not a directory"
                    ) from None
                raise
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _is_link_at(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def make_dirs(root: Path, path: Path) -> None:
    """`mkdir -p` that refuses (UnsafeVolumePath) to go through a symlink."""
    with open_dir(root, path, create=True):
        pass


def remove(root: Path, path: Path) -> bool:
    """Remove the entry at `path`: a directory tree (links inside removed as links), a file, or a
    link itself. False if nothing was there. The parents must be real directories."""
    try:
        with open_dir(root, path.parent) as parent:
            return _remove_at(parent, path.name)
    except FileNotFoundError:
        return False


def _remove_at(parent: int, name: str) -> bool:
    try:
        mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(mode):
        # With dir_fd, rmtree walks by file descriptors and never follows links.
        shutil.rmtree(name, dir_fd=parent)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent)
    return True


def rename(root: Path, path: Path, new_name: str) -> None:
    """Rename the entry itself (a link stays a link) within its directory."""
    with open_dir(root, path.parent) as parent:
        os.rename(path.name, new_name, src_dir_fd=parent, dst_dir_fd=parent)


def rmdir(root: Path, path: Path) -> None:
    """Remove an empty directory; OSError if not empty, absent or a link."""
    with open_dir(root, path.parent) as parent:
        os.rmdir(path.name, dir_fd=parent)


def read_text(root: Path, path: Path, limit: int = 64 * 1024) -> str:
    """Contents of the regular file `path`: no link anywhere on the way, at most `limit` bytes.

    OSError (FileNotFoundError, ELOOP, ...) or UnsafeVolumePath otherwise.
    """
    with open_dir(root, path.parent) as parent:
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(path))
            return handle.read(limit).decode("utf-8", "replace")


def read_files_at(dir_fd: int, name: str, files: Sequence[str], limit: int = 64 * 1024) -> dict[str, str] | None:
    """The regular files `files` of subdirectory `name` of `dir_fd` (absent ones left out), opened
    without following links; None if `name` is not a real directory. OSError for a link or other."""
    try:
        sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            return None
        raise
    try:
        found: dict[str, str] = {}
        for file in files:
            try:
                fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=sub)
            except FileNotFoundError:
                continue
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file", file)
                found[file] = handle.read(limit).decode("utf-8", "replace")
        return found
    finally:
        os.close(sub)


def write_atomic(root: Path, path: Path, data: str) -> None:
    """Write `path` whole or not at all (temporary file, fsync, rename); never through a link."""
    partial = f".{path.name}.partial"
    with open_dir(root, path.parent) as parent:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial, dir_fd=parent)  # a crash mid-write
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent)
        with os.fdopen(fd, "w") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(partial, path.name, src_dir_fd=parent, dst_dir_fd=parent)


def touch(root: Path, path: Path) -> None:
    """Create or update the mtime of a regular file; a link planted there is replaced by the file."""
    with open_dir(root, path.parent) as parent:
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path.name, flags, 0o644, dir_fd=parent)
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            os.unlink(path.name, dir_fd=parent)
            fd = os.open(path.name, flags, 0o644, dir_fd=parent)
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.utime(fd)
        finally:
            os.close(fd)


def mtime(root: Path, path: Path) -> float | None:
    """mtime of the regular file `path`; None if absent, a link, or not reachable without links."""
    try:
        with open_dir(root, path.parent) as parent:
            st = os.stat(path.name, dir_fd=parent, follow_symlinks=False)
    except (OSError, GitError):
        return None
    return st.st_mtime if stat.S_ISREG(st.st_mode) else None


def disk_usage(root: Path, path: Path) -> int:
    """Bytes allocated below directory `path`, counted without following any link."""
    total = 0
    try:
        with open_dir(root, path) as top:
            for _dir, _subdirs, files, dir_fd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
                for name in files:
                    with contextlib.suppress(FileNotFoundError):
                        total += os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_blocks * 512
    except (FileNotFoundError, GitError):
        return 0
    return total


def find_links(root: Path, path: Path) -> list[str]:
    """Symlinks anywhere below directory `path` (relative names), found without following any."""
    found: list[str] = []
    with open_dir(root, path) as top:
        for dirpath, subdirs, files, dir_fd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            for name in [*subdirs, *files]:
                if _is_link_at(dir_fd, name):
                    found.append(os.path.normpath(os.path.join(dirpath, name)))
    return found
