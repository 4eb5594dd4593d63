"""Size-limited volumes: a real tmpfs, so "disk full" and usage ratios are the kernel's own."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testsupport.wait import wait_for


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (e.g. "6m") at path for the block; skips the test where this
    machine refuses to mount. Unmounted at exit, retried while processes release it."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, timeout=30
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        wait_for(
            lambda: subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode == 0,
            timeout=30,
            message=f"unmount {path}",
        )


def resize(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, timeout=30)
