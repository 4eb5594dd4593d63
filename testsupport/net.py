"""Loopback ports: always chosen by the kernel, never fixed."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nobody listens on right now. It is released before the caller binds it,
    so a server that can lose the race retries on a collision."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
