"""Two attacks found in review, each performed for real against the engine.

* A server the URL policy allows, and the credentials are granted to, answers
  with a redirect to a host it does not allow (a metadata address, an internal
  service): git must not follow it, and the Workspace fails for good with
  `RepositoryRedirected` (not as network trouble, retried until its deadline).
* A pushed `.gitmodules` with `[include] path = /abs/file` would make the
  operator read a file of its own pod (another tenant's `.gitmodules` on the
  volume): the include is refused before any submodule is planned.
"""

from __future__ import annotations

import base64
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from attackers import CredentialSink, _Handler, _Server
from engine_fixtures import checkout, layout, make_settings, request
from upstreams import SmartHTTP, StandardRepo, served_repo
from workspace_operator.git import Credentials, Engine, GitError, Reason

pytestmark = pytest.mark.upstreams

USER, TOKEN = "redir-user", "tok-" + secrets.token_hex(12)


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


class _Redirect(BaseHTTPRequestHandler):
    target = ""
    status = 302

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Location", self.target + self.path)
        self.end_headers()


@pytest.fixture
def sink_on_second_address() -> Iterator[CredentialSink]:
    sink = CredentialSink()
    # The redirect target must be another address than the allowed 127.0.0.1.
    server = _Server(("127.0.0.2", 0), _Handler)
    server.sink = sink
    sink.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_to_a_host_outside_the_policy_is_not_followed(
    sink_on_second_address: CredentialSink, volume: Path, scratch: Path, status: int
) -> None:
    target = f"http://127.0.0.2:{sink_on_second_address.port}"
    handler = type("Redirect", (_Redirect,), {"target": target, "status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        engine = Engine(volume, make_settings(scratch, allowed_hosts=("127.0.0.1",)))
        url = f"http://127.0.0.1:{server.server_address[1]}/org/repo.git"
        creds = Credentials(username=USER, password=TOKEN, scopes=(url,))
        with pytest.raises(GitError) as caught:
            await checkout(engine, request(url, credentials=creds))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    # git asked the allowed host, was told to go elsewhere, and did not go.
    assert sink_on_second_address.received() == []
    assert not layout(volume).cache_dir.exists()
    # A permanent failure that says why, and neither where to nor the credentials.
    assert caught.value.reason is Reason.REDIRECTED and not caught.value.retryable
    message = caught.value.message
    assert f"the server redirects (HTTP {status})" in message and "spec.repository" in message, message
    assert "must name the final URL" in message, message
    for unsaid in ("127.0.0.2", USER, TOKEN, _basic(USER, TOKEN)):
        assert unsaid not in message, message


async def test_gitmodules_may_not_include_files_of_the_operators_pod(
    engine: Engine, upstream_repo: StandardRepo, smart_http: SmartHTTP, volume: Path, tmp_path: Path
) -> None:
    # Another tenant's .gitmodules somewhere the operator can read (here: outside the volume).
    victim = tmp_path / "victim.gitmodules"
    victim.write_text('[submodule "secret"]\n\tpath = secret\n\turl = https://internal.example/secret.git\n')
    assert upstream_repo.served_dir is not None
    served_repo(upstream_repo.served_dir, "super", {"top.txt": "top\n"}, {}, f"[include]\n\tpath = {victim}\n")

    with pytest.raises(GitError) as caught:
        await checkout(engine, request(smart_http.url("super"), submodules=True))
    assert caught.value.reason is Reason.INVALID_SPEC
    assert "include" in caught.value.message and "internal.example" not in str(caught.value)
    assert not layout(volume).ready_record("ws").exists()
