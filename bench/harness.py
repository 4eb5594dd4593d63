"""What every scenario stands on: the real control plane, the operator as it ships (a
subprocess), a smart-HTTP upstream on loopback, a client-side watch that timestamps
Ready, and raw git for the baselines.

Every process started here is stopped by its pid (or its own process group).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes import watch
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi, V1Namespace, V1ObjectMeta
from kubernetes.client.exceptions import ApiException

from testsupport.gitenv import run_git
from testsupport.net import free_port
from testsupport.operator import OperatorProcess, operator_env
from testsupport.upstreams import SmartHTTP

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "hack") not in sys.path:
    sys.path.insert(0, str(REPO / "hack"))
import devcluster  # noqa: E402  (hack/ is a directory of scripts, not a package)

GROUP, VERSION, PLURAL = "crafting.dev", "v1", "workspaces"
KUBECTL = str(Path(sys.executable).parent / "kubectl")
FINALIZER = "crafting.dev/worktree-cleanup"


def now() -> float:
    return time.monotonic()


# -- machine --------------------------------------------------------------------------


def _first_line(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, str]:
    mem_kb = 0
    cpu = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    disk = "unknown"
    try:
        stat = os.statvfs(REPO)
        disk = f"{stat.f_bavail * stat.f_frsize / 2**30:.0f} GiB free"
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem_kb / 2**20:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git": _first_line(["git", "--version"]).removeprefix("git version "),
        "kubernetes": devcluster._versions().get("KUBERNETES_VERSION", "unknown"),
        "kopf": _pkg_version("kopf"),
        "disk": disk,
        "operator": operator_revision(),
    }


def operator_revision() -> str:
    """The commit, and whether operator/ differs from it: operator subprocesses import the
    working tree, so a change made while a run is in progress would split the run."""
    import hashlib

    def run(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    head = run("rev-parse", "--short=12", "HEAD") or "unknown"
    diff = run("diff", "HEAD", "--", "operator/") + run("ls-files", "--others", "--exclude-standard", "operator/")
    if not diff:
        return f"{head} (operator/ as committed)"
    return f"{head} + uncommitted changes in operator/ (diff {hashlib.sha256(diff.encode()).hexdigest()[:10]})"


def _pkg_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


# -- raw git (the baselines) -------------------------------------------------------------


def git(*args: str, cwd: Path | None = None, timeout: float = 1800) -> str:
    return run_git(*args, cwd=cwd, timeout=timeout).stdout.strip()


def timed_git(*commands: list[str], cwd: Path | None = None) -> float:
    """Wall time of running the git commands one after another (as a shell script would)."""
    started = now()
    for args in commands:
        git(*args, cwd=cwd)
    return now() - started


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


# -- control plane ------------------------------------------------------------------------


class ControlPlane:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.cluster: devcluster.Cluster | None = None
        self.client: ApiClient | None = None

    def start(self) -> ControlPlane:
        started = now()
        self.cluster = devcluster.start(self.state_dir, controllers=False, no_fsync=True)
        self.start_seconds = now() - started
        self.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "workspace.yaml"))
        self.kubectl("wait", "--for=condition=Established", "crd/workspaces.crafting.dev", "--timeout=60s")
        self.client = self.new_client()
        return self

    @property
    def kubeconfig(self) -> Path:
        assert self.cluster is not None
        return Path(self.cluster.kubeconfig)

    def new_client(self, pool: int = 16) -> ApiClient:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig), client_configuration=configuration
        )
        configuration.connection_pool_maxsize = pool
        return ApiClient(configuration)

    def kubectl(self, *args: str) -> str:
        proc = subprocess.run(
            [KUBECTL, "--kubeconfig", str(self.kubeconfig), *args], capture_output=True, text=True, timeout=120
        )
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr}")
        return proc.stdout

    def namespace(self, name: str) -> str:
        assert self.client is not None
        CoreV1Api(self.client).create_namespace(V1Namespace(metadata=V1ObjectMeta(name=name)))
        return name

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()  # type: ignore[no-untyped-call]
        if self.cluster is not None:
            self.cluster.stop()


# -- the operator -------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            kids.append(int(entry.name))
    return kids


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Operator(OperatorProcess):
    """The operator as it ships (testsupport.operator), plus what benchmarks read from /proc."""

    def rss_kb(self) -> dict[str, int]:
        """VmRSS / VmHWM of the operator, and VmRSS summed over its process tree."""
        tree, todo = 0, [self.pid]
        while todo:
            pid = todo.pop()
            tree += _status_kb(pid, "VmRSS")
            todo += _children(pid)
        return {"rss": _status_kb(self.pid, "VmRSS"), "hwm": _status_kb(self.pid, "VmHWM"), "tree": tree}

    def cpu_seconds(self) -> float:
        return _proc_cpu(self.pid)[0]

    def stop(self, grace: float = 5.0) -> None:
        """Nothing is measured at shutdown; kopf can take a while to drain its queues."""
        super().stop(grace)


def start_operator(
    kubeconfig: Path, root: Path, namespace: str, log_path: Path, env_overrides: Mapping[str, str] | None = None
) -> Operator:
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    env = operator_env(
        kubeconfig=kubeconfig,
        root=root,
        metrics_port=port,
        namespace=namespace,
        overrides={"WORKSPACE_IDENTITY": "bench", "TMPDIR": str(root.parent), **(env_overrides or {})},
    )
    return Operator(root, log_path, port, env).start()


# -- CPU accounting ------------------------------------------------------------------------


def _proc_cpu(pid: int) -> tuple[float, float]:
    """(own, reaped children) CPU seconds of a process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def _system_busy() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(cp: ControlPlane, operator: Operator) -> dict[str, float]:
    assert cp.cluster is not None
    api_own, api_kids = _proc_cpu(cp.cluster.apiserver_pid)
    op_own, op_kids = _proc_cpu(operator.pid)
    times = os.times()
    return {
        "at": now(),
        "system_busy": _system_busy(),
        "apiserver_etcd": api_own + api_kids,
        "operator_python": op_own,
        "operator_git": op_kids,
        "bench_client": times.user + times.system,
        "upstream_and_raw_git": times.children_user + times.children_system,
    }


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    delta = {key: after[key] - before[key] for key in before}
    delta["wall"] = delta.pop("at")
    delta["other"] = delta["system_busy"] - sum(
        delta[k] for k in ("apiserver_etcd", "operator_python", "operator_git", "bench_client", "upstream_and_raw_git")
    )
    return delta


# -- the client side: create, and watch for Ready -------------------------------------------


@dataclass
class Seen:
    at: float
    type: str
    phase: str | None
    finalized: bool  # kopf's finalizer present
    reason: str | None


class Watcher:
    """One watch on the namespace's Workspaces; timestamps every event as it arrives."""

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        self.namespace = namespace
        self.client = cp.new_client(pool=2)
        self.custom = CustomObjectsApi(self.client)
        self.events: dict[str, list[Seen]] = defaultdict(list)
        self.ready_at: dict[str, float] = {}
        self.ready_status: dict[str, dict[str, Any]] = {}
        self.failed: dict[str, str] = {}
        self.cond = threading.Condition()
        self._stopping = False
        self._watch: watch.Watch | None = None
        listing: Any = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        self._rv = str(listing["metadata"]["resourceVersion"])
        self._thread = threading.Thread(target=self._run, name=f"watch-{namespace}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            self._watch = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in self._watch.stream(  # type: ignore[no-untyped-call]
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    resource_version=self._rv,
                    timeout_seconds=600,
                ):
                    self._seen(event)
            except Exception:  # noqa: BLE001 - reconnect from the last version seen
                if self._stopping:
                    return
                time.sleep(0.1)

    def _seen(self, event: Mapping[str, Any]) -> None:
        at = now()
        kind = str(event.get("type"))
        obj = event.get("object") or {}
        if kind == "ERROR":
            raise RuntimeError(f"watch error: {obj}")
        meta = obj.get("metadata") or {}
        self._rv = str(meta.get("resourceVersion") or self._rv)
        name = str(meta.get("name"))
        status = obj.get("status") or {}
        phase = status.get("phase")
        reason = next((c.get("reason") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        with self.cond:
            self.events[name].append(Seen(at, kind, phase, FINALIZER in (meta.get("finalizers") or []), reason))
            if phase == "Ready" and name not in self.ready_at:
                self.ready_at[name] = at
                self.ready_status[name] = status
                self.cond.notify_all()
            elif phase == "Failed":
                self.failed[name] = str(status.get("message"))
                self.cond.notify_all()

    def wait_ready(self, names: Iterable[str], timeout: float) -> None:
        wanted = set(names)
        deadline = now() + timeout
        with self.cond:
            while True:
                missing = wanted - set(self.ready_at)
                failed = wanted & set(self.failed)
                if failed:
                    name = sorted(failed)[0]
                    raise RuntimeError(f"workspace {name} failed: {self.failed[name]}")
                if not missing:
                    return
                left = deadline - now()
                if left <= 0:
                    sample = sorted(missing)[:3]
                    detail = {n: [(e.phase, e.reason) for e in self.events.get(n, [])][-2:] for n in sample}
                    raise TimeoutError(f"{len(missing)} workspaces not Ready after {timeout:.0f}s, e.g. {detail}")
                self.cond.wait(min(left, 1.0))

    def stop(self) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.stop()  # type: ignore[no-untyped-call]
        self.client.close()  # type: ignore[no-untyped-call]


class Workspaces:
    """Creates Workspaces, recording the client time just before each create call."""

    def __init__(self, cp: ControlPlane, namespace: str, repository: str) -> None:
        self.namespace = namespace
        self.repository = repository
        self.client = cp.new_client(pool=16)
        self.custom = CustomObjectsApi(self.client)
        self.created_at: dict[str, float] = {}
        self.watcher = Watcher(cp, namespace)
        self.extra_spec: dict[str, Any] = {}  # e.g. {"mode": "CacheOnly"} for every create

    def create(self, name: str, project: str, ref: Mapping[str, str]) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Workspace",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"project": project, "repository": self.repository, "ref": dict(ref), **self.extra_spec},
        }
        self.created_at[name] = now()
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def create_many(self, items: Sequence[tuple[str, str, Mapping[str, str]]], threads: int = 8) -> None:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda item: self.create(*item), items))

    def materialize(self, name: str, project: str, ref: Mapping[str, str], timeout: float = 900) -> Sample:
        """Create one Workspace and wait (watch) until it is Ready; the client-side timeline."""
        self.create(name, project, ref)
        self.watcher.wait_ready([name], timeout)
        return self.sample(name)

    def latency(self, name: str) -> float:
        return self.watcher.ready_at[name] - self.created_at[name]

    def sample(self, name: str) -> Sample:
        created = self.created_at[name]
        with self.watcher.cond:
            events = list(self.watcher.events[name])
            status = dict(self.watcher.ready_status[name])
        ready = self.watcher.ready_at[name]
        first_finalized = next((e.at for e in events if e.finalized), ready)
        materializing = next((e.at for e in events if e.phase == "Materializing"), ready)
        return Sample(
            name=name,
            client_seconds=ready - created,
            timings={k: float(v) for k, v in (status.get("timings") or {}).items()},
            cache=dict(status.get("cache") or {}),
            commit=str(status.get("commit")),
            path=str(status.get("path")),
            to_finalizer=first_finalized - created,
            to_materializing=materializing - created,
            events_before_ready=sum(1 for e in events if e.at <= ready),
        )

    def writes_per_workspace(self) -> dict[str, int]:
        """Watch events (each one a write to the object) per Workspace, so far."""
        with self.watcher.cond:
            return {name: len(events) for name, events in self.watcher.events.items()}

    def get_roundtrip(self, name: str, reps: int = 20) -> float:
        """Median time of one GET of a Workspace: the API round trip from this machine."""
        times = []
        for _ in range(reps):
            started = now()
            self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
            times.append(now() - started)
        return sorted(times)[len(times) // 2]

    def close(self) -> None:
        self.watcher.stop()
        self.client.close()  # type: ignore[no-untyped-call]


@dataclass
class Sample:
    """One Workspace's created→Ready, from the client, and what the operator reported."""

    name: str
    client_seconds: float
    timings: dict[str, float]
    cache: dict[str, Any]
    commit: str
    path: str
    to_finalizer: float  # create → kopf's finalizer seen on the watch
    to_materializing: float  # create → phase Materializing seen
    events_before_ready: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# -- the upstream ----------------------------------------------------------------------------


class Upstream:
    """A directory of bare repositories served by the real `git http-backend` on loopback."""

    def __init__(self, served: Path) -> None:
        self.served = served
        served.mkdir(parents=True, exist_ok=True)
        self.http = SmartHTTP(served)

    def start(self) -> Upstream:
        self.http.start()
        return self

    def url(self, name: str) -> str:
        return str(self.http.url(name))

    def fetches(self, name: str | None = None) -> int:
        return int(self.http.count("git-upload-pack", name))

    def stop(self) -> None:
        self.http.stop()


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


__all__ = [
    "ApiException",
    "ControlPlane",
    "Operator",
    "Sample",
    "Upstream",
    "Watcher",
    "Workspaces",
    "dir_bytes",
    "git",
    "machine_info",
    "now",
    "start_operator",
    "timed_git",
    "write_json",
]
