"""Least-effort relays for B1's bound table, each in front of one upstream, one request at a time per
connection (HTTP/1.1, keep-alive).

`python -m bench.python_relay PORT UPSTREAM_PORT`: the least any Python relay under gevent does per byte:
one upstream GET per request, its body read with http.client's read1 (up to 1 MiB, a new bytes object
each, as the service reads), the CRC-32 computed (zlib-ng), each piece sent with sendall. No framing, no
checks, no WSGI, no read-ahead.

`python -m bench.python_relay PORT UPSTREAM_PORT splice`: no byte in user space at all: the body goes
from the upstream socket into a pipe and from the pipe into the client's socket (os.splice, Linux), so
no CRC either; blocking sockets, a thread per connection. What a relay costs without the copy through
user space that computing a CRC-32 needs.
"""

from __future__ import annotations

import sys

SPLICE = len(sys.argv) > 3 and sys.argv[3] == "splice"
if not SPLICE:
    from gevent import monkey

    monkey.patch_all()

import fcntl  # noqa: E402 - after the patch
import http.client  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402

from zlib_ng import zlib_ng  # noqa: E402

PIECE = 1 << 20
_F_SETPIPE_SZ = 1031  # fcntl.h (Linux)


def _copy(client: socket.socket, upstream_port: int) -> None:
    reader = client.makefile("rb")
    upstream = http.client.HTTPConnection("127.0.0.1", upstream_port)
    try:
        while request := reader.readline():
            path = request.split()[1].decode()
            while reader.readline() not in (b"\r\n", b""):
                pass
            upstream.request("GET", path)
            response = upstream.getresponse()
            length = int(response.getheader("Content-Length") or 0)
            client.sendall(b"HTTP/1.1 %d OK\r\nContent-Length: %d\r\n\r\n" % (response.status, length))
            crc = 0
            while piece := response.read1(PIECE):
                crc = zlib_ng.crc32(piece, crc)
                client.sendall(piece)
            response.read()  # marks the exchange done, so the connection is reused
    finally:
        upstream.close()
        client.close()


def _splice(client: socket.socket, upstream_port: int) -> None:
    reader = client.makefile("rb")
    upstream = socket.create_connection(("127.0.0.1", upstream_port))
    pipe_out, pipe_in = os.pipe()
    fcntl.fcntl(pipe_in, _F_SETPIPE_SZ, PIECE)
    try:
        while request := reader.readline():
            path = request.split()[1].decode()
            while reader.readline() not in (b"\r\n", b""):
                pass
            upstream.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += upstream.recv(4096)
            head, _, early = head.partition(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length + early)
            left = length - len(early)
            while left:
                moved = os.splice(upstream.fileno(), pipe_in, min(left, PIECE))
                if not moved:
                    raise ConnectionError("upstream closed early")
                pending = moved
                while pending:
                    pending -= os.splice(pipe_out, client.fileno(), pending)
                left -= moved
    finally:
        for descriptor in (pipe_out, pipe_in):
            os.close(descriptor)
        upstream.close()
        client.close()


def main(argv: list[str]) -> None:
    port, upstream_port = int(argv[0]), int(argv[1])
    listener = socket.create_server(("127.0.0.1", port), backlog=64)
    serve = _splice if SPLICE else _copy
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client, upstream_port), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1:])
