"""Trust a private CA for one repository: a PEM bundle handed to git for one checkout.

The bundle comes from the credentials Secret (`ca.crt`). Like the credential
files it is written to a private temporary directory outside the shared volume
(the scratch dir) and removed when the `with` block ends; git reads it through
GIT_SSL_CAINFO (the environment form of http.sslCAInfo), which replaces the
system roots (and WORKSPACE_CA_FILE) for that checkout only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from workspace_operator.git.errors import GitError, Reason

_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


@contextlib.contextmanager
def ca_env(bundle: str | None, scratch_dir: Path | None = None) -> Iterator[dict[str, str]]:
    if not bundle:
        yield {}
        return
    if _PEM_CERTIFICATE not in bundle:
        raise GitError(
            Reason.TLS_VERIFY_FAILED, "ca.crt in the credentials Secret holds no PEM certificate", step="credentials"
        )
    directory = Path(tempfile.mkdtemp(prefix="wo-ca-", dir=scratch_dir))
    try:
        path = directory / "ca.crt"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(bundle)
        yield {"GIT_SSL_CAINFO": str(path)}
    finally:
        shutil.rmtree(directory, ignore_errors=True)
