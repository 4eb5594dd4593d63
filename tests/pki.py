"""A private certificate authority for tests, made with the openssl command line.

`PrivateCA(dir)` writes ca.crt and a server certificate for `localhost` and
127.0.0.1 signed by it; `server_context()` serves with that certificate.
Short-lived (two days) and EC keys: cheap to make per test.
"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class PrivateCA:
    def __init__(self, directory: Path, *, names: tuple[str, ...] = ("DNS:localhost", "IP:127.0.0.1")) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
        _openssl(
            "req",
            "-x509",
            *ec,
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=workspace-operator test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
            cwd=directory,
        )
        (directory / "server.ext").write_text(
            f"subjectAltName={','.join(names)}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        )
        _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=directory)
        _openssl(
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            cwd=directory,
        )

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_pem(self) -> str:
        return self.ca_file.read_text()

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.dir / "server.crt", self.dir / "server.key")
        return context
