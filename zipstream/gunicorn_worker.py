"""gunicorn's gevent worker, plus two things it lacks: a deadline for a request's head, and a stopping
worker closes its idle keep-alive connections. It also makes the worker's memory budget for downloads
(memory.py) once gevent has patched `threading`.

**Request-head deadline (`HEADER_TIMEOUT`).** gunicorn's gevent worker waits for a request's line and
headers as long as its `keepalive` (75 s here), on a new connection too, so a client that connects and
then sends its head slowly or never ("slowloris") holds a connection for 75 s each time. gunicorn has no
setting for it (its `timeout` is the worker heartbeat). Here a new connection must deliver its complete
head within `HEADER_TIMEOUT` seconds (default 10) of being accepted, and on a kept-alive connection
within `HEADER_TIMEOUT` of the next request's first byte (waiting for that byte stays `keepalive`), as
nginx's `client_header_timeout` and Node's `headersTimeout` do. Past it, a client that had sent part of a
head gets `408 Request Timeout` (RFC 9110 §15.5.9) and the connection is closed; one that had sent
nothing is closed without a word (RFC 9112 §9.3.1). Request bodies have their own deadline, kept by the
app, which reads them (`BODY_TIMEOUT`, api.py); when it answers 408, this worker closes the connection
after the response (connections.py), which a WSGI app can't do itself.

**Idle connections at stop.** On SIGTERM gunicorn's gevent worker stops accepting and waits, up to
`GRACEFUL_TIMEOUT`, until its connection pool is empty. A keep-alive connection that is only waiting for
its next request holds a pool slot too, until gunicorn's `keepalive` (75 s) runs out: a proxy that keeps
connections open to its backends held every restart for 75 s, past Heroku's and Kubernetes' 30 s kill,
which then cut every download still in flight. Here the connections with no request in flight are shut
down as soon as the worker stops; those with a request finish it (gunicorn closes them after the
response, since the worker is no longer alive). A client that sends a request at that very moment gets
the closed connection that HTTP/1.1 allows any idle keep-alive connection to get (RFC 9112 §9.3.1), and
retries.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from types import TracebackType
from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker as _GeventWorker

from . import connections, memory
from .config import HEADER_TIMEOUT
from .peek import peek

# How often a worker looks whether it was told to stop; the base worker's own loop sleeps 1 s.
_STOP_POLL_SECONDS = 0.25
# Closing a connection whose request body was not read whole: how long what the client still sends is
# read and dropped after the response (Apache's lingering close waits 2 s too), so that closing with
# unread bytes (a TCP reset) does not destroy the response before the client has read it.
_LINGER_SECONDS = 2.0


class GeventWorker(_GeventWorker):  # type: ignore[misc]
    """`worker_class = "zipstream.gunicorn_worker.GeventWorker"`: gevent, closing idle connections at stop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle: set[socket.socket] = set()  # connections waiting for (the rest of) their next request
        self.header_timeout = HEADER_TIMEOUT.read(os.environ)  # gunicorn_conf.py refused a bad one already
        # The connection each handler greenlet serves, and how many heads it has waited for.
        self._connections: dict[Any, list[Any]] = {}

    def patch(self) -> None:
        """gevent's monkey-patching, then the worker's memory for downloads (MEMORY_BUDGET): made here, in
        the worker process and with gevent's locks, before any request can ask for it."""
        super().patch()
        memory.worker_budget(os.environ)

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        self._idle.add(client)
        self._connections[gevent.getcurrent()] = [client, 0]
        try:
            super().handle(listener, client, addr)
        finally:
            self._idle.discard(client)
            self._connections.pop(gevent.getcurrent(), None)

    def timeout_ctx(self) -> Any:
        """The wait for the next request's head (gunicorn's keep-alive loop enters it around `next(parser)`)."""
        connection = self._connections.get(gevent.getcurrent())
        if connection is None:
            return super().timeout_ctx()
        connection[1] += 1
        idle = self.header_timeout if connection[1] == 1 else self.cfg.keepalive
        return _HeadDeadline(connection[0], idle, self.header_timeout, self.log)

    def handle_request(self, listener_name: Any, req: Any, sock: socket.socket, addr: Any) -> None:
        self._idle.discard(sock)
        try:
            super().handle_request(listener_name, req, sock, addr)
        except TimeoutError:
            # A download's client took nothing for SEND_TIMEOUT (memory.ClientWindow.sending): its
            # response can't be finished, so the connection ends here, in one line rather than gunicorn's
            # "Socket error processing request" with a traceback.
            self.log.info("closing a connection whose client took no bytes for SEND_TIMEOUT")
            _shut_down(sock)
            raise StopIteration("the client took no bytes for SEND_TIMEOUT") from None
        finally:
            # Idle again until its next request. If the worker was told to stop while this request
            # ran, gunicorn may still keep the connection open (it decides before the response), so
            # the watcher below shuts it down too.
            self._idle.add(sock)
            closing = connections.take(sock)
        if closing:
            _linger_and_close(sock)
            # gunicorn's keep-alive loop ends on StopIteration ("Closing connection") and closes the socket.
            raise StopIteration("the app asked to close the connection after its response")

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


def _linger_and_close(sock: socket.socket) -> None:
    """End the sending side after the response, then drop what the client still sends for up to
    _LINGER_SECONDS, so the response is read before the connection closes (RFC 9112 §9.6)."""
    raw = getattr(sock, "_sock", sock)
    with contextlib.suppress(OSError):
        raw.shutdown(socket.SHUT_WR)
    with contextlib.suppress(OSError), gevent.Timeout(_LINGER_SECONDS, False):
        while sock.recv(65536):
            pass
    with contextlib.suppress(OSError):
        raw.shutdown(socket.SHUT_RD)


def _shut_down(sock: socket.socket) -> None:
    """End a connection a handler's greenlet still owns: its read ends, and gunicorn closes it.

    shutdown, not close, and on the OS socket under gevent's: gevent's own shutdown() also cancels the
    greenlet's wait with EBADF, which gunicorn logs as a socket error with a traceback.
    """
    raw = getattr(sock, "_sock", sock)
    with contextlib.suppress(OSError):
        raw.shutdown(socket.SHUT_RDWR)


class _HeadTimeout(BaseException):
    """Thrown into a handler whose request head is late. A BaseException (like gevent.Timeout), so
    that no `except Exception` on the way can swallow it."""


_REQUEST_TIMEOUT_BODY = json.dumps({"error": {
    "code": "request_timeout",
    "message": "the request's line and headers did not arrive in time (HEADER_TIMEOUT)",
}}).encode()
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(_REQUEST_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _REQUEST_TIMEOUT_BODY
)


class _HeadDeadline:
    """Around reading one request's head: `idle` seconds for its first byte, then `head` seconds for the
    rest. Past either, the read ends (gunicorn then closes the connection); a partly sent head is
    answered 408 first."""

    def __init__(self, sock: socket.socket, idle: float, head: float, log: Any) -> None:
        self.sock = sock
        self.idle = idle
        self.head = head
        self.log = log
        self.started = False  # a byte of this head has arrived
        self.thrown: _HeadTimeout | None = None

    def __enter__(self) -> _HeadDeadline:
        self.greenlet = gevent.getcurrent()
        self.loop = gevent.get_hub().loop
        self.timer = self.loop.timer(self.idle)
        self.timer.start(self._expire)
        self.readable = self.loop.io(self.sock.fileno(), 1)  # 1: readable
        # Bytes that came while the last response was finishing are read at once, without a trip
        # through the hub, so the watcher would never see them: the head's clock starts now. (What
        # lands between this look and that read still waits `idle`.)
        try:
            waiting = peek(self.sock.fileno())
        except OSError:
            waiting = None
        if waiting:
            self._first_byte()
        else:
            self.readable.start(self._first_byte)
        return self

    def _first_byte(self) -> None:  # in the hub
        self.readable.stop()
        self.started = True
        self.timer.close()
        self.timer = self.loop.timer(self.head)
        self.timer.start(self._expire)

    def _expire(self) -> None:  # in the hub
        self.thrown = _HeadTimeout()
        self.greenlet.throw(self.thrown)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        self.timer.close()
        self.readable.close()
        if error is None or error is not self.thrown:
            return False
        if self.started:
            self.log.debug("closing a connection whose request head did not arrive within HEADER_TIMEOUT")
            # Best effort and never blocking: a client that stopped reading must not hold us here too.
            with contextlib.suppress(OSError), gevent.Timeout(1, False):
                self.sock.sendall(_REQUEST_TIMEOUT)
        return True  # the read ends with no request: gunicorn's loop closes the connection
