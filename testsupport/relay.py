"""TCP servers on loopback that relay bytes: a base that owns the threads and sockets,
and `Relay`, which forwards to one address and can go silent.

`Relay.silence()` is a network that starts dropping packets: every connection stays
open and new ones are accepted, but no more bytes are forwarded either way, so a
client sees neither an answer nor an error until its own deadline. `stop()` (or the
context manager) closes every socket and joins the threads.
"""

from __future__ import annotations

import select
import socket
import threading
from types import TracebackType
from typing import Self


class LoopbackServer:
    """Accepts on a kernel-chosen loopback port; each connection is served by `serve` on a thread."""

    def __init__(self) -> None:
        self.port = 0
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self) -> Self:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def serve(self, client: socket.socket) -> None:
        raise NotImplementedError

    def track(self, sock: socket.socket) -> socket.socket:
        """Closed by `stop()`."""
        with self._lock:
            self._sockets.add(sock)
        return sock

    def relay(self, a: socket.socket, b: socket.socket, forward: threading.Event | None = None) -> None:
        """Copy bytes both ways until either side closes; while `forward` is clear, drop them."""
        peers = {a: b, b: a}
        try:
            while not self._stopping.is_set():
                readable, _, _ = select.select(list(peers), [], [], 0.5)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if forward is None or forward.is_set():
                        peers[sock].sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._spawn(self.serve, self.track(client))


class Relay(LoopbackServer):
    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.target = (host, port)
        self._forward = threading.Event()
        self._forward.set()

    def silence(self) -> None:
        self._forward.clear()

    def serve(self, client: socket.socket) -> None:
        try:
            upstream = self.track(socket.create_connection(self.target, timeout=10))
        except OSError:
            client.close()
            return
        self.relay(client, upstream, self._forward)
