"""Failure vocabulary of the git engine: a reason, a redacted message, and retryability.

The operator turns `Reason` values into condition reasons verbatim, so they are
CamelCase and stable: users write alerts and runbooks against them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum


class Reason(StrEnum):
    INVALID_SPEC = "InvalidSpec"
    SCHEME_NOT_ALLOWED = "TransportNotAllowed"
    AUTH_FAILED = "AuthenticationFailed"
    REPOSITORY_NOT_FOUND = "RepositoryNotFound"
    REDIRECTED = "RepositoryRedirected"
    REF_NOT_FOUND = "RefNotFound"
    COMMIT_NOT_FOUND = "CommitNotFound"
    REPOSITORY_MISMATCH = "RepositoryMismatch"
    SUBPATH_NOT_FOUND = "SubPathNotFound"
    HOST_KEY_MISMATCH = "HostKeyVerificationFailed"
    TLS_VERIFY_FAILED = "TLSVerificationFailed"
    CREDENTIALS_NOT_ALLOWED = "CredentialsNotAllowed"
    INVALID_CREDENTIALS = "InvalidCredentials"
    HOST_NOT_ALLOWED = "HostNotAllowed"
    UNREACHABLE = "UpstreamUnavailable"
    TIMEOUT = "GitTimeout"
    DISK_FULL = "DiskFull"
    GIT_FAILED = "GitFailed"
    OUTPUT_TOO_LARGE = "GitOutputTooLarge"
    UNSAFE_PATH = "UnsafeVolumePath"
    TOO_MANY_SUBMODULES = "TooManySubmodules"


PERMANENT = frozenset(
    {
        Reason.INVALID_SPEC,
        Reason.SCHEME_NOT_ALLOWED,
        Reason.AUTH_FAILED,
        Reason.REPOSITORY_NOT_FOUND,
        Reason.REDIRECTED,
        Reason.REF_NOT_FOUND,
        Reason.COMMIT_NOT_FOUND,
        Reason.REPOSITORY_MISMATCH,
        Reason.SUBPATH_NOT_FOUND,
        Reason.HOST_KEY_MISMATCH,
        Reason.TLS_VERIFY_FAILED,
        Reason.CREDENTIALS_NOT_ALLOWED,
        Reason.OUTPUT_TOO_LARGE,
        Reason.UNSAFE_PATH,
        Reason.INVALID_CREDENTIALS,
        Reason.HOST_NOT_ALLOWED,
        Reason.TOO_MANY_SUBMODULES,
    }
)


class GitError(Exception):
    """A failed git step. `message` is already redacted and safe to publish."""

    def __init__(self, reason: Reason, message: str, *, step: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.step = step

    @property
    def retryable(self) -> bool:
        return self.reason not in PERMANENT

    def __str__(self) -> str:
        return f"{self.step}: {self.message}" if self.step else self.message


# Ordered: the first matching pattern wins, so the specific ones come first.
_STDERR_RULES: tuple[tuple[re.Pattern[str], Reason], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), reason)
    for pattern, reason in (
        (r"no space left on device|disk quota exceeded", Reason.DISK_FULL),
        (r"host key verification failed|remote host identification has changed", Reason.HOST_KEY_MISMATCH),
        (
            r"ssl certificate problem|server certificate verification failed|certificate verify failed"
            r"|problem with the ssl ca cert|error setting certificate",
            Reason.TLS_VERIFY_FAILED,
        ),
        (
            r"authentication failed|could not read (username|password)|terminal prompts disabled"
            r"|permission denied \(publickey|returned error: 40[13]|invalid username or password"
            r"|access denied|HTTP Basic: Access denied",
            Reason.AUTH_FAILED,
        ),
        # git runs with http.followRedirects=false: a redirect is an answer, not network trouble.
        (r"returned error: 30[12378]\b", Reason.REDIRECTED),
        # "no such repository": git daemon's answer (with --informative-errors).
        (
            r"repository .* not found|does not appear to be a git repository|returned error: 404|no such repository"
            r"|no such file or directory.*\.git|not a git repository",
            Reason.REPOSITORY_NOT_FOUND,
        ),
        (
            r"couldn't find remote ref|remote branch .* not found|invalid refspec"
            r"|unknown revision|bad revision|invalid reference|fatal: invalid object name",
            Reason.REF_NOT_FOUND,
        ),
        (r"not our ref|no such remote ref|upload-pack: not our ref|unadvertised object", Reason.COMMIT_NOT_FOUND),
        (
            r"transport '[^']*' not allowed|unsupported url scheme|unable to find remote helper",
            Reason.SCHEME_NOT_ALLOWED,
        ),
        (
            r"could not resolve host|connection refused|connection timed out|connection reset"
            r"|unable to access|returned error: 5\d\d|early eof|remote end hung up|rpc failed"
            r"|operation too slow|network is unreachable|unable to connect|failed to connect"
            r"|could not read from remote repository|ssh: connect to host",
            Reason.UNREACHABLE,
        ),
    )
)


_REDIRECT_STATUS = re.compile(r"returned error: (30\d)")


def explain(reason: Reason, stderr: str, detail: str) -> str:
    """The message of a failed git call: git's own (redacted) last lines, after what they
    mean where git's words would mislead."""
    if reason is Reason.REDIRECTED:
        status = _REDIRECT_STATUS.search(stderr)
        return (
            f"the server redirects (HTTP {status[1] if status else '30x'}) and redirects are never followed "
            "(credentials and the URL policy apply to the URL given, nowhere else): spec.repository "
            f"(or the submodule's URL) must name the final URL | {detail}"
        )
    return detail


def classify(stderr: str) -> Reason:
    for pattern, reason in _STDERR_RULES:
        if pattern.search(stderr):
            return reason
    return Reason.GIT_FAILED


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
# Where credentials sit whatever their value: credential-protocol lines and HTTP auth headers.
_KNOWN_POSITIONS = re.compile(r"(?i)(?P<key>\b(?:username|password)=|\bauthorization:\s*\w+\s+)(?P<value>\S+)")
# Secrets shorter than this are masked only as whole tokens (see Redactor.add).
SHORT = 6


class Redactor:
    """Removes credentials from any text bound for logs, events, status or exceptions.

    Three layers: URL userinfo and credential positions (`password=...`,
    `Authorization: Basic ...`) are always masked; every registered secret
    value (tokens, passwords, user names, key material lines) of 6 characters
    or more is replaced wherever it occurs; a shorter one only where it stands
    as a whole token (not inside a longer word or path: a user "bob" is masked
    in "user bob denied", not in "bobcat" or "/srv/bob.git"), so short
    secrets are hidden without garbling innocent text.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._short: set[str] = set()
        self._quoted: dict[str, str] = {}
        for secret in secrets:
            self.add(secret)

    def quote(self, value: str, label: str) -> None:
        """`value` is the requester's own text (its repository URL, say): wherever it occurs
        it is shown as `label`, before any secret is looked for. Redacting inside it would
        be an oracle: a guess written into the URL would come back as `***` exactly when
        it is the secret. Only where there are secrets to hide."""
        if value:
            self._quoted[value] = label

    def add(self, secret: str | None) -> None:
        if not secret:
            return
        for piece in [secret, *secret.splitlines()]:
            piece = piece.strip()
            if len(piece) >= SHORT:
                self._secrets.add(piece)
            elif piece.strip("-=_.:/ "):  # not a bare "-----" separator of key material
                self._short.add(piece)

    def __call__(self, text: str) -> str:
        # Quoted values become opaque tokens first and their labels come back last, so
        # that neither they nor their labels (which may name a path the requester chose)
        # are searched for secrets.
        quoted = sorted(self._quoted, key=len, reverse=True) if self._secrets or self._short else []
        for index, value in enumerate(quoted):
            text = text.replace(value, f"\0{index}\0")
        text = _USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
        text = _KNOWN_POSITIONS.sub(lambda m: f"{m['key']}***", text)
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        for secret in sorted(self._short, key=len, reverse=True):
            text = re.sub(rf"(?<![\w./~%@-]){re.escape(secret)}(?![\w/~%@-]|\.\w)", "***", text)
        for index, value in enumerate(quoted):
            text = text.replace(f"\0{index}\0", self._quoted[value])
        return text
