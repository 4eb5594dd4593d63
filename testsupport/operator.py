"""The operator as it ships: `python -m workspace_operator` in its own session (process
group), ready when its /readyz answers, stopped by its pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from testsupport.wait import wait_for

ALL_SCHEMES = "https,ssh,http,git,file"


def operator_env(
    *,
    kubeconfig: Path,
    root: Path,
    metrics_port: int,
    namespace: str | None = None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """This process's environment plus the settings every local run needs; `namespace`
    confines the operator (watch and Leases) to one namespace."""
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "WORKSPACE_ROOT": str(root),
        "WORKSPACE_ALLOWED_SCHEMES": ALL_SCHEMES,
        "WORKSPACE_ALLOW_PRIVATE_NETWORKS": "true",  # local upstreams listen on loopback
        "WORKSPACE_METRICS_PORT": str(metrics_port),
    }
    if namespace:
        env.update(WORKSPACE_NAMESPACES=namespace, WORKSPACE_LEASE_NAMESPACE=namespace)
    env.update(overrides or {})
    return env


@dataclass
class OperatorProcess:
    root: Path
    log_path: Path
    metrics_port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "workspace_operator"])
    start_seconds: float = 0.0

    def start(self, timeout: float = 60) -> Self:
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.command, *self.extra_args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            wait_for(
                self._ready,
                timeout=timeout,
                interval=0.05,
                swallow=False,
                message=f"operator ready (log: {self.log_path})",
            )
        except BaseException:
            self.stop(grace=2.0)  # never leave it running behind a failed start
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited {self.proc.returncode}: {self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self, sig: int = signal.SIGKILL, grace: float = 30.0) -> None:
        """Signal its process group (it leads it); SIGKILL if still alive after `grace` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, grace: float = 30.0) -> None:
        self.kill(signal.SIGTERM, grace)
