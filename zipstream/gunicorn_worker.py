"""gunicorn's gevent worker, plus one thing it lacks: a stopping worker closes its idle keep-alive connections.

On SIGTERM gunicorn's gevent worker stops accepting and waits, up to `GRACEFUL_TIMEOUT`, until its
connection pool is empty. A keep-alive connection that is only waiting for its next request holds a
pool slot too, until gunicorn's `keepalive` (75 s) runs out: a proxy that keeps connections open to
its backends held every restart for 75 s, past Heroku's and Kubernetes' 30 s kill, which then cut
every download still in flight. Here the connections with no request in flight are shut down as soon
as the worker stops; those with a request finish it (gunicorn closes them after the response, since
the worker is no longer alive). A client that sends a request at that very moment gets the closed
connection that HTTP/1.1 allows any idle keep-alive connection to get (RFC 9112 §9.3.1), and retries.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker as _GeventWorker

# How often a worker looks whether it was told to stop; the base worker's own loop sleeps 1 s.
_STOP_POLL_SECONDS = 0.25


class GeventWorker(_GeventWorker):  # type: ignore[misc]
    """`worker_class = "zipstream.gunicorn_worker.GeventWorker"`: gevent, closing idle connections at stop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle: set[socket.socket] = set()  # connections waiting for (the rest of) their next request

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        self._idle.add(client)
        try:
            super().handle(listener, client, addr)
        finally:
            self._idle.discard(client)

    def handle_request(self, listener_name: Any, req: Any, sock: socket.socket, addr: Any) -> None:
        self._idle.discard(sock)
        try:
            super().handle_request(listener_name, req, sock, addr)
        finally:
            # Idle again until its next request. If the worker was told to stop while this request
            # ran, gunicorn may still keep the connection open (it decides before the response), so
            # the watcher below shuts it down too.
            self._idle.add(sock)

    def run(self) -> None:
        watcher = gevent.spawn(self._close_idle_when_stopping)
        try:
            super().run()
        finally:
            watcher.kill(block=False)

    def _close_idle_when_stopping(self) -> None:
        while self.alive:
            gevent.sleep(_STOP_POLL_SECONDS)
        while True:  # until run() returns: connections go idle when their last response ends
            while self._idle:
                _shut_down(self._idle.pop())
            gevent.sleep(_STOP_POLL_SECONDS)


def _shut_down(sock: socket.socket) -> None:
    """End a connection a handler's greenlet still owns: its read ends, and gunicorn closes it.

    shutdown, not close, and on the OS socket under gevent's: gevent's own shutdown() also cancels the
    greenlet's wait with EBADF, which gunicorn logs as a socket error with a traceback.
    """
    raw = getattr(sock, "_sock", sock)
    with contextlib.suppress(OSError):
        raw.shutdown(socket.SHUT_RDWR)
