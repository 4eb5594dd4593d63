#!/usr/bin/env python3
"""`make dev`: the whole product on this machine, in one command.

1. the local control plane (started, or reused if `make cluster-up` already runs it);
2. the Workspace CRD;
3. a demo upstream repository, generated locally and served by `git daemon`
   on 127.0.0.1:9418 (examples/workspace.yaml points there: works offline);
4. the operator, with ./.workspaces as the volume root;
5. examples/workspace.yaml applied and shown Ready.

Then the operator stays in the foreground; Ctrl-C stops everything this command
started. With WORKSPACE_DEV_ONESHOT=1 it exits 0 once the example is Ready
(non-zero on failure), stopping what it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import devcluster

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # testsupport/
from testsupport.gitenv import git  # noqa: E402
from testsupport.net import free_port, port_free  # noqa: E402
from testsupport.upstreams import commit, init_upstream  # noqa: E402
from testsupport.wait import wait_for  # noqa: E402

KUBECTL = str(Path(sys.executable).parent / "kubectl")
DAEMON_PORT = 9418
STATE = devcluster.DEFAULT_STATE
VOLUME = REPO / ".workspaces"


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def kubectl(*args: str, capture: bool = False) -> str:
    result = subprocess.run(
        [KUBECTL, "--kubeconfig", str(STATE / "kubeconfig"), *args],
        check=True,
        text=True,
        timeout=120,
        capture_output=capture,
    )
    return str(result.stdout or "")


def demo_repository(served: Path) -> Path:
    """A small repository with an app/ directory (the example's subPath)."""
    bare = served / "demo.git"
    if bare.exists():
        return bare
    work = init_upstream(served / "demo-src")
    commit(
        work,
        {"app/main.py": 'print("hello from a workspace")\n', "README.md": "# demo\nServed locally by `make dev`.\n"},
        "demo",
    )
    git(served, "clone", "-q", "--bare", str(work), str(bare))
    return bare


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def main() -> int:
    oneshot = os.environ.get("WORKSPACE_DEV_ONESHOT") == "1"
    daemon: subprocess.Popen[bytes] | None = None
    operator: subprocess.Popen[bytes] | None = None
    already_running = devcluster._load(STATE) is not None
    cluster = None
    logs = STATE / "logs"
    try:
        say("starting the local control plane (first run builds it: several minutes)")
        cluster = devcluster.start(STATE)
        logs.mkdir(parents=True, exist_ok=True)
        say(f"control plane at {cluster.server}")
        kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "workspace.yaml"))
        kubectl("wait", "--for=condition=Established", "crd/workspaces.crafting.dev", "--timeout=60s")

        served = STATE / "upstream"
        served.mkdir(parents=True, exist_ok=True)
        demo_repository(served)
        if not port_free(DAEMON_PORT):
            raise RuntimeError(f"port {DAEMON_PORT} is busy: examples/workspace.yaml needs git daemon there")
        with open(logs / "git-daemon.log", "ab") as log:
            daemon = subprocess.Popen(
                [
                    "git",
                    "daemon",
                    "--reuseaddr",
                    "--export-all",
                    f"--base-path={served}",
                    "--listen=127.0.0.1",
                    f"--port={DAEMON_PORT}",
                    str(served),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: not port_free(DAEMON_PORT), timeout=10, message="git daemon")
        say(f"demo repository served at git://127.0.0.1:{DAEMON_PORT}/demo.git")

        metrics_port = int(os.environ.get("WORKSPACE_METRICS_PORT", "0")) or free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(STATE / "kubeconfig"),
            "WORKSPACE_ROOT": str(VOLUME),
            "WORKSPACE_ALLOWED_SCHEMES": os.environ.get("WORKSPACE_ALLOWED_SCHEMES", "https,ssh,git"),
            # The demo upstream is a git daemon on loopback, which production settings refuse.
            "WORKSPACE_ALLOWED_HOSTS": os.environ.get("WORKSPACE_ALLOWED_HOSTS", "127.0.0.1"),
            "WORKSPACE_LEASE_NAMESPACE": os.environ.get("WORKSPACE_LEASE_NAMESPACE", "default"),
            "WORKSPACE_METRICS_PORT": str(metrics_port),
        }
        operator_log = logs / "operator.log"
        out = open(operator_log, "ab") if oneshot else None  # noqa: SIM115 - the operator's stdout until it stops
        operator = subprocess.Popen(
            [sys.executable, "-m", "workspace_operator"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        say(f"operator running (pid {operator.pid}), volume root {VOLUME}, metrics on :{metrics_port}")

        kubectl("apply", "-f", str(REPO / "examples" / "workspace.yaml"))
        say("waiting for workspace/example to become Ready")
        kubectl("wait", "--for=condition=Ready", "workspace/example", "-n", "default", "--timeout=120s")
        kubectl("get", "workspaces", "-A", "-o", "wide")
        status = json.loads(kubectl("get", "workspace/example", "-n", "default", "-o", "json", capture=True))["status"]
        say(f"Ready: commit {status['commit']} at {VOLUME / status['workdir']}")
        print(
            f"""
Point kubectl at the local cluster:
    export KUBECONFIG={STATE / "kubeconfig"}
    {KUBECTL} get ws -A
    {KUBECTL} describe ws example
Metrics: curl -s http://127.0.0.1:{metrics_port}/metrics | grep ^workspace_
""",
            flush=True,
        )
        if oneshot:
            return 0
        say("operator in the foreground; Ctrl-C stops everything make dev started")
        operator.wait()
        return operator.returncode or 0
    except KeyboardInterrupt:
        return 0
    except (subprocess.CalledProcessError, RuntimeError, TimeoutError) as error:
        print(f"make dev failed: {error}", file=sys.stderr)
        if operator is not None and oneshot:
            print((logs / "operator.log").read_text(errors="replace")[-4000:], file=sys.stderr)
        return 1
    finally:
        stop(operator)
        stop(daemon)
        if cluster is not None and not already_running:
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
