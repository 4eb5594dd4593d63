"""Hand credentials to git without a URL, a command line, a config file or the volume.

HTTPS: an askpass helper reads username/token from 0600 files in a private
temporary directory. SSH: the key and known_hosts sit in that same directory and
GIT_SSH_COMMAND enforces strict host-key checking. The directory is outside the
shared volume (the scratch dir, default the system temp dir) and is removed when
the `with` block ends, whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from workspace_operator.git.errors import Redactor

_ASKPASS = """#!/bin/sh
# git asks "Username for '...': " then "Password for '...': ".
case "$1" in
  Username*) exec cat "$(dirname "$0")/username" ;;
  *) exec cat "$(dirname "$0")/password" ;;
esac
"""


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssh_private_key: str | None = field(default=None, repr=False)
    known_hosts: str | None = None
    ca_bundle: str | None = None  # PEM, trusted for this repository's https (git/tls.py)

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.ssh_private_key or self.known_hosts)

    def register(self, redact: Redactor) -> None:
        redact.add(self.password)
        redact.add(self.ssh_private_key)


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


@contextlib.contextmanager
def credential_env(creds: Credentials | None, scratch_dir: Path | None = None) -> Iterator[dict[str, str]]:
    """Environment variables that let git authenticate for the duration of the block."""
    if creds is None or creds.empty:
        yield {}
        return
    directory = Path(tempfile.mkdtemp(prefix="wo-cred-", dir=scratch_dir))
    try:
        os.chmod(directory, 0o700)
        env: dict[str, str] = {}
        if creds.password is not None or creds.username is not None:
            _write_private(directory / "username", creds.username or "git")
            _write_private(directory / "password", creds.password or "")
            _write_private(directory / "askpass", _ASKPASS, 0o700)
            env["GIT_ASKPASS"] = str(directory / "askpass")
        if creds.ssh_private_key or creds.known_hosts:
            # known_hosts alone is enough for a public repository over ssh.
            identity: list[str] = []
            if creds.ssh_private_key:
                key = creds.ssh_private_key
                _write_private(directory / "id", key if key.endswith("\n") else key + "\n")
                identity = ["-i", shlex.quote(str(directory / "id"))]
            _write_private(directory / "known_hosts", creds.known_hosts or "")
            env["GIT_SSH_COMMAND"] = " ".join(
                [
                    "ssh -F /dev/null",
                    *identity,
                    "-o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes",
                    "-o StrictHostKeyChecking=yes",
                    "-o", shlex.quote(f"UserKnownHostsFile={directory / 'known_hosts'}"),
                    "-o GlobalKnownHostsFile=/dev/null",
                ]
            )
        yield env
    finally:
        shutil.rmtree(directory, ignore_errors=True)
