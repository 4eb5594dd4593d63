"""Shared helpers and fixtures for the git engine tests (tests/test_git_*.py).

A pytest plugin (tests/conftest.py): its fixtures are there for every test;
import only the helpers. Nothing here knows Kubernetes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testsupport.gitenv import run_git as run_git
from testsupport.upstreams import GitDaemon, StandardRepo, make_standard_repo
from workspace_operator.git import CheckoutRequest, CheckoutResult, Engine, GitSettings, Revision
from workspace_operator.git.layout import ProjectLayout

SUBPROCESS_TIMEOUT = 60

ALL_SCHEMES = frozenset({"git", "http", "https", "ssh", "file"})
NS, PROJECT, NAME = "team-a", "proj", "ws"

# Files (path -> content) of every StandardRepo commit, as make_standard_repo writes them.
_C1 = {"README.md": "# demo\n", "libs/util.py": "def util():\n    return 1\n"}
_C2 = {**_C1, "services/api/app.py": "print('api')\n"}
_C3 = {**_C2, "README.md": "# demo\n\nv1.1\n", "services/api/app.py": "print('api v1.1')\n"}


def expected_files(repo: StandardRepo, sha: str) -> dict[str, str]:
    table = {
        repo.main_commits[0]: _C1,
        repo.main_commits[1]: _C2,
        repo.main_commits[2]: _C3,
        repo.feature: {**_C3, "services/api/feature.py": "FEATURE = True\n"},
        repo.pull_42: {**_C2, "libs/pr.py": "PR = 42\n"},
        repo.dangling: {**_C3, "libs/dangling.py": "GONE = True\n"},
    }
    return table[sha]


# -- upstreams -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def standard_repo_template(tmp_path_factory: pytest.TempPathFactory) -> StandardRepo:
    base = tmp_path_factory.mktemp("standard-repo")
    return make_standard_repo(base / "upstream-src", served_dir=base / "served")


@pytest.fixture
def upstream_repo(standard_repo_template: StandardRepo, tmp_path: Path) -> StandardRepo:
    """Overrides upstreams.upstream_repo with an identical repo (same SHAs, same places):
    copying the session's template costs milliseconds, building it ~0.3 s per test."""
    template = standard_repo_template
    assert template.served_dir is not None
    src, served = tmp_path / "upstream-src", tmp_path / "served"
    shutil.copytree(template.src, src, symlinks=True)
    shutil.copytree(template.served_dir, served, symlinks=True)
    repo = dataclasses.replace(template, src=src, served_dir=served)
    run_git("config", "remote.origin.url", str(src), cwd=repo.bare)  # as publish() left it
    return repo


@pytest.fixture(scope="session")
def ro_daemon(standard_repo_template: StandardRepo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitDaemon]:
    """One git daemon for the session, serving the template: only for tests that never
    change, stop or count the upstream (they get ro_repo instead of upstream_repo)."""
    assert standard_repo_template.served_dir is not None
    with GitDaemon(standard_repo_template.served_dir, workdir=tmp_path_factory.mktemp("ro-daemon")) as daemon:
        yield daemon


@pytest.fixture
def ro_repo(standard_repo_template: StandardRepo, ro_daemon: GitDaemon) -> StandardRepo:
    return standard_repo_template


# -- the engine ------------------------------------------------------------------


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    root = tmp_path / "volume"
    root.mkdir()
    return root


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    path = tmp_path / "scratch"
    path.mkdir()
    return path


def make_settings(scratch: Path, **overrides: object) -> GitSettings:
    # Upstreams are on loopback, and file:// ones anywhere below pytest's base temp
    # directory (this test's and the session templates'); both must be allowed explicitly.
    values: dict[str, object] = {
        "allowed_schemes": ALL_SCHEMES,
        "scratch_dir": scratch,
        "timeout_seconds": 60.0,
        "allow_private_networks": True,
        "file_roots": (scratch.parent.parent,),
    }
    values.update(overrides)
    return GitSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def engine(volume: Path, scratch: Path) -> Engine:
    return Engine(volume, make_settings(scratch))


def request(
    url: str,
    revision: Revision = Revision(),
    *,
    name: str = NAME,
    project: str = PROJECT,
    namespace: str = NS,
    **extra: object,
) -> CheckoutRequest:
    return CheckoutRequest(namespace=namespace, project=project, name=name, repository=url, revision=revision, **extra)  # type: ignore[arg-type]


async def checkout(engine: Engine, req: CheckoutRequest) -> CheckoutResult:
    return await engine.checkout(engine.validate(req))


async def materialize(engine: Engine, req: CheckoutRequest) -> CheckoutResult:
    """As the operator does it: a worktree, or for a cache-only request the pin."""
    valid = engine.validate(req)
    return await (engine.pin(valid) if req.cache_only else engine.checkout(valid))


def layout(volume: Path, project: str = PROJECT, namespace: str = NS) -> ProjectLayout:
    return ProjectLayout(volume, namespace, project)


def worktree_path(volume: Path, result: CheckoutResult) -> Path:
    """Where a worktree checkout landed (cache-only checkouts have none)."""
    assert result.path is not None, "a cache-only checkout has no worktree"
    return volume / result.path


# -- inspecting the volume -----------------------------------------------------------


def tree_files(path: Path) -> dict[str, str]:
    """Every regular file below path (except .git) -> text content."""
    out: dict[str, str] = {}
    for item in sorted(path.rglob("*")):
        rel = item.relative_to(path)
        if rel.parts[0] == ".git" or not item.is_file():
            continue
        out[rel.as_posix()] = item.read_text()
    return out


def snapshot(path: Path, skip: Callable[[Path], bool] = lambda _: False) -> dict[str, tuple[object, ...]]:
    """Every entry below path -> (kind, size, mtime_ns, inode, content digest): any write shows."""
    state: dict[str, tuple[object, ...]] = {}
    if not path.exists():
        return state
    for dirpath, dirnames, filenames in os.walk(path):
        base = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not skip(base / d)]
        for entry in [*dirnames, *filenames]:
            item = base / entry
            if skip(item):
                continue
            st = item.lstat()
            digest = ""
            if item.is_symlink():
                digest = os.readlink(item)
            elif item.is_file():
                digest = hashlib.sha256(item.read_bytes()).hexdigest()
            kind = "l" if item.is_symlink() else ("d" if item.is_dir() else "f")
            mtime = st.st_mtime_ns if kind != "d" else 0  # dir mtimes move on any child change
            state[item.relative_to(path).as_posix()] = (
                kind,
                st.st_size if kind == "f" else 0,
                mtime,
                st.st_ino,
                digest,
            )
    return state


def lock_files(root: Path) -> list[Path]:
    """Lock files anywhere below root, except inside debris (.staging-*, .quarantine-*): a
    killed cache creation may leave its staging dir with a lock inside, for GC to delete."""
    return [
        p
        for p in root.rglob("*.lock")
        if not any(part.startswith((".staging-", ".quarantine-")) for part in p.relative_to(root).parts)
    ]


def worktree_entries(cache: Path) -> list[dict[str, str]]:
    """`git worktree list --porcelain`, one dict per worktree (the bare cache itself excluded)."""
    text = run_git("worktree", "list", "--porcelain", cwd=cache).stdout
    entries: list[dict[str, str]] = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, _, value = line.partition(" ")
            fields[key] = value
        if "bare" not in fields:
            entries.append(fields)
    return entries


def assert_cache_consistent(project_layout: ProjectLayout, url: str) -> None:
    """The invariants every crash and repair must restore."""
    cache = project_layout.cache_dir
    fsck = run_git("fsck", "--no-progress", "--no-dangling", "--strict", cwd=cache, check=False)
    assert fsck.returncode == 0, f"git fsck failed:\n{fsck.stdout}\n{fsck.stderr}"
    assert run_git("config", "--get", "remote.origin.url", cwd=cache).stdout.strip() == url
    assert run_git("rev-parse", "--is-bare-repository", cwd=cache).stdout.strip() == "true"
    for entry in worktree_entries(cache):
        assert Path(entry["worktree"]).is_dir(), f"worktree metadata for a missing dir: {entry}"
        assert "prunable" not in entry and "locked" not in entry, entry
    metadata = cache / "worktrees"
    if metadata.is_dir():
        for item in metadata.iterdir():
            gitdir = Path((item / "gitdir").read_text().strip())
            assert gitdir.is_file(), f"leftover worktree metadata {item.name} -> {gitdir}"
    assert lock_files(project_layout.root) == []
    assert not (cache / "workspace-operator.fetching").exists()


def assert_worktree_at(project_layout: ProjectLayout, name: str, commit: str) -> None:
    """The worktree is a clean checkout of commit, attached to the real cache (not a staging copy)."""
    path = project_layout.worktree_dir(name)
    assert run_git("rev-parse", "HEAD", cwd=path).stdout.strip() == commit
    common = run_git("rev-parse", "--path-format=absolute", "--git-common-dir", cwd=path).stdout.strip()
    assert Path(common).resolve() == project_layout.cache_dir.resolve()
    status = run_git("status", "--porcelain", "--untracked-files=all", "--ignored", cwd=path).stdout
    assert status == "", f"worktree {name} differs from {commit}:\n{status[:2000]}"
    assert (project_layout.ready_record(name)).is_file()


def assert_materialized(
    volume: Path, repo: StandardRepo, result: CheckoutResult, url: str, sha: str, *, name: str = NAME
) -> None:
    """The checkout of `sha` is complete: exactly its files, a clean worktree on the real cache,
    and a consistent cache."""
    assert result.commit == sha
    assert tree_files(worktree_path(volume, result)) == expected_files(repo, sha)
    assert_worktree_at(layout(volume), name, sha)
    assert_cache_consistent(layout(volume), url)


# -- processes ---------------------------------------------------------------------


def processes_under(root: Path) -> dict[int, str]:
    """pid -> command line of every process whose cwd is at or below root.

    Every git the engine starts runs in the project, cache or worktree dir (and
    its children inherit that cwd), so this finds exactly the engine's processes.
    """
    resolved = str(root.resolve())
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited meanwhile, or not ours to inspect
        if cwd == resolved or cwd.startswith(resolved + "/"):
            found[int(entry)] = cmdline.strip()
    return found


def kill_processes_under(root: Path, deadline_s: float = 10.0) -> list[str]:
    """SIGKILL (by pid) every process below root until none is left; returns what was killed."""
    killed: list[str] = []
    deadline = time.monotonic() + deadline_s
    quiet_rounds = 0
    while quiet_rounds < 2:  # two empty scans in a row: nothing was mid-fork
        procs = processes_under(root)
        quiet_rounds = 0 if procs else quiet_rounds + 1
        for pid, cmd in procs.items():
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(cmd)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise AssertionError(f"processes under {root} survive SIGKILL: {processes_under(root)}")
    return killed


async def wait_no_processes(root: Path, deadline_s: float = 10.0) -> None:
    """Poll (deadline-bounded) until no process runs below root; zombies being reaped count as gone."""
    deadline = time.monotonic() + deadline_s
    while True:
        alive = {pid: cmd for pid, cmd in processes_under(root).items() if _state(pid) not in ("Z", "X", None)}
        if not alive:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes still running under {root}: {alive}")
        await asyncio.sleep(0.02)  # poll interval, not synchronisation


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


@pytest.fixture
def no_leftover_processes(volume: Path) -> Iterator[None]:
    """Use in tests: fails the test if any engine process outlives it."""
    yield
    leftovers = processes_under(volume)
    if leftovers:
        kill_processes_under(volume)
        raise AssertionError(f"engine processes outlived the test: {leftovers}")
