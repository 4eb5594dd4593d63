"""Build something once per machine: a per-user cache keyed by what it was built from.

Used for everything the project builds from pinned sources rather than installs:
the control plane (devcluster.py), helm (helm.py), the image root filesystem
(image.py). Layout: ~/.cache/workspace-operator/<kind>/<key>/<name>. A build
runs under a file lock (several engineers or test sessions on one machine wait
for one build instead of racing), writes to `<name>.partial` and renames it into
place, so a half-built result is never used.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cache_root(kind: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "workspace-operator" / kind


def digest_files(paths: Iterable[Path], *, base: Path = REPO, extra: str = "") -> str:
    """A short hash of file names (relative to base) and contents, plus an extra string."""
    digest = hashlib.sha256(extra.encode())
    for path in sorted(paths):
        digest.update(str(path.relative_to(base)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def cached(target: Path, produce: Callable[[Path], None], *, what: str, quiet: bool = False) -> Path:
    """Return target, calling produce(partial_path) first if it does not exist yet."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        partial = target.with_name(target.name + ".partial")
        _remove(partial)  # debris of an interrupted build
        if not quiet:
            print(f"building {what} (first time on this machine: several minutes)...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            produce(partial)
        except BaseException:
            _remove(partial)
            raise
        partial.rename(target)
        if not quiet:
            print(f"built {target} in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    return target


def go_build(package_dir: Path, output: Path, *, ldflags: str = "", module: str | None = None) -> None:
    """`go build` of a package in a module directory, or of `module` (pkg@version) outside any module."""
    args = ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(output)]
    if module is None:
        subprocess.run([*args[:2], "-mod=readonly", *args[2:], "."], cwd=package_dir, check=True)
        return
    # `go install pkg@version` is the only module-aware build outside a module;
    # GOBIN points it at a scratch directory next to the output.
    scratch = output.with_name(output.name + ".bin")
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            ["go", "install", "-trimpath", "-ldflags", ldflags, module],
            cwd=package_dir,
            check=True,
            env={**os.environ, "GOBIN": str(scratch)},
        )
        built = next(scratch.iterdir())
        built.rename(output)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
