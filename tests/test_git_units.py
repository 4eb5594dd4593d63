"""Pure pieces of the git engine: validation, classification, redaction, credentials files."""

from __future__ import annotations

import os
import random
import stat
import string
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from engine_fixtures import SUBPROCESS_TIMEOUT
from testsupport.gitenv import git, run_git
from workspace_operator.git import Credentials, GitError, GitSettings, Reason, Redactor, Revision
from workspace_operator.git.credentials import credential_env
from workspace_operator.git.errors import PERMANENT, classify
from workspace_operator.git.layout import ProjectLayout, check_label, check_relpath, check_sparse_dir
from workspace_operator.git.runner import GitRunner
from workspace_operator.git.source import check_ref_name, check_url, local_ref_for
from workspace_operator.git.worktree import check_tree_path

ALL = frozenset({"https", "ssh", "http", "git", "file"})

# -- Redactor ----------------------------------------------------------------------


def test_redactor_masks_url_userinfo_always() -> None:
    redact = Redactor()
    assert (
        redact("fatal: unable to access 'https://bot:s3cr3t-token@git.example.com/r.git/'")
        == "fatal: unable to access 'https://***@git.example.com/r.git/'"
    )
    assert redact("ssh://git@host/r.git and http://u@h/x") == "ssh://***@host/r.git and http://***@h/x"
    assert redact("user@host:path stays") == "user@host:path stays"  # no scheme: not a userinfo


def test_redactor_masks_registered_secrets_everywhere() -> None:
    key = (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nQyNTUxOQAAACBmb29iYXI=\n"
        "-----END OPENSSH PRIVATE KEY-----\n"
    )
    redact = Redactor(["tok_abcdef123456", key])
    text = f"password tok_abcdef123456 in ARGV; key line b3BlbnNzaC1rZXktdjEAAAAA; whole:\n{key}"
    out = redact(text)
    assert "tok_abcdef123456" not in out
    assert "b3BlbnNzaC1rZXktdjEAAAAA" not in out and "QyNTUxOQAAACBmb29iYXI=" not in out
    assert "password *** in ARGV" in out


def test_redactor_masks_short_secrets_as_whole_tokens_only_and_prefers_longest() -> None:
    redact = Redactor(["abc", "", "-----"])
    redact.add(None)
    # Short secrets are masked where they stand alone, never inside words; separators never.
    assert redact("abc ----- abcdef") == "*** ----- abcdef"
    redact = Redactor(["secret", "secret-and-more"])
    assert redact("x secret-and-more y secret") == "x *** y ***"


# -- classify -------------------------------------------------------------------------


CLASSIFY = [
    ("fatal: Authentication failed for 'https://h/r.git/'", Reason.AUTH_FAILED),
    ("fatal: could not read Username for 'https://h': terminal prompts disabled", Reason.AUTH_FAILED),
    ("git@h: Permission denied (publickey).\nfatal: Could not read from remote repository.", Reason.AUTH_FAILED),
    ("fatal: unable to access 'https://h/r.git/': The requested URL returned error: 403", Reason.AUTH_FAILED),
    ("Host key verification failed.\nfatal: Could not read from remote repository.", Reason.HOST_KEY_MISMATCH),
    ("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@", Reason.HOST_KEY_MISMATCH),
    ("fatal: repository 'https://h/nope.git/' not found", Reason.REPOSITORY_NOT_FOUND),
    ("fatal: remote error: no such repository: /nope.git", Reason.REPOSITORY_NOT_FOUND),
    ("fatal: '/srv/nope.git' does not appear to be a git repository", Reason.REPOSITORY_NOT_FOUND),
    ("fatal: unable to access 'https://h/r.git/': The requested URL returned error: 404", Reason.REPOSITORY_NOT_FOUND),
    ("fatal: unable to access 'https://h/old.git/': The requested URL returned error: 301", Reason.REDIRECTED),
    ("error: RPC failed; HTTP 308 curl 22 The requested URL returned error: 308", Reason.REDIRECTED),
    ("fatal: unable to access 'https://h/r.git/': The requested URL returned error: 304", Reason.UNREACHABLE),
    ("fatal: couldn't find remote ref refs/heads/nope", Reason.REF_NOT_FOUND),
    ("fatal: invalid refspec '+x:y'", Reason.REF_NOT_FOUND),
    ("fatal: remote error: upload-pack: not our ref 0123456789abcdef0123456789abcdef01234567", Reason.COMMIT_NOT_FOUND),
    ("fatal: transport 'ext' not allowed", Reason.SCHEME_NOT_ALLOWED),
    ("fatal: unable to find remote helper for 'foo'", Reason.SCHEME_NOT_ALLOWED),
    ("fatal: unable to access 'https://h/': Could not resolve host: h", Reason.UNREACHABLE),
    ("fatal: unable to connect to 127.0.0.1:\n127.0.0.1[0: 127.0.0.1]: errno=Connection refused", Reason.UNREACHABLE),
    ("ssh: connect to host h port 22: Connection refused", Reason.UNREACHABLE),
    ("error: RPC failed; HTTP 500 curl 22 The requested URL returned error: 500", Reason.UNREACHABLE),
    ("error: RPC failed; curl 28 Operation too slow. Less than 1000 bytes/sec", Reason.UNREACHABLE),
    ("fatal: the remote end hung up unexpectedly\nfatal: early EOF", Reason.UNREACHABLE),
    ("fatal: write error: No space left on device", Reason.DISK_FULL),
    ("error: unable to write file x: Disk quota exceeded", Reason.DISK_FULL),
    ("fatal: something nobody anticipated", Reason.GIT_FAILED),
    ("", Reason.GIT_FAILED),
]


@pytest.mark.parametrize(("stderr", "reason"), CLASSIFY)
def test_classify(stderr: str, reason: Reason) -> None:
    assert classify(stderr) is reason


def test_retryable_is_exactly_the_transient_reasons() -> None:
    for reason in Reason:
        assert GitError(reason, "x").retryable is (reason not in PERMANENT)
    assert {r for r in Reason if GitError(r, "x").retryable} >= {
        Reason.UNREACHABLE,
        Reason.TIMEOUT,
        Reason.DISK_FULL,
        Reason.GIT_FAILED,
    }
    assert not GitError(Reason.REF_NOT_FOUND, "x").retryable
    assert str(GitError(Reason.TIMEOUT, "timed out", step="fetch")) == "fetch: timed out"


# -- check_url ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("https://github.com/org/repo.git", "https"),
        ("HTTPS://github.com/org/repo", "https"),
        ("https://github.com:8443/org/repo.git", "https"),
        ("ssh://git@github.com/org/repo.git", "ssh"),
        ("ssh://git@[::1]:2222/srv/repo.git", "ssh"),
        ("git@github.com:org/repo.git", "ssh"),
        ("git://127.0.0.1:9418/repo.git", "git"),
        ("http://127.0.0.1/repo.git", "http"),
        ("file:///srv/git/repo.git", "file"),
    ],
)
def test_check_url_accepts(url: str, scheme: str) -> None:
    assert check_url(url, ALL) == scheme


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", Reason.INVALID_SPEC),
        ("x" * 3000, Reason.INVALID_SPEC),
        ("ext::sh -c touch% /tmp/x", Reason.INVALID_SPEC),  # whitespace first
        ("ext::sh%20-c%20id", Reason.SCHEME_NOT_ALLOWED),
        ("fd::7", Reason.SCHEME_NOT_ALLOWED),
        ("http::https://h/r", Reason.SCHEME_NOT_ALLOWED),
        ("-uhttps://h/r", Reason.INVALID_SPEC),
        ("--upload-pack=touch /tmp/x", Reason.INVALID_SPEC),
        ("https://u:p@h/r", Reason.INVALID_SPEC),
        ("https://bot@github.com/org/repo.git", Reason.INVALID_SPEC),  # the user name is a secret too
        ("https:///r", Reason.INVALID_SPEC),
        ("/abs/path", Reason.INVALID_SPEC),
        ("relative/path", Reason.INVALID_SPEC),
        ("host:path", Reason.INVALID_SPEC),
        ("ssh://-oProxyCommand=x/r", Reason.INVALID_SPEC),
        ("ssh://%2DoProxyCommand=x/r", Reason.INVALID_SPEC),
        ("ssh://-oProxyCommand=x@h/r", Reason.INVALID_SPEC),
        ("git@-oProxyCommand:r", Reason.INVALID_SPEC),
        ("ssh://h:99999/r", Reason.INVALID_SPEC),
        ("ssh://h:-1/r", Reason.INVALID_SPEC),
        ("https://h/r\x7f", Reason.INVALID_SPEC),
        ("svn://h/r", Reason.SCHEME_NOT_ALLOWED),
        ("ftp://h/r", Reason.SCHEME_NOT_ALLOWED),
    ],
)
def test_check_url_refuses(url: str, reason: Reason) -> None:
    with pytest.raises(GitError) as caught:
        check_url(url, ALL)
    assert caught.value.reason is reason
    assert not caught.value.retryable


def test_check_url_follows_the_allow_list() -> None:
    narrow = frozenset({"https"})
    assert check_url("https://h/r", narrow) == "https"
    for url in ("ssh://git@h/r", "git@h:r", "git://h/r", "http://h/r", "file:///r"):
        with pytest.raises(GitError) as caught:
            check_url(url, narrow)
        assert caught.value.reason is Reason.SCHEME_NOT_ALLOWED
    with pytest.raises(ValueError, match="unknown git transports"):
        GitSettings(allowed_schemes=frozenset({"https", "ext"}))


# -- refs and Revision ------------------------------------------------------------------


VALID_REFS = ["main", "feature/x/y", "v1.0", "release-2024.01", "a.b", "UPPER", "x@y", "émoji-ß"]


@pytest.mark.parametrize("value", VALID_REFS)
def test_check_ref_name_accepts(value: str) -> None:
    assert check_ref_name("branch", value) == value
    assert check_ref_name("name", f"refs/heads/{value}") == f"refs/heads/{value}"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "-x",
        "--upload-pack=x",
        "a..b",
        "a@{1}",
        "@",
        "x.lock",
        "x.lock/y",
        "x/",
        "/x",
        ".x",
        "x/.y",
        "x.",
        "a b",
        "a\tb",
        "a~b",
        "a^b",
        "a:b",
        "a?b",
        "a*b",
        "a[b",
        "a\\b",
        "a//b",
        "a\x00b",
        "a\x7fb",
        "x" * 256,
    ],
)
def test_check_ref_name_refuses(value: str) -> None:
    with pytest.raises(GitError) as caught:
        check_ref_name("branch", value)
    assert caught.value.reason is Reason.INVALID_SPEC


def test_check_ref_name_is_never_laxer_than_git() -> None:
    """Random names: whatever we accept, `git check-ref-format` accepts too."""
    rng = random.Random(1234)
    alphabet = string.ascii_letters + string.digits + "-._/@{}~^:?*[\\ "
    accepted = 0
    for _ in range(150):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        try:
            check_ref_name("branch", name)
        except GitError:
            continue
        accepted += 1
        proc = subprocess.run(
            ["git", "check-ref-format", "--branch", name],
            capture_output=True,
            timeout=SUBPROCESS_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, f"we accept {name!r}, git does not"
    assert accepted > 20


def test_revision() -> None:
    sha = "0123456789abcdef" * 2 + "01234567"
    assert Revision().remote_ref is None and Revision().describe() == "default branch"
    assert Revision(branch="feature/x").remote_ref == "refs/heads/feature/x"
    assert Revision(branch="feature/x").local_ref == "refs/remotes/origin/feature/x"
    assert Revision(tag="v1").remote_ref == "refs/tags/v1" == Revision(tag="v1").local_ref
    assert Revision(name="refs/pull/4/head").local_ref == "refs/cache/pull/4/head"
    assert Revision(commit=sha).remote_ref is None
    assert Revision(branch="main", commit=sha).describe() == f"main@{sha[:12]}"
    assert Revision(commit="a" * 64).commit == "a" * 64  # sha256 repositories
    assert local_ref_for("refs/heads/main") == "refs/remotes/origin/main"
    for bad in (
        dict(branch="a", tag="b"),
        dict(tag="a", name="refs/x"),
        dict(commit=sha[:39]),
        dict(commit=sha.upper()),
        dict(commit="HEAD"),
        dict(name="heads/main"),
    ):
        with pytest.raises(GitError) as caught:
            Revision(**bad)
        assert caught.value.reason is Reason.INVALID_SPEC, bad


# -- paths ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a", "a"),
        ("a/b", "a/b"),
        ("a/b/", "a/b"),
        (".github/workflows", ".github/workflows"),
        ("c..d/e", "c..d/e"),
        ("x.git", "x.git"),
        ("a b/ü", "a b/ü"),
    ],
)
def test_check_relpath_accepts(value: str, expected: str) -> None:
    assert check_relpath("subPath", value) == PurePosixPath(expected)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "/",
        "/abs",
        "..",
        "../x",
        "a/..",
        "a/../b",
        ".",
        "./a",
        "a/./b",
        "a//b",
        ".git",
        ".git/config",
        "a\\b",
        "a\x00b",
        "a\nb",
        "a\x7fb",
        "x" * 1025,
    ],
)
def test_check_relpath_refuses(value: str) -> None:
    with pytest.raises(GitError) as caught:
        check_relpath("subPath", value)
    assert caught.value.reason is Reason.INVALID_SPEC


SPARSE_DIRS = ["libs", "services/api", "a!b", "libs/!x", "#x", "a b", "x ", "-x", "a:b", "a^b", "{a}", "~x"]
SPARSE_PATTERNS = ["lib*", "!libs", "*", "a?", "a/[b]", "[ab]", "a]b", "libs/*/api", "!"]


def test_sparse_dirs_are_exactly_what_cone_mode_takes(tmp_path: Path) -> None:
    """check_sparse_dir refuses what `git sparse-checkout set --cone` refuses (a pattern: it
    fails every attempt, so it must fail validation instead) and takes the rest."""
    git(tmp_path, "init", "-q")
    for value in SPARSE_DIRS + SPARSE_PATTERNS:
        taken = run_git("-C", str(tmp_path), "sparse-checkout", "set", "--cone", "--", value, check=False)
        if value in SPARSE_DIRS:
            assert taken.returncode == 0, (value, taken.stderr)
            assert check_sparse_dir(value) == PurePosixPath(value)
        else:
            assert "specify directories rather than patterns" in taken.stderr, value
            with pytest.raises(GitError) as caught:
                check_sparse_dir(value)
            assert (
                caught.value.reason is Reason.INVALID_SPEC and "is a pattern, not a directory" in caught.value.message
            )
    with pytest.raises(GitError, match="must be relative"):
        check_sparse_dir("/libs")  # and every rule of check_relpath besides


def test_labels_and_layout(tmp_path: Path) -> None:
    assert check_label("name", "a-1") == "a-1"
    for bad in ("", "A", "a_b", "a.b", "-a", "a-", "x" * 64, "..", ".cache", "a/b"):
        with pytest.raises(GitError):
            check_label("name", bad)
        with pytest.raises(GitError):
            ProjectLayout(tmp_path, bad, "p")
        with pytest.raises(GitError):
            ProjectLayout(tmp_path, "ns", bad)
        with pytest.raises(GitError):
            ProjectLayout(tmp_path, "ns", "p").worktree_dir(bad)
    layout = ProjectLayout(tmp_path, "ns", "p")
    assert layout.cache_dir == tmp_path / "ns" / "p" / ".cache"
    assert layout.ready_record("w") == tmp_path / "ns" / "p" / ".ready" / "w"
    assert layout.relative_worktree("w") == PurePosixPath("ns/p/w")


# -- credentials and environment ----------------------------------------------------------------


def test_credentials_repr_hides_secrets() -> None:
    creds = Credentials(username="bot", password="hunter2-secret", ssh_private_key="KEYMATERIAL-xyz")
    assert "hunter2" not in repr(creds) and "KEYMATERIAL" not in repr(creds)
    redact = Redactor()
    creds.register(redact)
    assert redact("hunter2-secret KEYMATERIAL-xyz") == "*** ***"


def test_credential_env_files_are_private_and_removed(tmp_path: Path) -> None:
    creds = Credentials(username="bot", password="pa55-word-xyz", ssh_private_key="KEY\nLINES", known_hosts="kh")
    with credential_env(creds, tmp_path, "https://h/org/repo.git") as session:
        env = session.env
        (directory,) = list(tmp_path.iterdir())
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for name in ("username", "password", "id", "known_hosts", "grants"):
            assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
        assert (directory / "id").read_text() == "KEY\nLINES\n"
        # git's own credential machinery, with the environment the engine gives it.
        for url, expected in (
            ("https://h/org/repo.git", "username=bot\npassword=pa55-word-xyz\n"),
            ("https://other/org/repo.git", ""),
        ):
            fill = subprocess.run(
                ["git", "credential", "fill"],
                input=f"url={url}\n\n",
                capture_output=True,
                text=True,
                timeout=SUBPROCESS_TIMEOUT,
                env={**GitRunner(GitSettings()).base_env(), **env},
            )
            assert ("username=bot" in fill.stdout and "password=pa55-word-xyz" in fill.stdout) == bool(expected)
        assert "pa55-word-xyz" not in " ".join(env.values()) and "bot" not in env.get("GIT_CONFIG_VALUE_1", "x")
        assert "StrictHostKeyChecking=yes" in env["GIT_SSH_COMMAND"]
        assert "-i " in env["GIT_SSH_COMMAND"] and "-i " not in session.anonymous["GIT_SSH_COMMAND"]
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(RuntimeError), credential_env(creds, tmp_path):
        raise RuntimeError("the checkout failed")
    assert list(tmp_path.iterdir()) == []  # removed on failure too

    with credential_env(None, tmp_path) as session:
        assert session.env == {} and session.anonymous == {}
    assert list(tmp_path.iterdir()) == []


def test_git_environment_is_minimal(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (
        ("GIT_DIR", "/elsewhere"),
        ("GIT_CONFIG_PARAMETERS", "'core.hooksPath'='/x'"),
        ("GIT_SSH_COMMAND", "touch /tmp/x;"),
        ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
        ("GIT_CONFIG_GLOBAL", "/x"),
        ("GIT_EXEC_PATH", "/x"),
    ):
        monkeypatch.setenv(name, value)
    env = GitRunner(GitSettings(allowed_schemes=frozenset({"https", "git"}))).base_env()
    assert "GIT_DIR" not in env and "GIT_CONFIG_PARAMETERS" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert "GIT_EXEC_PATH" not in env
    assert env["GIT_SSH_COMMAND"] != os.environ["GIT_SSH_COMMAND"]
    assert env["GIT_CONFIG_GLOBAL"] == "/dev/null" and env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["GIT_ALLOW_PROTOCOL"] == "git:https"
    assert env["GIT_TERMINAL_PROMPT"] == "0"


async def test_a_name_twice_in_a_crafted_tree_is_refused_as_a_subpath(tmp_path: Path) -> None:
    """An unsorted tree can hold `a` as a directory and as a link; a checkout writes the
    link, so the directory entry must not vouch for the name."""
    repo = tmp_path / "repo.git"
    run_git("init", "--quiet", "--bare", str(repo), cwd=tmp_path)

    def stdin(*args: str, text: str) -> str:
        return run_git("-C", str(repo), *args, input=text).stdout.strip()

    inner = stdin("mktree", text=f"100644 blob {stdin('hash-object', '-w', '--stdin', text='x')}\tf\n")
    link = stdin("hash-object", "-w", "--stdin", text="/etc")
    raw = b"40000 a\0" + bytes.fromhex(inner) + b"120000 a\0" + bytes.fromhex(link)
    (tmp_path / "tree").write_bytes(raw)
    tree = git(repo, "hash-object", "-t", "tree", "--literally", "-w", str(tmp_path / "tree"))
    commit = git(repo, "commit-tree", tree, "-m", "crafted")
    runner = GitRunner(GitSettings(timeout_seconds=60))
    with pytest.raises(GitError) as caught:
        await check_tree_path(runner, repo, commit, PurePosixPath("a"), False)
    assert caught.value.reason is Reason.INVALID_SPEC and "symlink" in caught.value.message
