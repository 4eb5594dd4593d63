"""An HTTP CONNECT proxy on loopback that logs every tunnel it opens.

Only CONNECT is served (what git/curl use for https through a proxy); each
accepted request is recorded as "host:port" before bytes are relayed both ways.
Stopped by `stop()` (or the context manager): the listening socket and every
tunnel are closed and the threads joined.
"""

from __future__ import annotations

import socket

from testsupport.relay import LoopbackServer


class ConnectProxy(LoopbackServer):
    def __init__(self) -> None:
        super().__init__()
        self._tunnels: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tunnels(self) -> list[str]:
        with self._lock:
            return list(self._tunnels)

    def serve(self, client: socket.socket) -> None:
        client.settimeout(30)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 16384:
            chunk = client.recv(4096)
            if not chunk:
                client.close()
                return
            head += chunk
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, _, rest = request_line.partition(" ")
        target = rest.split(" ", 1)[0]
        if method != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            client.close()
            return
        host, _, port = target.rpartition(":")
        with self._lock:
            self._tunnels.append(target)
        try:
            upstream = self.track(socket.create_connection((host.strip("[]"), int(port)), timeout=30))
        except OSError:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            client.close()
            return
        client.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        self.relay(client, upstream)
