"""Several active replicas: shares of the work, Leases where shares overlap, no double writes.

git is instrumented by a wrapper first on the operators' PATH that journals every
call (start, end, cwd, arguments); overlap is judged from that journal, not assumed.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from cluster import Scene
from workspace_operator.spec import shard_of

pytestmark = pytest.mark.cluster

WRITES = {
    "fetch",
    "init",
    "clone",
    "worktree",
    "gc",
    "sparse-checkout",
    "checkout",
    "submodule",
    "config",
    "update-ref",
    "repack",
    "pack-refs",
    "commit-graph",
}


def instrumented_git(directory: Path, journal: Path) -> Path:
    directory.mkdir()
    real = shutil.which("git")
    wrapper = directory / "git"
    # One printf of one short line per call: O_APPEND keeps concurrent lines whole.
    wrapper.write_text(f"""#!/bin/bash
start=$(date +%s.%N)
{real} "$@"
rc=$?
end=$(date +%s.%N)
printf '%s\\t%s\\t%s\\t%s\\n' "$start" "$end" "$PWD" "$*" >> {journal}
exit $rc
""")
    wrapper.chmod(0o755)
    return directory


def subcommand(args: str) -> str:
    words = args.split(" ")
    i = 0
    while i < len(words) and words[i] == "-c":
        i += 2
    return words[i] if i < len(words) else ""


def project_of(cwd: str, root: Path) -> str | None:
    """`ns/project` of a git call that can write the project's shared store (objects, refs,
    config, worktree registry): run in the project dir, the cache or a staging dir. Calls
    inside a worktree (writing its files, outside the Lease, in parallel) are not."""
    try:
        parts = Path(cwd).resolve().relative_to(root.resolve()).parts
    except ValueError:
        return None
    if len(parts) < 2 or (len(parts) > 2 and not parts[2].startswith(".")):
        return None
    return "/".join(parts[:2])


def read_journal(journal: Path, root: Path) -> list[tuple[float, float, str, str, str]]:
    calls = []
    for line in journal.read_text().splitlines():
        start, end, cwd, args = line.split("\t", 3)
        project = project_of(cwd, root)
        if project is not None:
            calls.append((float(start), float(end), project, subcommand(args), args))
    return calls


def test_replicas_share_work_without_overlapping_writes(scene: Scene, tmp_path: Path) -> None:
    journal = tmp_path / "git-journal"
    journal.touch()
    wrapper_dir = instrumented_git(tmp_path / "bin", journal)
    path = f"{wrapper_dir}:{os.environ['PATH']}"
    # Three projects in each replica's share (the share is a hash of namespace and project).
    shares: tuple[list[str], list[str]] = ([], [])
    for i in itertools.count():
        if all(len(share) == 3 for share in shares):
            break
        share = shares[shard_of(scene.namespace, f"proj{i}", 2)]
        if len(share) < 3:
            share.append(f"proj{i}")
    commits = {"main": scene.repo.main, "feature": scene.repo.feature, "v1.0": scene.repo.v1_0}
    refs = [({"branch": "main"}, commits["main"]), ({"branch": "feature/x/y"}, commits["feature"])]
    refs.append(({"tag": "v1.0"}, commits["v1.0"]))
    expected: dict[str, str] = {}

    def create(project: str) -> list[str]:
        names = []
        for i in range(10):
            ref, expected[f"{project}-w{i}"] = refs[i % 3]
            scene.workspaces.create(
                f"{project}-w{i}", {"project": project, "repository": scene.http.url("repo"), "ref": ref}
            )
            names.append(f"{project}-w{i}")
        return names

    def wait_ready(names: list[str]) -> None:
        for name in names:
            assert scene.workspaces.wait_ready(name, timeout=180)["commit"] == expected[name], name

    # Two replicas splitting the work by hash: each serves its own share.
    sharded = [
        scene.start(env={"PATH": path, "WORKSPACE_REPLICAS": "2", "WORKSPACE_REPLICA_INDEX": str(index)})
        for index in range(2)
    ]
    wait_ready([name for share in shares for name in create(share[0])])
    for op, theirs in zip(sharded, (shares[1], shares[0]), strict=True):
        assert "materialized" in op.log()
        assert not any(f"project={project} " in op.log() for project in theirs), "a replica served the other's share"
    # Then a third that (like a pod of the previous rollout) still believes it owns
    # everything: shares overlap on purpose, and caches are made under the race.
    ops = [*sharded, scene.start(env={"PATH": path, "WORKSPACE_REPLICAS": "1"})]
    wait_ready([name for share in shares for project in share[1:] for name in create(project)])

    root = ops[0].root
    calls = read_journal(journal, root)
    writes: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for start, end, project, sub, args in calls:
        if sub in WRITES:
            writes[project].append((start, end, args))
    assert len(writes) == 6
    for project, spans in writes.items():
        spans.sort()
        for (s1, e1, a1), (s2, e2, a2) in zip(spans, spans[1:]):
            assert s2 >= e1, f"overlapping git writes on {project}: {a1!r} [{s1}-{e1}] and {a2!r} [{s2}-{e2}]"

    adds = [args for _, _, _, sub, args in calls if sub == "worktree" and " worktree add " in f" {args} "]
    for name in expected:
        made = [a for a in adds if a.rstrip().split(" ")[-2].endswith(f"/{name}")]
        assert len(made) == 1, f"{name} materialized {len(made)} times"
