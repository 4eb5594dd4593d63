"""Small fakes of the operator's runtime for the fast tier: the API server calls
(`Kube`), the project Leases (`LeaseLocks`) on a fake clock, and a real `Engine` on
tmp dirs that records whether the Lease was held around each call.

Nothing here talks to a cluster or the network; git runs on local file:// upstreams.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from testsupport.upstreams import commit, init_upstream
from workspace_operator.batching import ProjectQueues
from workspace_operator.checkouts import Checkouts
from workspace_operator.config import Config
from workspace_operator.git import CheckoutResult, Engine, GitSettings, Prepared, ValidRequest
from workspace_operator.kube import Kube
from workspace_operator.lock import LeaseLocks, LeaseLost, LockTimeout
from workspace_operator.quota import NamespaceQuota
from workspace_operator.runtime import Runtime


class FakeClock:
    """Monotonic seconds that move only when a test (or a fake) says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeKube:
    """Records status patches; serves Secrets from a dict (name -> (data, annotations)) and
    Workspaces from another ((namespace, name) -> object; status patches land there)."""

    secrets: dict[str, tuple[dict[str, bytes], dict[str, str]]] = field(default_factory=dict)
    patches: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    secret_reads: list[str] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)
    workspaces: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # as the API server has them

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.patches.append((namespace, name, dict(status)))
        if (namespace, name) in self.workspaces:
            self.workspaces[namespace, name]["status"] = dict(status)

    async def get_workspace(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.workspaces.get((namespace, name))

    async def add_finalizer(self, namespace: str, name: str, finalizer: str, meta: Any = None) -> bool:
        return (namespace, name) in self.workspaces

    async def read_secret(self, namespace: str, name: str) -> tuple[dict[str, bytes], dict[str, str]] | None:
        self.secret_reads.append(name)
        return self.secrets.get(name)

    async def namespace_uid(self, namespace: str) -> str | None:
        return f"uid-of-{namespace}"

    def forget_namespace(self, namespace: str) -> None:
        pass

    async def post_event(
        self, obj: Mapping[str, Any], *, reason: str, message: str, event_type: str = "Normal"
    ) -> None:
        self.events.append((reason, message))

    def last_status(self) -> dict[str, Any]:
        assert self.patches, "no status was written"
        return self.patches[-1][2]

    def phases(self) -> list[str]:
        return [patch["phase"] for _, _, patch in self.patches]


class FakeLocks:
    """LeaseLocks' `hold` on a fake clock. A project in `busy` is held elsewhere for that many
    seconds: a wait bound below it ends in LockTimeout at the bound, otherwise the holder
    releases in time and `hold` yields the seconds waited. A project in `lose` has its Lease
    taken away as soon as it is acquired (LeaseLost, as the renewer reports it)."""

    identity = "fake-holder"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.busy: dict[tuple[str, str], float] = {}
        self.lose: set[tuple[str, str]] = set()
        self.held: set[tuple[str, str]] = set()
        self.acquired: list[tuple[str, str]] = []

    @contextlib.asynccontextmanager
    async def hold(self, namespace: str, project: str, *, wait_seconds: float) -> AsyncIterator[float]:
        key = (namespace, project)
        busy_for = self.busy.get(key, 0.0)
        if busy_for > wait_seconds:
            self.clock.advance(wait_seconds)
            raise LockTimeout(f"waited {wait_seconds:.0f}s for lock {namespace}/{project}")
        self.clock.advance(busy_for)
        self.busy.pop(key, None)
        self.acquired.append(key)
        if key in self.lose:  # taken away at once: the renewer stops the guarded work
            raise LeaseLost(f"lost lock {namespace}/{project} while holding it")
        self.held.add(key)
        try:
            yield busy_for
        finally:
            self.held.discard(key)


class LockCheckingEngine(Engine):
    """The real engine; every exclusive step (prepare, removal) asserts that the project's Lease is held."""

    def __init__(self, root: Path, settings: GitSettings, locks: FakeLocks) -> None:
        super().__init__(root, settings)
        self.locks = locks
        self.prepares = 0  # exclusive steps run: each asks the upstream (or the coalesced answer)
        self.checkouts = 0

    async def prepare(
        self, valid: ValidRequest, *, not_before: float | None = None, hold: object | None = None
    ) -> Prepared:
        assert (valid.request.namespace, valid.request.project) in self.locks.held, "prepare without the Lease"
        self.prepares += 1
        return await super().prepare(valid, not_before=not_before, hold=hold)

    async def populate(self, prepared: Prepared) -> CheckoutResult:
        # The files are written outside the Lease (parallel checkouts); only counted here.
        self.checkouts += 1
        return await super().populate(prepared)

    async def remove(self, namespace: str, project: str, name: str) -> bool:
        assert (namespace, project) in self.locks.held, "remove without the Lease"
        return await super().remove(namespace, project, name)


@dataclass
class FakeRuntime:
    """A real `Runtime` over the fakes, plus handles on them for assertions."""

    rt: Runtime
    kube: FakeKube
    locks: FakeLocks
    engine: LockCheckingEngine
    clock: FakeClock

    @property
    def root(self) -> Path:
        return self.rt.config.root


def make_runtime(tmp_path: Path, file_roots: tuple[Path, ...] = (), **config: Any) -> FakeRuntime:
    """A runtime over fakes on tmp_path; file:// upstreams are allowed below `file_roots`."""
    root, scratch = tmp_path / "volume", tmp_path / "scratch"
    root.mkdir()
    scratch.mkdir()
    settings = {
        "lock_wait_seconds": 30.0,
        "retry_base_seconds": 2.0,
        "retry_max_seconds": 300.0,
        "default_ttl_seconds": 0,
        "allowed_schemes": frozenset({"file"}),
        **config,
    }
    cfg = Config(root=root, **settings)
    clock = FakeClock()
    kube, locks = FakeKube(), FakeLocks(clock)
    git = GitSettings(
        allowed_schemes=cfg.allowed_schemes, scratch_dir=scratch, timeout_seconds=60.0, file_roots=file_roots
    )
    engine = LockCheckingEngine(root, git, locks)
    lease_locks = cast(LeaseLocks, locks)
    rt = Runtime(
        cfg,
        engine,
        cast(Kube, kube),
        lease_locks,
        NamespaceQuota(root, cfg.max_workspaces_per_namespace),
        ProjectQueues(lease_locks, clock=clock),
        Checkouts(2),
    )
    return FakeRuntime(rt, kube, locks, engine, clock)


@dataclass(frozen=True)
class LocalUpstream:
    """A non-bare repository served by path (file://): two commits on main."""

    path: Path
    first: str
    head: str

    @property
    def url(self) -> str:
        return f"file://{self.path}"


@pytest.fixture(scope="session")
def local_upstream(tmp_path_factory: pytest.TempPathFactory) -> LocalUpstream:
    repo = init_upstream(tmp_path_factory.mktemp("local-upstream") / "repo")
    first = commit(repo, {"README.md": "# demo\n", "app/main.py": "print('v1')\n"}, "first")
    head = commit(repo, {"app/main.py": "print('v2')\n"}, "second")
    return LocalUpstream(repo, first, head)


@pytest.fixture
def fake_runtime(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> FakeRuntime:
    return make_runtime(tmp_path, file_roots=(tmp_path_factory.getbasetemp(),))
