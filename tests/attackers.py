"""Attacker servers on loopback: they record what a victim sends them.

`CredentialSink` is an HTTP server that answers every request with 401 and a
Basic challenge -- exactly what makes git hand over credentials if it has any
for that origin -- and logs each request's path and Authorization header.
Given `status`, `body` (made from the request's path) and `content_type`, it
answers that instead -- a text/plain error git shows as `remote:` lines, or a
ref advertisement with an `ERR` line git shows as `fatal: remote error: ...`:
the way a server fishes for secrets by echoing guesses into error messages.
With `challenge`, a request without credentials still gets the 401 first (so
that git sends them, where it has any), and only one with credentials that answer.
Started and stopped by its owner (a `with` block), like the upstreams.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self, cast

import pytest


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    authorization: str | None

    def basic(self) -> tuple[str, str] | None:
        """(user, password) of a Basic Authorization header, if one was sent."""
        scheme, _, token = (self.authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return None
        user, _, password = base64.b64decode(token + "==").decode(errors="replace").partition(":")
        return user, password


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins handlers
    sink: CredentialSink


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        sink = cast(_Server, self.server).sink
        sink.record(Received(self.command, self.path, self.headers.get("Authorization")))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if sink.challenge and self.headers.get("Authorization") is None:
            status, content_type, body = 401, "text/plain", b"authentication required\n"
        else:
            status, content_type, body = sink.status, sink.content_type, sink.body(self.path)
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="attacker"')
        self.send_header("Content-Type", content_type)
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer


class CredentialSink:
    def __init__(
        self,
        status: int = 401,
        body: Callable[[str], bytes] = lambda _path: b"authentication required\n",
        content_type: str = "text/plain",
        challenge: bool = False,
    ) -> None:
        self.status, self.body, self.content_type, self.challenge = status, body, content_type, challenge
        self._log: list[Received] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def record(self, received: Received) -> None:
        with self._lock:
            self._log.append(received)

    def received(self) -> list[Received]:
        with self._lock:
            return list(self._log)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def start(self) -> Self:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.sink = self
        self._server, self.port = server, int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def pkt_line(data: bytes) -> bytes:
    return b"%04x" % (len(data) + 4) + data


def error_advertisement(text: str) -> bytes:
    """A smart-HTTP ref advertisement that is only an `ERR` line: git prints `fatal: remote error: <text>`."""
    return pkt_line(b"# service=git-upload-pack\n") + b"0000" + pkt_line(f"ERR {text}\n".encode())


@pytest.fixture
def credential_sink() -> Iterator[CredentialSink]:
    with CredentialSink() as sink:
        yield sink
