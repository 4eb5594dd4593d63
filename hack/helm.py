#!/usr/bin/env python3
"""helm, built from its Go module at a pinned version, once per machine.

    python3 hack/helm.py build        # prints the path of the binary
    python3 hack/helm.py -- ARGS...   # runs helm ARGS

No release binary is downloaded: `go install helm.sh/helm/v3/cmd/helm@VERSION`
through the Go module proxy, cached under
~/.cache/workspace-operator/helm/<version>/helm (toolcache.py). Tests use
`binary()`; the first build takes several minutes on a small machine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toolcache

VERSION = "v3.22.0"
MODULE = "helm.sh/helm/v3"


def binary_path() -> Path:
    return toolcache.cache_root("helm") / VERSION / "helm"


def build(*, quiet: bool = False) -> Path:
    def produce(partial: Path) -> None:
        # helm reports this version (`helm version`); its build leaves it empty otherwise.
        ldflags = f"-s -w -X {MODULE}/internal/version.version={VERSION}"
        toolcache.go_build(toolcache.REPO, partial, ldflags=ldflags, module=f"{MODULE}/cmd/helm@{VERSION}")

    return toolcache.cached(binary_path(), produce, what=f"helm {VERSION}", quiet=quiet)


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["build"]:
        print(build())
        return 0
    if args[:1] == ["--"]:
        args = args[1:]
    helm = str(build())
    os.execv(helm, [helm, *args])


if __name__ == "__main__":
    sys.exit(main())
