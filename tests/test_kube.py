"""The operator's own API calls against an API server that accepts and never answers."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from kubernetes.client import ApiClient, Configuration, V1Lease, V1LeaseSpec, V1ObjectMeta

from workspace_operator.kube import Kube

pytestmark = pytest.mark.upstreams


@pytest.fixture
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """A listener that accepts connections, reads the requests and never replies."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        listener.close()


def _configuration(host: str) -> Configuration:
    configuration = Configuration()
    configuration.host = host
    return configuration


def _kube(host: str) -> Kube:
    return Kube(ApiClient(_configuration(host)), timeout=(2.0, 1.0))


def test_a_status_write_to_a_server_that_never_answers_fails_instead_of_hanging(
    silent_server: tuple[str, list[socket.socket]],
) -> None:
    host, accepted = silent_server
    kube = _kube(host)

    async def write() -> None:
        # The outer bound only keeps a regression from hanging the suite: the
        # client's own deadline must end the call long before it.
        await asyncio.wait_for(kube.patch_status("ns", "w", {"phase": "Ready"}), timeout=60)

    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        asyncio.run(write())
    assert len(accepted) == 1  # a PATCH is not retried


def test_a_lease_write_that_may_have_landed_is_not_sent_again(
    silent_server: tuple[str, list[socket.socket]],
) -> None:
    """A PUT whose answer never came may have been applied: resent with the same
    resourceVersion it would fail with 409, read as a Lease lost that is still held."""
    host, accepted = silent_server
    kube = _kube(host)
    lease = V1Lease(metadata=V1ObjectMeta(name="l", resource_version="7"), spec=V1LeaseSpec(holder_identity="me"))
    with pytest.raises(urllib3.exceptions.MaxRetryError, match="Read timed out"):
        kube.coordination.replace_namespaced_lease("l", "ns", lease)
    assert len(accepted) == 1


def test_a_call_that_sets_its_own_deadline_keeps_it(silent_server: tuple[str, list[socket.socket]]) -> None:
    host, _ = silent_server
    client = ApiClient(_configuration(host))
    original = client.rest_client.request
    Kube(client, timeout=(2.0, 5.0))
    Kube(client, timeout=(2.0, 1.0))  # a second Kube over the same client: its deadline, not a chain
    rest: Any = client.rest_client  # untyped
    assert rest.unbounded_request == original
    with pytest.raises(urllib3.exceptions.MaxRetryError, match=r"read timeout=0\.2\b"):
        rest.request("GET", f"{host}/version", _request_timeout=(2.0, 0.2))
    with pytest.raises(urllib3.exceptions.MaxRetryError, match=r"read timeout=1\.0\b"):
        rest.request("GET", f"{host}/version")
