"""Notice a client that hangs up while its answer is being prepared, and cancel the work for it.

No Flask: it is handed the WSGI environ and a `Deadline`. gunicorn puts the client's socket in the
environ (`gunicorn.socket`); a watcher (a greenlet under the gevent worker) looks at it every
`interval` seconds and cancels the deadline once the client is gone. Without that key (Flask's test
client, another server), or over TLS terminated by gunicorn itself, nothing is watched.

Gone means EOF or a reset. Readable bytes are not: the client may have pipelined its next request
(or left part of a body unread); they are peeked at, never consumed.
"""

from __future__ import annotations

import _socket
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from .deadline import Deadline

log = logging.getLogger(__name__)

INTERVAL = 0.25  # seconds between looks: pre-flight stops well within a second of a hang-up


def client_gone(sock: socket.socket) -> bool:
    """True if the peer closed or reset the connection; never blocks, never consumes a byte.

    One non-blocking `recv(1, MSG_PEEK | MSG_DONTWAIT)` on the raw descriptor: no `select()`, which
    refuses descriptors from 1024 up (FD_SETSIZE) — a worker holding that many connections took
    every live client for gone — and not through gevent's socket, which would wait for a byte.
    """
    try:
        raw = _socket.socket(fileno=sock.fileno())
    except OSError:
        return True  # already closed
    try:
        return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # nothing to read: still connected
    except OSError:
        return True  # reset
    finally:
        raw.detach()  # the descriptor stays the connection's own


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
