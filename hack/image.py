#!/usr/bin/env python3
"""`make image`: the operator image from Debian's packages and the project's wheel.

No container engine or registry is needed:

1. wheels: `pip wheel` of the project and every dependency (from the Python
   package index, as `pip install` would);
2. root filesystem: `mmdebstrap` of Debian bookworm (minbase) with the packages
   of image/debian-packages.txt, from the host's apt sources (cached on its
   own: the slow part, rebuilt only when the list changes); then a copy of it
   with image/install.sh run inside (venv + wheels offline, runtime user): the
   same two inputs the Containerfile uses;
3. OCI image layout: the root filesystem as one layer, packed by `umoci` with
   the Containerfile's user, entrypoint, environment and labels.

    python3 hack/image.py build     # prints the cache directory (rootfs/, oci/)
    python3 hack/image.py rootfs    # prints the root filesystem path

The result is cached under ~/.cache/workspace-operator/image/<key>/, keyed by a
hash of every input (package list, install script, this file, the package's
sources and metadata), so a rebuild happens only when one of them changes; a
change of the operator's code alone reuses the Debian root filesystem.
Load it elsewhere with e.g. `skopeo copy oci:<dir>/oci:0.1.0 docker://...`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toolcache

REPO = toolcache.REPO
SUITE = "bookworm"
TAG = "0.1.0"
PACKAGES_FILE = REPO / "image" / "debian-packages.txt"
INSTALL_SCRIPT = REPO / "image" / "install.sh"
# The Containerfile's runtime settings; the OCI config below repeats them.
USER = "10001:10001"
ENV = (
    "PATH=/opt/workspace-operator/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONUNBUFFERED=1",
    "PYTHONDONTWRITEBYTECODE=1",
    "HOME=/tmp",
)
ENTRYPOINT = ("/opt/workspace-operator/bin/python", "-m", "workspace_operator")
TOOLS = {"mmdebstrap": "mmdebstrap", "umoci": "umoci"}  # command -> Debian package
# Bump when _debian_rootfs changes in a way the package list does not show.
BASE_RECIPE = "1"


def packages() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in PACKAGES_FILE.read_text().splitlines())
    return [line for line in lines if line]


def inputs() -> list[Path]:
    # The package's files only (not build debris such as egg-info or bytecode).
    package = REPO / "operator" / "workspace_operator"
    sources = [p for p in package.rglob("*") if p.is_file() and (p.suffix == ".py" or p.name == "py.typed")]
    return [
        PACKAGES_FILE,
        INSTALL_SCRIPT,
        Path(__file__).resolve(),
        REPO / "pyproject.toml",
        REPO / "README.md",
        *sources,
    ]


def image_dir() -> Path:
    return toolcache.cache_root("image") / f"{SUITE}-{toolcache.digest_files(inputs(), extra=SUITE)}" / "image"


def ensure_tools() -> None:
    missing = [pkg for cmd, pkg in TOOLS.items() if shutil.which(cmd) is None]
    if missing:
        print(f"installing {' '.join(missing)} (Debian packages)", file=sys.stderr, flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )


def _apt_sources() -> list[str]:
    """The host's apt sources (files), pasted into the image build as its mirrors."""
    found = [Path("/etc/apt/sources.list")] if Path("/etc/apt/sources.list").is_file() else []
    found += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    found += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    if not found:
        raise SystemExit("no apt sources on this host (/etc/apt/sources.list[.d]): cannot bootstrap Debian")
    return [str(p) for p in found]


def _wheels(target: Path) -> None:
    # From a clean copy of the package's inputs: a build/ left in the work tree
    # by an earlier build could carry stale modules into the wheel.
    with tempfile.TemporaryDirectory(prefix="wo-image-src-") as source:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, source)
        shutil.copytree(
            REPO / "operator", Path(source) / "operator", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--disable-pip-version-check",
                "--wheel-dir",
                str(target),
                source,
            ],
            check=True,
        )


def _debian_rootfs(target: Path) -> None:
    excludes = [
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/locale/*",
        "path-exclude=/usr/share/doc/*",
        "path-include=/usr/share/doc/*/copyright",
    ]
    subprocess.run(
        [
            "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            f"--include={','.join(packages())}",
            *(f"--dpkgopt={opt}" for opt in excludes),
            SUITE,
            str(target),
            *_apt_sources(),
        ],
        check=True,
    )


def base_rootfs(*, quiet: bool = False) -> Path:
    """Debian with the image's packages: rebuilt only when the package list changes."""
    key = toolcache.digest_files([PACKAGES_FILE], extra=f"{SUITE}:{BASE_RECIPE}")
    return toolcache.cached(
        toolcache.cache_root("image") / f"base-{SUITE}-{key}" / "rootfs",
        _debian_rootfs,
        what=f"the image's Debian {SUITE} root filesystem",
        quiet=quiet,
    )


def _rootfs(target: Path, wheels: Path, base: Path) -> None:
    """A copy of the Debian root filesystem with image/install.sh run inside it."""
    subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(target)], check=True)
    shutil.copytree(wheels, target / "tmp" / "wheels")
    shutil.copy2(INSTALL_SCRIPT, target / "tmp" / "install.sh")
    try:
        subprocess.run(
            ["chroot", str(target), "/bin/sh", "/tmp/install.sh", "/tmp/wheels"],
            check=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"},
        )
    finally:
        shutil.rmtree(target / "tmp" / "wheels", ignore_errors=True)
        (target / "tmp" / "install.sh").unlink(missing_ok=True)


def _oci(target: Path, rootfs: Path) -> None:
    layer = target.with_name("layer.tar")
    with tarfile.open(layer, "w") as tar:
        tar.add(rootfs, arcname=".", recursive=True)
    image = f"{target}:{TAG}"
    try:
        subprocess.run(["umoci", "init", "--layout", str(target)], check=True)
        subprocess.run(["umoci", "new", "--image", image], check=True)
        subprocess.run(["umoci", "raw", "add-layer", "--image", image, str(layer)], check=True)
        labels = (
            "org.opencontainers.image.title=workspace-operator",
            f"org.opencontainers.image.version={TAG}",
            "org.opencontainers.image.licenses=Apache-2.0",
        )
        config = [
            "umoci",
            "config",
            "--image",
            image,
            "--config.user",
            USER,
            "--config.workingdir",
            "/",
            "--config.exposedports",
            "8080/tcp",
        ]
        config += [arg for label in labels for arg in ("--config.label", label)]
        config += [arg for entry in ENTRYPOINT for arg in ("--config.entrypoint", entry)]
        config += [arg for entry in ENV for arg in ("--config.env", entry)]
        subprocess.run(config, check=True)
        subprocess.run(["umoci", "gc", "--layout", str(target)], check=True)
    finally:
        layer.unlink(missing_ok=True)


def build(*, quiet: bool = False) -> Path:
    """The cached image directory (rootfs/, oci/, build.json), built first if needed."""

    def produce(partial: Path) -> None:
        ensure_tools()
        partial.mkdir(parents=True)
        started = time.monotonic()
        base = base_rootfs(quiet=quiet)
        timings = {"debian": round(time.monotonic() - started, 1)}  # ~0 when cached
        steps: list[tuple[str, Callable[[], None]]] = [
            ("wheels", lambda: _wheels(partial / "wheels")),
            ("rootfs", lambda: _rootfs(partial / "rootfs", partial / "wheels", base)),
            ("oci", lambda: _oci(partial / "oci", partial / "rootfs")),
        ]
        for step, run in steps:
            started = time.monotonic()
            run()
            timings[step] = round(time.monotonic() - started, 1)
            if not quiet:
                print(f"image: {step} done in {timings[step]:.0f}s", file=sys.stderr, flush=True)
        shutil.rmtree(partial / "wheels")
        (partial / "build.json").write_text(json.dumps({"suite": SUITE, "tag": TAG, "seconds": timings}) + "\n")

    built = toolcache.cached(image_dir(), produce, what=f"the operator image ({SUITE} rootfs)", quiet=quiet)
    _prune(keep=built.parent)
    return built


def _prune(keep: Path, max_age_seconds: float = 86400) -> None:
    """Drop images of older sources unused for a day (each is ~0.5 GB); bases stay."""
    os.utime(keep)
    for entry in toolcache.cache_root("image").glob(f"{SUITE}-*"):
        if entry != keep and time.time() - entry.stat().st_mtime > max_age_seconds:
            shutil.rmtree(entry, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build", "rootfs"])
    opts = parser.parse_args()
    built = build()
    print(built / "rootfs" if opts.command == "rootfs" else built)
    return 0


if __name__ == "__main__":
    sys.exit(main())
