"""Cache-only mode and the job-side command without a cluster: pins on disk, GC decisions,
`wait`'s verdicts, the Workspace `create` builds, and `checkout --into` from a local cache."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from upstreams import StandardRepo, git, make_standard_repo
from workspace_operator.cli.api import judge
from workspace_operator.cli.checkout import Source, checkout
from workspace_operator.cli.errors import CliError, Exit
from workspace_operator.cli.main import git_settings, main, owner_reference, parser, workspace_body
from workspace_operator.gc_plan import Kind, Policy, ProjectSnapshot, plan
from workspace_operator.git import GitSettings, pins
from workspace_operator.spec import checkout_request

NOW = 1_000_000_000.0
POLICY = Policy(
    orphan_grace_seconds=3600,
    cache_quiet_seconds=86400,
    cache_unused_seconds=30 * 86400,
    high_watermark=0.85,
    low_watermark=0.70,
)


CACHE_PATH = PurePosixPath("team-a/proj/.cache")


def bare_cache(volume: Path, source: Path, url: str) -> Path:
    """A cache at volume/CACHE_PATH as the operator leaves one: bare, origin set, source's branches and tags."""
    bare = volume / CACHE_PATH
    git(volume.parent, "init", "-q", "--bare", str(bare))
    git(bare, "config", "remote.origin.url", url)
    git(bare, "fetch", "-q", str(source), "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*")
    return bare


@pytest.fixture
def cache(tmp_path: Path) -> tuple[Path, StandardRepo]:
    """A bare cache holding the standard repository's main, feature branch and tags."""
    repo = make_standard_repo(tmp_path / "upstream")
    return bare_cache(tmp_path / "volume", repo.src, "https://git.example.com/r.git"), repo


# -- pins ------------------------------------------------------------------------------------


def test_pins_read_loose_and_packed_and_ignore_what_is_not_a_pin(cache: tuple[Path, StandardRepo]) -> None:
    bare, repo = cache
    git(bare, "update-ref", "refs/workspaces/loose", repo.main)
    git(bare, "update-ref", "refs/workspaces/packed", repo.old)
    git(bare, "pack-refs", "--all", "--prune")
    git(bare, "update-ref", "refs/workspaces/loose", repo.main)
    (bare / "refs" / "workspaces").mkdir(exist_ok=True)
    (bare / "refs" / "workspaces" / "Not_A_Label").write_text(repo.main + "\n")
    (bare / "refs" / "workspaces" / "link").symlink_to(bare / "refs" / "workspaces" / "loose")
    assert pins.names(bare) == {"loose", "packed"}
    assert pins.read(bare, "loose") == repo.main and pins.read(bare, "packed") == repo.old
    assert pins.read(bare, "link") is None and pins.read(bare, "absent") is None
    assert pins.names(bare / "no-such-cache") == frozenset()


def test_gc_removes_pins_without_a_workspace_before_packing() -> None:
    snapshot = ProjectSnapshot(
        "ns", "p", has_cache=True, last_used=NOW, last_fetch=NOW, last_gc=None, pins=frozenset({"live", "dead"})
    )
    actions = plan([snapshot], {("ns", "p", "live")}, now=NOW, policy=POLICY)
    assert [(a.kind, a.target) for a in actions if a.kind is Kind.UNPIN] == [(Kind.UNPIN, "dead")]
    quiet = plan([snapshot], {("ns", "p", "live")}, now=NOW + 2 * 86400, policy=POLICY)
    assert [a.kind for a in quiet] == [Kind.UNPIN, Kind.GC_CACHE]


def test_spec_mode_and_tags() -> None:
    spec: dict[str, Any] = {"project": "p", "repository": "https://h/r.git"}
    assert not checkout_request("ns", "w", spec).cache_only
    request = checkout_request("ns", "w", {**spec, "mode": "CacheOnly", "tags": True})
    assert request.cache_only and request.tags
    with pytest.raises(Exception, match=r"spec\.mode must be one of Worktree, CacheOnly"):
        checkout_request("ns", "w", {**spec, "mode": "Clone"})


# -- wait's verdicts -------------------------------------------------------------------------


def obj(status: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "status": status}


def test_judge_ready_failed_stalled_and_pending() -> None:
    ready = {"type": "Ready", "status": "True", "reason": "Materialized", "message": "ok"}
    assert judge(obj({"phase": "Ready", "commit": "a" * 40, "observedGeneration": 1, "conditions": [ready]})).ready
    failed = judge(
        obj(
            {
                "phase": "Failed",
                "observedGeneration": 1,
                "conditions": [{"type": "Ready", "status": "False", "reason": "RefNotFound", "message": "no branch x"}],
            }
        )
    )
    assert failed.failed and failed.reason == "RefNotFound" and "no branch x" in failed.message
    stalled = judge(
        obj(
            {
                "phase": "Pending",
                "conditions": [{"type": "Stalled", "status": "True", "reason": "AuthFailed", "message": "denied"}],
            }
        )
    )
    assert stalled.failed and stalled.reason == "AuthFailed"
    pending = judge(
        obj(
            {
                "phase": "Pending",
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "UpstreamUnavailable", "message": "retrying"}
                ],
            }
        )
    )
    assert not pending.ready and not pending.failed
    assert not judge(obj({})).ready
    # A verdict about an older generation is no verdict.
    assert not judge(obj({"phase": "Failed", "observedGeneration": 1}, generation=2)).failed


# -- create --------------------------------------------------------------------------------


def create_args(*argv: str) -> argparse.Namespace:
    return parser().parse_args(["create", "--project", "p", "--repository", "https://h/r.git", *argv])


def test_create_builds_the_workspace_asked_for() -> None:
    body = workspace_body(
        create_args(
            "--generate-name",
            "gh-",
            "--branch",
            "main",
            "--commit",
            "a" * 40,
            "--sparse",
            "src",
            "--sparse",
            "docs",
            "--submodules",
            "--tags",
            "--ttl",
            "0",
            "--owner",
            "PipelineRun/build-1/0f0e",
            "--credentials",
            "git-creds",
        ),
        "ci",
    )
    assert body["metadata"] == {
        "namespace": "ci",
        "generateName": "gh-",
        "ownerReferences": [{"apiVersion": "tekton.dev/v1", "kind": "PipelineRun", "name": "build-1", "uid": "0f0e"}],
    }
    assert body["spec"] == {
        "project": "p",
        "repository": "https://h/r.git",
        "mode": "CacheOnly",
        "ref": {"branch": "main", "commit": "a" * 40},
        "sparse": ["src", "docs"],
        "submodules": True,
        "tags": True,
        "ttlSecondsAfterReady": 0,
        "credentials": {"secretName": "git-creds"},
    }
    minimal = workspace_body(create_args("--name", "w", "--mode", "Worktree"), "ci")
    assert minimal["spec"] == {"project": "p", "repository": "https://h/r.git", "mode": "Worktree"}
    with pytest.raises(CliError) as error:
        owner_reference("Widget/x/1", None)
    assert error.value.code is Exit.USAGE
    with pytest.raises(SystemExit):
        parser().parse_args(
            ["create", "--project", "p", "--repository", "r", "--name", "a", "--branch", "b", "--tag", "t"]
        )


def test_the_jobs_url_policy_comes_from_the_operators_variables(tmp_path: Path) -> None:
    settings = git_settings(
        {
            "WORKSPACE_ALLOWED_SCHEMES": "https, git,ext",
            "WORKSPACE_ALLOWED_HOSTS": "Git.Example.com.,*.corp.example",
            "WORKSPACE_ALLOW_PRIVATE_NETWORKS": "true",
            "WORKSPACE_FILE_ROOTS": str(tmp_path),
        }
    )
    assert settings.allowed_schemes == {"https", "git"}  # never a transport the engine does not know
    assert settings.allowed_hosts == ("git.example.com", "*.corp.example")
    assert settings.allow_private_networks and settings.file_roots == (tmp_path.resolve(),)
    assert settings.safe_directories == ("*",)  # until a checked cache narrows it to itself
    strict = git_settings({})
    assert strict.allowed_schemes == {"https", "ssh"} and not strict.allow_private_networks
    assert strict.allowed_hosts == () and strict.file_roots == ()
    for bad in (
        {"WORKSPACE_ALLOW_PRIVATE_NETWORKS": "maybe"},
        {"WORKSPACE_FILE_ROOTS": "relative/dir"},
        {"WORKSPACE_ALLOWED_HOSTS": "no spaces.example"},
    ):
        with pytest.raises(CliError) as caught:
            git_settings(bad)
        assert caught.value.code is Exit.USAGE


def test_kubectl_finds_the_plugin() -> None:
    kubectl = Path(sys.executable).parent / "kubectl"
    result = subprocess.run(
        [str(kubectl), "workspace", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": f"{kubectl.parent}:/usr/bin:/bin", "HOME": "/nonexistent"},
    )
    assert result.returncode == 0, result.stderr
    assert "checkout" in result.stdout and "wait" in result.stdout


# -- checkout --into ------------------------------------------------------------------------


def test_sparse_checkout_borrows_objects_and_copies_the_asked_tag(
    cache: tuple[Path, StandardRepo], tmp_path: Path
) -> None:
    _bare, repo = cache
    source = Source(
        repository="https://git.example.com/r.git",
        commit=repo.v1_0,
        cache_root=tmp_path / "volume",
        cache_path=CACHE_PATH,
        sub_path=PurePosixPath("services/api"),
        sparse=(PurePosixPath("services"),),
        tag="v1.0",
    )
    into = tmp_path / "job"
    workdir = asyncio.run(checkout(source, into, clean=False, settings=GitSettings()))
    assert workdir == into / "services" / "api" and (workdir / "app.py").is_file()
    assert not (into / "libs").exists() and (into / "README.md").is_file()  # cone mode keeps root files
    assert git(into, "describe", "--tags") == "v1.0"
    assert git(into, "tag", "--list") == "v1.0"  # only the Workspace's own tag without spec.tags
    assert git(into, "count-objects", "-v").splitlines()[0] == "count: 0"
    assert not list((into / ".git" / "objects" / "pack").glob("*.pack"))
    assert not (into / ".git" / "hooks").exists()


def test_submodules_are_checked_out_from_their_own_upstream(tmp_path: Path) -> None:
    library = make_standard_repo(tmp_path / "library")
    superproject = make_standard_repo(tmp_path / "super")
    git(
        superproject.src,
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        f"file://{library.src}",
        "vendor/library",
    )
    git(superproject.src, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "vendor")
    head = git(superproject.src, "rev-parse", "HEAD")
    url = "https://git.example.com/super.git"
    bare_cache(tmp_path / "volume", superproject.src, url)
    source = Source(url, head, tmp_path / "volume", CACHE_PATH, submodules=True)
    # file:// submodules need a file root, as in the operator (and never lie on the volume).
    files = GitSettings(allowed_schemes=frozenset({"file"}), file_roots=(tmp_path,))
    into = tmp_path / "job"
    asyncio.run(checkout(source, into, clean=False, settings=files))
    assert (into / "vendor" / "library" / "README.md").is_file()
    assert git(into / "vendor" / "library", "rev-parse", "HEAD") == library.main
    (tmp_path / "mounted").mkdir()  # DIR may be a mount point the job made: it stays, emptied
    for settings, reason in (
        (GitSettings(), "TransportNotAllowed"),  # transports outside the allow-list stay closed
        (GitSettings(allowed_schemes=frozenset({"file"})), "HostNotAllowed"),  # no file roots
    ):
        for into in (tmp_path / "made" / "job2", tmp_path / "mounted"):
            with pytest.raises(CliError) as refused:
                asyncio.run(checkout(source, into, clean=True, settings=settings))
            assert refused.value.code is Exit.FAILED and f"submodules refused ({reason})" in refused.value.message
        # Nothing of the checkout is left behind: what the command made goes whole.
        assert not (tmp_path / "made").exists()
        assert list((tmp_path / "mounted").iterdir()) == []


@pytest.mark.parametrize(
    ("sub_path", "message"),
    [("nope", "is not a directory"), ("README.md", "is not a directory"), ("up/etc", "goes through a symlink")],
)
def test_a_subpath_the_commit_lacks_fails_before_dir_is_touched(tmp_path: Path, sub_path: str, message: str) -> None:
    repo = make_standard_repo(tmp_path / "upstream")
    (repo.src / "up").symlink_to("../../..")
    git(repo.src, "add", "up")
    git(repo.src, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "a link")
    head = git(repo.src, "rev-parse", "HEAD")
    bare_cache(tmp_path / "volume", repo.src, "https://git.example.com/r.git")
    source = Source("https://git.example.com/r.git", head, tmp_path / "volume", CACHE_PATH, PurePosixPath(sub_path))
    into = tmp_path / "job" / "src"
    with pytest.raises(CliError) as refused:
        asyncio.run(checkout(source, into, clean=False, settings=GitSettings()))
    assert refused.value.code is Exit.FAILED and message in refused.value.message
    assert not (tmp_path / "job").exists()


def test_into_a_file_is_a_usage_error_not_a_crash(
    cache: tuple[Path, StandardRepo], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _bare, repo = cache
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    for into in (target, target / "src"):
        # Refused before any API call (no kubeconfig is needed to find out) or wait.
        assert main(["--kubeconfig", str(tmp_path / "none"), "checkout", "w", "--into", str(into)]) == Exit.USAGE
        assert f"{target} exists and is not a directory" in capsys.readouterr().err
        source = Source("https://git.example.com/r.git", repo.main, tmp_path / "volume", CACHE_PATH)
        with pytest.raises(CliError) as refused:
            asyncio.run(checkout(source, into, clean=True, settings=GitSettings()))
        assert refused.value.code is Exit.USAGE
    assert target.read_text() == "mine\n"
