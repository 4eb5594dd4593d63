"""A job container, emulated for real: no kubelet exists here.

Each `run` starts a private mount namespace (`unshare --mount`, as root, which the
tests run as), bind-mounts the project's cache READ-ONLY at the path a pod would
see it (`<cache root>/<status.cachePath>`), then drops to a non-root uid with no
supplementary groups (`setpriv`) and runs the command. `empty_dir` plays the
pod's emptyDir: an empty directory owned by that uid. The kubeconfig holds a
ServiceAccount token, as a pod's projected token would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient, CoreV1Api

from cluster import REPO, load_yaml, token_kubeconfig

Kubectl = Callable[..., subprocess.CompletedProcess[str]]

JOB_UID = 65532


def _world_reachable(path: Path) -> bool:
    return all(part.stat().st_mode & 0o001 for part in [*path.parents, path])


def _interpreter() -> str:
    """A Python of this ABI the job's uid may run (the venv's may live under a 0700 home)."""
    own = Path(os.path.realpath(sys.executable))
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    return str(own if _world_reachable(own) or not system.exists() else system)


_SITE_PACKAGES = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
_SITE = f"import site, sys\nsite.addsitedir({_SITE_PACKAGES!r})\n"


@dataclass
class EmulatedPod:
    base: Path  # 0755, under /tmp: reachable for the job's uid (pytest's tmp_path is not)
    uid: int = JOB_UID
    mounts: dict[Path, Path] = field(default_factory=dict)  # target in the pod -> source on the volume
    env: dict[str, str] = field(default_factory=dict)

    @property
    def cache_root(self) -> Path:
        return self.base / "workspaces"

    @property
    def empty_dir(self) -> Path:
        return self.base / "src"

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def bin(self) -> Path:
        return self.base / "bin"

    def setup(self) -> EmulatedPod:
        for directory in (self.cache_root, self.empty_dir, self.home, self.bin):
            directory.mkdir(parents=True, exist_ok=True)
        for directory in (self.empty_dir, self.home):
            os.chown(directory, self.uid, self.uid)
        # The command as the image installs it: on PATH, run by a Python the uid can execute.
        command = self.bin / "kubectl-workspace"
        command.write_text(
            f"#!{_interpreter()}\n{_SITE}from workspace_operator.cli.main import main\nsys.exit(main())\n"
        )
        command.chmod(0o755)
        return self

    def python(self, code: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run Python code as the job, the package importable as in the image."""
        script = self.base / "job.py"
        script.write_text(_SITE + code)
        script.chmod(0o644)
        return self.run(_interpreter(), str(script), **kwargs)

    def mount_cache(self, volume_root: Path, cache_path: str) -> Path:
        """Mount `<volume>/<cache_path>` read-only at `<cache root>/<cache_path>` in every later run."""
        target = self.cache_root / cache_path
        target.mkdir(parents=True, exist_ok=True)
        self.mounts[target] = volume_root / cache_path
        return target

    def kubeconfig(self, text: str) -> Path:
        path = self.base / "kubeconfig"
        path.write_text(text)
        path.chmod(0o644)
        self.env["KUBECONFIG"] = str(path)
        return path

    def run(
        self,
        *argv: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 120,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        script = ["set -e"]
        full_env = {
            "PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "WORKSPACE_CACHE_ROOT": str(self.cache_root),
            **self.env,
            **(env or {}),
        }
        for index, (target, source) in enumerate(self.mounts.items()):
            full_env[f"POD_MOUNT_SOURCE_{index}"], full_env[f"POD_MOUNT_TARGET_{index}"] = str(source), str(target)
            script.append(f'mount --bind -o ro "$POD_MOUNT_SOURCE_{index}" "$POD_MOUNT_TARGET_{index}"')
        script.append(f'cd "{cwd or self.empty_dir}"')
        script.append(f'exec setpriv --reuid {self.uid} --regid {self.uid} --clear-groups -- "$@"')
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", "\n".join(script), "pod", *argv],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-c", script, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def pod() -> Iterator[EmulatedPod]:
    base = Path(tempfile.mkdtemp(prefix="pod-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield EmulatedPod(base).setup()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def tree_digest(root: Path) -> str:
    """Names, types, modes, sizes, mtimes and contents of everything below root (symlinks not followed)."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            path = Path(dirpath) / name
            info = path.lstat()
            digest.update(f"{path.relative_to(root)}\0{info.st_mode:o}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
            if stat.S_ISREG(info.st_mode):
                digest.update(path.read_bytes())
            elif stat.S_ISLNK(info.st_mode):
                digest.update(os.readlink(path).encode())
    return digest.hexdigest()


def job_token(
    kubectl: Kubectl, api_client: ApiClient, namespace: str, account: str = "workspace-job", rbac: bool = True
) -> str:
    """A token of a ServiceAccount in `namespace`, bound to the Role of examples/job-rbac.yaml if `rbac`."""
    if rbac:
        for doc in load_yaml(REPO / "examples" / "job-rbac.yaml"):
            doc["metadata"]["namespace"] = namespace
            for subject in doc.get("subjects", []):
                subject["namespace"] = namespace
            kubectl("apply", "-f", "-", input=json.dumps(doc))
    core: Any = CoreV1Api(api_client)  # the client's typed signatures want model objects; dicts work
    if not rbac:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    token = core.create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    return str(token)


def job_kubeconfig(kubeconfig: Path, token: str, namespace: str, path: Path) -> str:
    """The token's kubeconfig text, with the namespace as a pod's would default to it."""
    config = json.loads(token_kubeconfig(kubeconfig, token, path).read_text())
    config["contexts"][0]["context"]["namespace"] = namespace
    return json.dumps(config)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout.strip()
