"""What to check out: the upstream URL and the revision, validated.

Pure functions, no I/O: they decide whether input is acceptable before anything
runs, so bad input is refused with nothing on disk touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from workspace_operator.git import origins
from workspace_operator.git.errors import GitError, Reason
from workspace_operator.git.layout import invalid

SHA = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")
MAX_URL = 2048
MAX_REF = 255
# scp-like ssh syntax: user@host:path (git treats it as ssh).
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._~-]+@[A-Za-z0-9.-]+:(?!//)[^\s]+$")
_HELPER_PREFIX_END = re.compile(r"[/\[]")
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(/|$)")


def uses_remote_helper(url: str) -> bool:
    """git's `<transport>::<address>` syntax (ext::, fd::, any remote helper): '::' before
    the first '/' or '['. Within brackets it is an IPv6 host (https://[2001:db8::1]/x.git),
    after a '/' part of a path: neither makes git run a helper."""
    return "::" in _HELPER_PREFIX_END.split(url, maxsplit=1)[0]


def helper_syntax_refused(what: str) -> GitError:
    return GitError(Reason.SCHEME_NOT_ALLOWED, f"{what}: transport '<name>::' syntax is not allowed", step="validate")


def check_url(url: str, allowed_schemes: frozenset[str], what: str = "repository") -> str:
    """Return the transport of a repository URL, or raise a permanent GitError.

    Beyond git's own syntax, the URL must parse unambiguously (origins.parse:
    no dot segments, encoded separators, '//', query, fragment, userinfo in
    http(s)), because credentials are lent by comparing parsed origins.
    """
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise invalid(f"{what} must be a URL of at most {MAX_URL} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise invalid(f"{what} URL contains whitespace or control characters")
    if url.startswith("-"):
        raise invalid(f"{what} URL must not start with '-'")
    if uses_remote_helper(url):
        raise helper_syntax_refused(what)
    if _SCP_LIKE.match(url):
        scheme = "ssh"
        user, _, rest = url.partition("@")
        host = rest.partition(":")[0]
    else:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if not scheme or "://" not in url:
            raise invalid(f"{what} must be a URL (scheme://host/path) or user@host:path")
        if scheme in ("http", "https") and parts.password is not None:
            raise invalid(f"{what} URL must not embed credentials; use spec.credentials")
        if scheme != "file" and not parts.hostname:
            raise invalid(f"{what} URL has no host")
        user, host = parts.username or "", parts.hostname or ""
        try:
            _ = parts.port  # raises unless the port is a number in range
        except ValueError:
            raise invalid(f"{what} URL has an invalid port") from None
    # ssh would read "-oProxyCommand=..." as an option. git blocks such hosts
    # too ("strange hostname"), but only once it runs: refuse them here first.
    if unquote(user).startswith("-") or unquote(host).startswith("-"):
        raise invalid(f"{what} URL user and host must not start with '-'")
    if scheme not in allowed_schemes:
        raise GitError(
            Reason.SCHEME_NOT_ALLOWED,
            f"{what}: transport {scheme!r} is not allowed (allowed: {', '.join(sorted(allowed_schemes))})",
            step="validate",
        )
    try:
        origins.parse(url)
    except origins.URLRefused as error:
        raise invalid(f"{what} URL refused: {error}") from None
    return scheme


def check_ref_name(kind: str, value: str) -> str:
    """git check-ref-format rules, plus: never anything that git could read as an option."""
    if not isinstance(value, str) or not value or len(value) > MAX_REF:
        raise invalid(f"ref.{kind} must be 1..{MAX_REF} characters")
    if value.startswith("-"):
        raise invalid(f"ref.{kind} {value!r} must not start with '-'")
    if _REF_FORBIDDEN.search(value) or value.startswith(("/", ".")) or value.endswith(("/", ".")) or value == "@":
        raise invalid(f"ref.{kind} {value!r} is not a valid git ref name")
    if kind == "name" and not value.startswith("refs/"):
        raise invalid(f"ref.name {value!r} must be a full ref name starting with 'refs/'")
    return value


@dataclass(frozen=True)
class Revision:
    """At most one of branch / tag / name, optionally pinned to a commit."""

    branch: str | None = None
    tag: str | None = None
    name: str | None = None
    commit: str | None = None

    def __post_init__(self) -> None:
        named = [k for k in ("branch", "tag", "name") if getattr(self, k)]
        if len(named) > 1:
            raise invalid(f"ref may name at most one of branch, tag, name (got {', '.join(named)})")
        for kind in named:
            check_ref_name(kind, getattr(self, kind))
        if self.commit is not None and not SHA.match(self.commit):
            raise invalid("ref.commit must be a full lowercase hex SHA (40 or 64 characters)")

    @property
    def remote_ref(self) -> str | None:
        """The full upstream ref this revision follows, or None (default branch / bare commit)."""
        if self.branch:
            return f"refs/heads/{self.branch}"
        if self.tag:
            return f"refs/tags/{self.tag}"
        return self.name

    @property
    def local_ref(self) -> str | None:
        return local_ref_for(self.remote_ref) if self.remote_ref else None

    def describe(self) -> str:
        base = self.branch or self.tag or self.name or "default branch"
        return f"{base}@{self.commit[:12]}" if self.commit else base


def local_ref_for(remote_ref: str) -> str:
    """Where a fetched upstream ref is kept in the cache; never a branch a worktree could hold."""
    if remote_ref.startswith("refs/heads/"):
        return "refs/remotes/origin/" + remote_ref.removeprefix("refs/heads/")
    if remote_ref.startswith("refs/tags/"):
        return remote_ref
    return "refs/cache/" + remote_ref.removeprefix("refs/")
