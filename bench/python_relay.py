"""The least any Python relay under gevent does per byte, for B1's bound table: one upstream GET per request,
its body read with http.client's read1 (up to 1 MiB, a new bytes object each, as the service reads), the
CRC-32 computed (zlib-ng), each piece sent with sendall. No framing, no checks, no WSGI, no read-ahead.

`python -m bench.python_relay PORT UPSTREAM_PORT`: serves GET <path> from 127.0.0.1:UPSTREAM_PORT<path> on
127.0.0.1:PORT (HTTP/1.1, keep-alive) until killed.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import http.client  # noqa: E402 - after the patch
import socket  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from zlib_ng import zlib_ng  # noqa: E402

PIECE = 1 << 20


def _serve(client: socket.socket, upstream_port: int) -> None:
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


def main(argv: list[str]) -> None:
    port, upstream_port = int(argv[0]), int(argv[1])
    listener = socket.create_server(("127.0.0.1", port), backlog=64)
    while True:
        client, _ = listener.accept()
        gevent.spawn(_serve, client, upstream_port)


if __name__ == "__main__":
    main(sys.argv[1:])
