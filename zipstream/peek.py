"""Look at a socket without reading from it or waiting: the one way connections are checked here.

Not `select()`: it refuses descriptors from 1024 up (FD_SETSIZE), which a gevent worker holding that
many connections reaches. Not through gevent's socket object either: its `recv` waits for a byte.
"""

from __future__ import annotations

import _socket
import socket


def peek(fileno: int) -> bytes | None:
    """The next byte waiting on socket `fileno`, left unread: b"" at end of stream, None when none waits.

    Raises OSError for a reset connection or a descriptor that is not an open socket.
    """
    raw = _socket.socket(fileno=fileno)
    try:
        return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    finally:
        raw.detach()  # the descriptor stays its owner's
