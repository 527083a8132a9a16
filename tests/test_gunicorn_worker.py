"""The gevent worker's request-head deadline (HEADER_TIMEOUT), on a real gunicorn."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import requests

from .support.live import LiveServer

REQUEST = b"GET /health-check HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
# How long a client here waits for the server to act: far beyond HEADER_TIMEOUT=1, far below
# gunicorn's keepalive (75 s), which was the only limit before.
PATIENCE = 20


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout if it never does)."""
    sock.settimeout(PATIENCE)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _response(sock: socket.socket) -> bytes:
    """One response's head and its (small) body, the connection left open."""
    sock.settimeout(PATIENCE)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(line.lower().split(b":", 1) for line in head.split(b"\r\n")[1:])
    length = int(fields[b"content-length"])
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_a_client_that_never_finishes_its_head_is_cut_off_while_others_are_served(
        serve: Callable[..., LiveServer]) -> None:
    server = serve(HEADER_TIMEOUT="1")
    address = ("127.0.0.1", server.port)
    with socket.create_connection(address) as stalled, socket.create_connection(address) as silent, \
            socket.create_connection(address) as trickle:
        stalled.sendall(b"GET /health-check HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the blank line never comes
        # Meanwhile the same (only) worker serves others.
        assert requests.get(server.url("/health-check"), timeout=5).status_code == 200
        for byte in b"GET /health-check HTTP/1.1\r\n":  # a steady trickle counts from its first byte
            try:
                trickle.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
        answer = _until_closed(stalled)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b'"code": "request_timeout"' in answer or b'"code":"request_timeout"' in answer, answer
        assert b"HEADER_TIMEOUT" in answer
        assert _until_closed(silent) == b""  # connected, sent nothing: closed without a word
        assert _until_closed(trickle).startswith(b"HTTP/1.1 408 ")
    assert requests.get(server.url("/health-check"), timeout=5).status_code == 200


def test_an_idle_keep_alive_connection_waits_for_keepalive_not_header_timeout(
        serve: Callable[..., LiveServer]) -> None:
    """Between requests a connection may idle for gunicorn's keepalive (75 s); HEADER_TIMEOUT counts from
    the next request's first byte."""
    server = serve(HEADER_TIMEOUT="1")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(REQUEST)
        assert _response(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(2.5)  # idle, past HEADER_TIMEOUT
        sock.sendall(REQUEST)
        assert _response(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(REQUEST[:10])  # then a head that stalls
        assert _until_closed(sock).startswith(b"HTTP/1.1 408 ")
