"""A TCP relay on loopback that can go silent, like a network that starts dropping packets.

`silence()` keeps every connection open and accepts new ones, but forwards no more
bytes either way: a client sees neither an answer nor an error until its own
deadline. `stop()` (or the context manager) closes everything and joins the threads.
"""

from __future__ import annotations

import select
import socket
import threading
from types import TracebackType
from typing import Self


class Relay:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._silent = threading.Event()
        self._stopping = threading.Event()

    def start(self) -> Self:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._spawn(self._accept_loop)
        return self

    def silence(self) -> None:
        self._silent.set()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            sockets = [*self._sockets, *([self._listener] if self._listener else [])]
        for sock in sockets:
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            try:
                upstream = self._track(socket.create_connection(self.target, timeout=10))
            except OSError:
                client.close()
                continue
            self._spawn(self._relay, client, upstream)

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        while not self._stopping.is_set():
            try:
                ready, _, _ = select.select(list(peers), [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if not self._silent.is_set():
                        peers[sock].sendall(data)
            except OSError:
                return
