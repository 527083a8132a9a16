"""Notice a client that hangs up while its answer is being prepared, and cancel the work for it.

No Flask: it is handed the WSGI environ and a `Deadline`. gunicorn puts the client's socket in the
environ (`gunicorn.socket`); a watcher (a greenlet under the gevent worker) looks at it every
`interval` seconds and cancels the deadline once the client is gone. Without that key (Flask's test
client, another server), or over TLS terminated by gunicorn itself, nothing is watched.

Gone means EOF or a reset. Readable bytes are not: the client may have pipelined its next request
(or left part of a body unread); they are peeked at, never consumed.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from .deadline import Deadline
from .peek import peek

log = logging.getLogger(__name__)

INTERVAL = 0.25  # seconds between looks: pre-flight stops well within a second of a hang-up


def client_gone(sock: socket.socket) -> bool:
    """True if the peer closed or reset the connection; never blocks, never consumes a byte."""
    try:
        return peek(sock.fileno()) == b""  # None: nothing to read; a byte: a pipelined request
    except OSError:
        return True  # reset, or the socket is already closed


@contextlib.contextmanager
def watching(environ: Mapping[str, Any], deadline: Deadline, interval: float = INTERVAL) -> Iterator[None]:
    """Within the block, cancel `deadline` as soon as the client of this WSGI request hangs up."""
    sock = environ.get("gunicorn.socket")
    # TLS sockets refuse MSG_PEEK (and their bytes are records, not the request): not watched.
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.wait(interval):
            if client_gone(sock):
                log.info("client hung up during pre-flight; cancelling it")
                deadline.cancel()
                return

    watcher = threading.Thread(target=watch, name="client-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
