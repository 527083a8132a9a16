"""Clients that stop reading: a raw-socket download that reads its head and 4 KiB of body, then nothing
(the memory budget's and parking's through-gunicorn tests; bench B8 does the same with asyncio)."""

from __future__ import annotations

import socket


def stall(port: int, path: str, receive_buffer: int = 4096) -> tuple[socket.socket, bytes]:
    """A download of `path` that reads its head and 4 KiB of body, then nothing: (its socket, the body read).
    `receive_buffer`: SO_RCVBUF, set before connecting (a slow reader's small window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < 4096:
        data = sock.recv(4096)
        assert data, f"closed early: {received[:200]!r}"
        received += data
    return sock, received.partition(b"\r\n\r\n")[2]


def drain(sock: socket.socket, body: bytes) -> bytes:
    """The rest of a stalled download, read to its end (the socket is closed after): the whole body."""
    chunks = [body]
    with sock:
        while data := sock.recv(1 << 20):
            chunks.append(data)
    return b"".join(chunks)
