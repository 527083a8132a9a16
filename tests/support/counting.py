"""A third party that counts what it is sent: an HTTP server on 127.0.0.1 for amplification tests.

One asyncio loop in a thread, so ten thousand connections cost little and every request is logged
the moment its head arrives (a thread-per-connection server on a loaded machine logs late). Every
path answers the same way:

- `silent`: read the request, never answer (the connection stays open until `close()`);
- `busy`: answer `503 Service Unavailable` at once (keep-alive), as an overloaded server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True)
class Arrival:
    """One request: when its head arrived (time.monotonic()), its method and path."""

    at: float
    method: str
    path: str


class CountingUpstream:
    """`CountingUpstream("silent")`; `url(path)`, then `arrivals()`, `connections`, `close()`."""

    def __init__(self, behaviour: str = "silent") -> None:
        if behaviour not in ("silent", "busy"):
            raise ValueError(behaviour)
        self.behaviour = behaviour
        self.connections = 0
        self._arrivals: list[Arrival] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def arrivals(self, since: float = float("-inf")) -> list[Arrival]:
        with self._lock:
            return [arrival for arrival in self._arrivals if arrival.at >= since]

    def per_path(self) -> Counter[str]:
        return Counter(arrival.path for arrival in self.arrivals())

    def close(self) -> None:
        if self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)

    def __enter__(self) -> CountingUpstream:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0, backlog=4096)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stopped.wait()
            server.close()
            # Open connections (silent ones wait for ever) end with the loop: cancel their handlers.
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                method, path, *_rest = [*head.split(b"\r\n", 1)[0].decode("latin-1").split(" "), "", ""]
                with self._lock:
                    self._arrivals.append(Arrival(time.monotonic(), method, path))
                if self.behaviour == "silent":
                    await reader.read()  # until the client gives up and closes
                    return
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
