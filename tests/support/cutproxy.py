"""A TCP proxy on 127.0.0.1 that can lose its server side silently, as pgbouncer or HAProxy do in a failover.

`cut()` closes every server-side socket but keeps the client sides open and quiet: a client only
learns of it when it next sends something (then its socket is closed). Connections made after the
cut reach the server again.
"""

from __future__ import annotations

import select
import socket
import threading
from types import TracebackType


class CutProxy:
    """`CutProxy(("127.0.0.1", 5432))` listens on `port`; `cut()` loses every current server connection."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed by stop()
                return
            server = socket.create_connection(self.target)
            pair = _Pair(client, server)
            with self._lock:
                self._pairs.append(pair)
            threading.Thread(target=pair.pump, daemon=True).start()

    def cut(self) -> int:
        """Close the server side of every current connection, silently for the clients; how many."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.cut()
        return len(pairs)

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.close()

    def __enter__(self) -> CutProxy:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


class _Pair:
    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self._cut = threading.Event()
        self._server_gone = threading.Event()
        self._closed = threading.Event()

    def pump(self) -> None:
        try:
            while not self._closed.is_set():
                if self._cut.is_set() and not self._server_gone.is_set():
                    self.server.close()  # here, never under a select() of this thread
                    self._server_gone.set()
                watched = [self.client] if self._cut.is_set() else [self.client, self.server]
                readable, _, _ = select.select(watched, [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if self._cut.is_set() or not data:
                        # The server is gone: the client hears of it only now, as the socket closes.
                        self.close()
                        return
                    (self.server if sock is self.client else self.client).sendall(data)
        except OSError:
            self.close()
        finally:
            self._server_gone.set()

    def cut(self) -> None:
        self._cut.set()
        self._server_gone.wait(5)

    def close(self) -> None:
        self._closed.set()
        for sock in (self.client, self.server):
            sock.close()
