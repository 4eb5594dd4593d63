"""Hand credentials to git for the granted origins only; never in a URL, argv or the volume.

HTTPS: git's credential protocol, through our helper (credential_helper.py),
configured by environment (GIT_CONFIG_COUNT, after the runner's reset of every
other helper) with `credential.useHttpPath`, so git tells it protocol, host,
port and path. The helper answers from 0600 files only when that request lies
inside a granted origin: the Workspace's repository, plus each submodule URL
that the Secret's own list of repositories covers (`grant`). Anything else --
another host, port, scheme or path, a redirect elsewhere -- gets no answer.

SSH: the key and known_hosts sit in the same directory; GIT_SSH_COMMAND enforces
strict host-key checking. The key is in the environment of granted git calls
only: submodules outside the grant run with `anonymous` (known_hosts, no key).

The directory is private (0700) in the scratch dir (never the shared volume) and
is removed when the `with` block ends, whatever happens. Username and password
are secrets alike (tokens are often passed as the user name).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from workspace_operator.git import credential_helper, origins
from workspace_operator.git.errors import GitError, Reason, Redactor
from workspace_operator.git.runner import config_env

# Documented placeholder user names of hosting services: not secrets, and as
# words ("git") they occur in every message. Masked only where credentials sit.
CONVENTIONAL_USERNAMES = frozenset(
    {
        "git",
        "oauth2",
        "token",
        "x-access-token",
        "x-token-auth",
        "x-oauth-basic",
        "gitlab-ci-token",
        "private-token",
        "pat",
    }
)


def invalid_credentials(message: str) -> GitError:
    return GitError(Reason.INVALID_CREDENTIALS, message, step="credentials")


def _one_line(key: str, value: str | None) -> str | None:
    """Secrets made with `echo token | base64` end in a newline: drop one; refuse any other."""
    if value is None:
        return None
    value = value.removesuffix("\n").removesuffix("\r")
    if any(c in value for c in "\n\r\0"):
        raise invalid_credentials(f"the Secret's {key!r} must be a single line")
    return value


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssh_private_key: str | None = field(default=None, repr=False)
    known_hosts: str | None = None
    ca_bundle: str | None = None  # PEM, trusted for this repository's https (git/tls.py)
    # Repository URLs (prefixes) the Secret's owner lends it to. The requested
    # repository was checked by the caller; submodules get the credentials only
    # inside these.
    scopes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "username", _one_line("username", self.username))
        object.__setattr__(self, "password", _one_line("password", self.password))

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.ssh_private_key or self.known_hosts)

    @property
    def http_login(self) -> tuple[str, str] | None:
        """(user, password) the credential helper hands git for https; None without either."""
        if self.username is None and self.password is None:
            return None
        return self.username or "git", self.password or ""

    def register(self, redact: Redactor) -> None:
        redact.add(self.password)
        redact.add(self.ssh_private_key)
        if self.username and self.username not in CONVENTIONAL_USERNAMES:
            redact.add(self.username)
        if self.http_login is not None:
            # What git (curl) sends on the wire: `Authorization: Basic base64(user:password)`,
            # a form a server can echo on its own, also without its padding.
            basic = base64.b64encode(":".join(self.http_login).encode()).decode()
            redact.add(basic)
            redact.add(basic.rstrip("="))

    def allows(self, url: str) -> bool:
        return allowed_by(self.scopes, url)


def allowed_by(scopes: tuple[str, ...] | list[str], url: str) -> bool:
    """Some scope covers url, comparing parsed origins segment by segment; malformed
    scopes cover nothing."""
    try:
        target = origins.parse(url)
    except origins.URLRefused:
        return False
    for scope in scopes:
        try:
            if origins.parse(scope, scope=True).covers(target):
                return True
        except origins.URLRefused:
            continue
    return False


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


class CredentialSession:
    """The environments to run git with while the credentials exist on disk."""

    def __init__(self, directory: Path | None, creds: Credentials | None) -> None:
        self.directory = directory
        self.creds = creds
        self.env: dict[str, str] = {}  # for granted origins
        self.anonymous: dict[str, str] = {}  # for everything else
        self._granted: list[origins.Origin] = []

    def grant(self, url: str) -> None:
        """Let the helper answer for url (and below it) from now on."""
        if self.directory is None or not (self.directory / credential_helper.GRANTS).exists():
            return
        origin = origins.parse(url)
        if origin.scheme not in ("http", "https") or origin in self._granted:
            return
        self._granted.append(origin)
        lines = "".join(f"{o.scheme}\t{o.host}\t{o.port}\t{'/'.join(o.segments)}\n" for o in self._granted)
        partial = self.directory / f".{credential_helper.GRANTS}.partial"
        _write_private(partial, lines)
        os.replace(partial, self.directory / credential_helper.GRANTS)

    def allows(self, url: str) -> bool:
        """The Secret's own list of repositories covers url (a submodule, say)."""
        return self.creds is not None and self.creds.allows(url)


def _ssh_command(directory: Path, identity: bool) -> str:
    return " ".join(
        [
            "ssh -F /dev/null",
            *(["-i", shlex.quote(str(directory / "id"))] if identity else []),
            "-o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes",
            "-o StrictHostKeyChecking=yes",
            "-o",
            shlex.quote(f"UserKnownHostsFile={directory / 'known_hosts'}"),
            "-o GlobalKnownHostsFile=/dev/null",
        ]
    )


@contextlib.contextmanager
def credential_env(
    creds: Credentials | None, scratch_dir: Path | None = None, repository: str | None = None
) -> Iterator[CredentialSession]:
    """A session whose `env` authenticates git for `repository` during the block."""
    if creds is None or creds.empty:
        # Nothing to hand out, but the Secret's list still says which submodules it covers
        # (they get its CA: see Engine._session).
        yield CredentialSession(None, creds)
        return
    directory = Path(tempfile.mkdtemp(prefix="wo-cred-", dir=scratch_dir))
    try:
        os.chmod(directory, 0o700)
        session = CredentialSession(directory, creds)
        if creds.http_login is not None:
            username, password = creds.http_login
            _write_private(directory / "username", username)
            _write_private(directory / "password", password)
            _write_private(directory / credential_helper.GRANTS, "")
            helper = " ".join(
                shlex.quote(part) for part in (sys.executable, "-I", "-S", credential_helper.__file__, str(directory))
            )
            session.env.update(config_env(("credential.helper", f"!{helper}"), ("credential.useHttpPath", "true")))
            if repository is not None:
                session.grant(repository)
        if creds.ssh_private_key or creds.known_hosts:
            # known_hosts alone is enough for a public repository over ssh.
            if creds.ssh_private_key:
                key = creds.ssh_private_key
                _write_private(directory / "id", key if key.endswith("\n") else key + "\n")
            _write_private(directory / "known_hosts", creds.known_hosts or "")
            session.env["GIT_SSH_COMMAND"] = _ssh_command(directory, bool(creds.ssh_private_key))
            session.anonymous["GIT_SSH_COMMAND"] = _ssh_command(directory, False)
        yield session
    finally:
        shutil.rmtree(directory, ignore_errors=True)
