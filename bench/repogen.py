"""Deterministic, offline test repositories for the benchmarks, built with `git fast-import`.

    python -m bench.repogen small            # build (or find cached) and print its path
    python -m bench.repogen gitgit --force   # rebuild

Sizes:

* ``tiny``     10 files, 10 commits: the memory scenario (RSS does not depend on the tree);
* ``small``    ~200 files, ~100 commits: quick mode and the many/burst/memory scenarios;
* ``gitgit``   one of git.git's size: ~5k files, ~60 MB tree, tens of thousands of commits;
* ``monorepo`` ~50k files, fewer commits (full mode only).

Everything is derived from a seeded PRNG with fixed authors and dates, so the same
profile and VERSION always produce the same commit SHAs. History is a long chain of
small commits touching a few files each (fast-import deltas each blob against the
previous version of the same path, so this stays cheap to generate and compact to
store). Results are cached under ``~/.cache/workspace-operator/bench/<size>-<VERSION>``;
bump VERSION whenever generation changes.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from testsupport import gitenv
from testsupport.upstreams import serve_config

VERSION = "v1"
AUTHOR = "Bench Author <author@bench.test>"
COMMITTER = "Bench Committer <committer@bench.test>"
BASE_EPOCH = 1_600_000_000
BRANCH = "refs/heads/main"


@dataclass(frozen=True)
class Profile:
    name: str
    files: int
    commits: int
    median_bytes: int  # lognormal file sizes around this median
    sigma: float
    max_bytes: int
    files_per_dir: int
    seed: int
    tag_every: int  # an annotated tag every N commits
    hot_fraction: float = 0.05  # share of files that get most of the edits


PROFILES = {
    # For the memory scenario: the operator's RSS does not depend on the tree, only on
    # how many Workspaces it tracks, so the checkouts should cost as little as possible.
    "tiny": Profile(
        "tiny", files=10, commits=10, median_bytes=500, sigma=0.5, max_bytes=4000, files_per_dir=10, seed=5, tag_every=5
    ),
    "small": Profile(
        "small",
        files=200,
        commits=100,
        median_bytes=1500,
        sigma=0.9,
        max_bytes=64_000,
        files_per_dir=25,
        seed=11,
        tag_every=25,
    ),
    # git.git today: ~4.5k files, ~60 MB checked out, ~75k commits. 5k files with a
    # 6 KB median (mean ~12 KB) give the same tree size; 25k commits keep generation
    # to a few minutes on 2 cores while keeping history-walk costs realistic.
    "gitgit": Profile(
        "gitgit",
        files=5000,
        commits=25_000,
        median_bytes=6500,
        sigma=1.2,
        max_bytes=400_000,
        files_per_dir=100,
        seed=23,
        tag_every=500,
    ),
    "monorepo": Profile(
        "monorepo",
        files=50_000,
        commits=3000,
        median_bytes=1000,
        sigma=1.0,
        max_bytes=200_000,
        files_per_dir=120,
        seed=37,
        tag_every=500,
    ),
}


@dataclass(frozen=True)
class Generated:
    size: str
    path: str  # the bare repository
    head: str
    commits: int
    files: int
    tree_bytes: int
    pack_bytes: int
    seconds: float
    version: str = VERSION


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "workspace-operator" / "bench"


def git(repo: Path, *args: str) -> str:
    return gitenv.git(repo, *args, timeout=3600)  # a repack of the largest profile takes minutes


# -- content -----------------------------------------------------------------------


class Content:
    """Source-like text from a seeded PRNG: a fixed vocabulary, indented lines."""

    EXTENSIONS = (".c", ".h", ".py", ".sh", ".md", ".txt", ".go", ".rs")

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        letters = "abcdefghijklmnopqrstuvwxyz_"
        vocab = ["".join(rng.choices(letters, k=rng.randint(2, 12))) for _ in range(3000)]
        punct = [
            "(",
            ")",
            ";",
            "{",
            "}",
            "=",
            "+",
            ",",
            "->",
            "==",
            "0",
            "1",
            "NULL",
            "return",
            "if",
            "for",
            "int",
            "char",
            "struct",
            "const",
            "static",
            "void",
            "*",
            "&&",
            "||",
            "!",
            "size_t",
            "else",
        ]
        self.vocab = vocab
        # Zipf-distributed tokens, like identifiers and keywords in real source code.
        self.tokens = punct + vocab
        weights = [1.0 / (rank + 1) ** 1.05 for rank in range(len(self.tokens))]
        total = 0.0
        self.cum: list[float] = []
        for weight in weights:
            total += weight
            self.cum.append(total)
        # Lines that recur everywhere ("}", "return 0;", ...).
        self.common = [self._fresh_line(rng.randint(1, 4)) for _ in range(200)]

    def _fresh_line(self, words: int) -> str:
        return "\t" * self.rng.choice((0, 1, 1, 2, 2, 3)) + " ".join(
            self.rng.choices(self.tokens, cum_weights=self.cum, k=words)
        )

    def lines(self, nbytes: int) -> list[str]:
        rng = self.rng
        words = rng.choices(self.tokens, cum_weights=self.cum, k=max(4, nbytes // 6))
        out: list[str] = []
        i = 0
        while i < len(words):
            if rng.random() < 0.2:
                out.append(self.common[rng.randrange(len(self.common))])
                i += 2
                continue
            n = rng.randint(2, 12)
            indent = "\t" * rng.choice((0, 1, 1, 2, 2, 3))
            out.append(indent + " ".join(words[i : i + n]))
            i += n
        return out

    def line(self) -> str:
        return self._fresh_line(self.rng.randint(2, 12))

    def message(self, index: int) -> str:
        subject = " ".join(self.rng.choices(self.vocab, k=self.rng.randint(3, 8)))
        body = " ".join(self.rng.choices(self.vocab, k=self.rng.randint(0, 40)))
        return f"{subject}\n\n{body}\n\nChange-Id: bench-{index}\n" if body else f"{subject}\n"

    def path_names(self, profile: Profile) -> list[str]:
        """A two-level directory tree with ~files_per_dir files per directory."""
        rng = self.rng
        ndirs = max(1, math.ceil(profile.files / profile.files_per_dir))
        top = max(1, int(math.sqrt(ndirs)))
        dirs = []
        for d in range(ndirs):
            parent = f"{self.vocab[d % top]}{d % top}"
            dirs.append(parent if d < top else f"{parent}/{self.vocab[(d * 7) % len(self.vocab)]}{d}")
        names = []
        for i in range(profile.files):
            ext = rng.choice(self.EXTENSIONS)
            names.append(f"{dirs[i % ndirs]}/{self.vocab[rng.randrange(len(self.vocab))]}_{i}{ext}")
        return sorted(names)


def _size(rng: random.Random, profile: Profile) -> int:
    return int(min(profile.max_bytes, max(40, rng.lognormvariate(math.log(profile.median_bytes), profile.sigma))))


def _edit(rng: random.Random, content: Content, lines: list[str]) -> None:
    """A small, diff-like change: replace, insert or delete a few lines."""
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        pos = rng.randrange(len(lines) + 1)
        if op < 0.5 and lines:
            lines[min(pos, len(lines) - 1)] = content.line()
        elif op < 0.85 or len(lines) < 5:
            lines[pos:pos] = [content.line() for _ in range(rng.randint(1, 6))]
        else:
            del lines[pos : pos + rng.randint(1, 3)]


# -- fast-import stream ------------------------------------------------------------


class Stream:
    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.mark = 0

    def data(self, payload: bytes) -> None:
        self.out.write(b"data %d\n" % len(payload))
        self.out.write(payload)
        self.out.write(b"\n")

    def commit(
        self, when: int, message: str, changes: Iterator[tuple[str, bytes | None]], parent: str | None = None
    ) -> int:
        self.mark += 1
        w = self.out.write
        w(f"commit {BRANCH}\nmark :{self.mark}\n".encode())
        w(f"author {AUTHOR} {when} +0000\ncommitter {COMMITTER} {when} +0000\n".encode())
        self.data(message.encode())
        if parent:
            w(f"from {parent}\n".encode())
        for path, blob in changes:
            if blob is None:
                w(f"D {path}\n".encode())
            else:
                w(f"M 100644 inline {path}\n".encode())
                self.data(blob)
        w(b"\n")
        return self.mark

    def tag(self, name: str, mark: int, when: int) -> None:
        self.out.write(f"tag {name}\nfrom :{mark}\ntagger {COMMITTER} {when} +0000\n".encode())
        self.data(f"release {name}\n".encode())


def _fast_import(repo: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["git", "-C", str(repo), "fast-import", "--quiet", "--depth=50", "--active-branches=1"],
        stdin=subprocess.PIPE,
        env=gitenv.hermetic_env(),
    )


def _generate_into(repo: Path, profile: Profile) -> tuple[int, int]:
    """Write the whole history into the (empty, bare) repo; returns (files, tree bytes)."""
    rng = random.Random(profile.seed)
    content = Content(rng)
    names = content.path_names(profile)
    files: dict[str, list[str]] = {name: content.lines(_size(rng, profile)) for name in names}
    hot = names[: max(1, int(len(names) * profile.hot_fraction))]
    rng.shuffle(hot)

    proc = _fast_import(repo)
    assert proc.stdin is not None
    stream = Stream(proc.stdin)
    when = BASE_EPOCH

    def blob(lines: list[str]) -> bytes:
        return ("\n".join(lines) + "\n").encode()

    stream.commit(when, "initial import\n", ((n, blob(files[n])) for n in names))
    next_file = len(names)
    for index in range(1, profile.commits):
        when += 60 + rng.randrange(3600)
        touched: dict[str, bytes | None] = {}
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
            pool = hot if rng.random() < 0.6 else names
            name = pool[rng.randrange(len(pool))]
            if name not in files:
                continue
            _edit(rng, content, files[name])
            touched[name] = blob(files[name])
        roll = rng.random()
        if roll < 0.01:  # a new file now and then
            directory = names[rng.randrange(len(names))].rsplit("/", 1)[0]
            name = f"{directory}/{content.vocab[rng.randrange(len(content.vocab))]}_{next_file}.c"
            next_file += 1
            files[name] = content.lines(_size(rng, profile))
            names.append(name)
            touched[name] = blob(files[name])
        elif roll < 0.015 and len(files) > profile.files // 2:  # and a deletion
            name = names[rng.randrange(len(names))]
            if name in files and name not in touched:
                del files[name]
                touched[name] = None
        mark = stream.commit(when, content.message(index), iter(touched.items()))
        if index % profile.tag_every == 0:
            stream.tag(f"v{index // profile.tag_every}.0", mark, when)
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"git fast-import exited {proc.returncode}")
    return len(files), sum(len(blob(lines)) for lines in files.values())


def _pack_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "objects").rglob("*") if p.is_file())


def generate(size: str, *, force: bool = False, quiet: bool = False) -> Generated:
    """The cached repository of this size, generated on first use (file-locked)."""
    profile = PROFILES[size]
    target = cache_root() / f"{size}-{VERSION}"
    meta_path = target / "meta.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{size}-{VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if meta_path.exists() and not force:
            return Generated(**json.loads(meta_path.read_text()))
        if not quiet:
            print(
                f"generating the {size!r} repository ({profile.files} files, {profile.commits} commits; "
                "cached after the first time)...",
                file=sys.stderr,
                flush=True,
            )
        started = time.monotonic()
        staging = target.parent / f".{size}-{VERSION}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        repo = staging / "repo.git"
        repo.mkdir(parents=True)
        git(repo, "init", "--bare", "--quiet", "-b", "main")
        git(repo, "config", "core.logAllRefUpdates", "false")
        files, tree_bytes = _generate_into(repo, profile)
        # As a forge keeps it: one pack with a bitmap and a commit-graph.
        git(repo, "repack", "-a", "-d", "-f", "-b", "-q", "--window=10", "--depth=50")
        git(repo, "commit-graph", "write", "--reachable")
        git(repo, "pack-refs", "--all")
        serve_config(repo, (("receive.autogc", "false"), ("http.receivepack", "true")))
        head = git(repo, "rev-parse", BRANCH)
        commits = int(git(repo, "rev-list", "--count", BRANCH))
        result = Generated(
            size,
            str(target / "repo.git"),
            head,
            commits,
            files,
            tree_bytes,
            _pack_bytes(repo),
            round(time.monotonic() - started, 1),
        )
        (staging / "meta.json").write_text(json.dumps(asdict(result), indent=2))
        shutil.rmtree(target, ignore_errors=True)
        os.rename(staging, target)
        if not quiet:
            print(
                f"generated {size} in {result.seconds:.0f}s: {commits} commits, {files} files, "
                f"{tree_bytes / 1e6:.1f} MB tree, {result.pack_bytes / 1e6:.1f} MB packed",
                file=sys.stderr,
            )
        return result


def copy_for_serving(generated: Generated, dest: Path) -> Path:
    """A private copy to serve (and push to): hard links, safe because git never
    rewrites an existing pack or object file in place (refs/config go via rename)."""
    src = Path(generated.path)
    shutil.copytree(src, dest, copy_function=os.link)
    return dest


class Extender:
    """Pushes new, deterministic commits onto `main` of a bare repository."""

    def __init__(self, repo: Path, seed: int) -> None:
        self.repo = repo
        self.rng = random.Random(seed)
        self.content = Content(random.Random(seed + 1))
        self.names = git(repo, "ls-tree", "-r", "--name-only", BRANCH).splitlines()
        self.counter = 0

    def _read(self, paths: list[str]) -> dict[str, list[str]]:
        spec = "".join(f"{BRANCH}:{p}\n" for p in paths).encode()
        out = subprocess.run(
            ["git", "-C", str(self.repo), "cat-file", "--batch"],
            input=spec,
            capture_output=True,
            env=gitenv.hermetic_env(),
            timeout=120,
            check=True,
        ).stdout
        result: dict[str, list[str]] = {}
        pos = 0
        for path in paths:
            header_end = out.index(b"\n", pos)
            size = int(out[pos:header_end].split()[2])
            body = out[header_end + 1 : header_end + 1 + size]
            pos = header_end + 1 + size + 1
            result[path] = body.decode().rstrip("\n").split("\n")
        return result

    def push(self, commits: int, files_per_commit: int = 3) -> str:
        """Append `commits` commits touching a few files each; returns the new tip."""
        when = int(git(self.repo, "log", "-1", "--format=%ct", BRANCH))
        chosen = [
            [self.names[self.rng.randrange(len(self.names))] for _ in range(files_per_commit)] for _ in range(commits)
        ]
        state = self._read(sorted({p for group in chosen for p in group}))
        proc = _fast_import(self.repo)
        assert proc.stdin is not None
        stream = Stream(proc.stdin)
        for index, group in enumerate(chosen):
            when += 60
            self.counter += 1
            touched = {}
            for path in group:
                _edit(self.rng, self.content, state[path])
                touched[path] = ("\n".join(state[path]) + "\n").encode()
            stream.commit(
                when,
                f"bench update {self.counter}\n",
                iter(touched.items()),
                parent=f"{BRANCH}^0" if index == 0 else None,
            )
        proc.stdin.close()
        if proc.wait() != 0:
            raise RuntimeError("git fast-import (extend) failed")
        return git(self.repo, "rev-parse", BRANCH)


def main() -> int:
    parser = argparse.ArgumentParser(description="generate (or find cached) a benchmark repository")
    parser.add_argument("size", choices=sorted(PROFILES))
    parser.add_argument("--force", action="store_true", help="regenerate even if cached")
    opts = parser.parse_args()
    print(json.dumps(asdict(generate(opts.size, force=opts.force)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
