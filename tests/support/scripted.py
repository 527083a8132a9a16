"""A raw TCP server on 127.0.0.1 that answers HTTP requests with scripted bytes, for wire-level tests.

Each accepted connection is numbered from 0; every request head read on it is recorded (`requests`,
as raw bytes), and the answer comes from `script(connection, index)`, the index counting requests on
that connection: bytes to send (the connection then waits for the next request), `CLOSE` (closed
without an answer; bytes ending in `CLOSE`: those bytes, then closed), or `SILENT` (nothing sent; the
connection stays open until the server stops).
Only what a well-behaved server can't be made to do: ordinary answers come from UpstreamServer.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType

CLOSE = b"<close>"
SILENT = b"<silent>"
Script = Callable[[int, int], bytes]


class ScriptedServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[tuple[int, bytes]] = []  # (connection number, request head)
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                number = self.connections
                self.connections += 1
                self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buffer = b""
        index = 0
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        chunk = conn.recv(65536)
                    except OSError:
                        return
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                with self._lock:
                    self.requests.append((number, head))
                answer = self.script(number, index)
                index += 1
                if answer == CLOSE:
                    return
                if answer == SILENT:
                    self._stopped.wait()
                    return
                if answer.endswith(CLOSE):  # the bytes before it, then the connection closed
                    conn.sendall(answer[:-len(CLOSE)])
                    return
                conn.sendall(answer)

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):  # already closed by its thread
                    conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


def answer(status: str = "200 OK", headers: tuple[str, ...] = (), body: bytes = b"",
           length: bool = True) -> bytes:
    """An HTTP/1.1 answer's bytes: `headers` as "Name: value" lines, a Content-Length unless `length` is False."""
    lines = [f"HTTP/1.1 {status}", *headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
