"""Holes found by the issue-14 attack pass (helper X), each through a real gunicorn."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import pytest

from .support.live import LiveServer


def _raw_post(server: LiveServer, path: str, content_type: str, body: bytes, finish: bool) -> bytes:
    """POST `body` as is after a `Transfer-Encoding: chunked` head; the whole answer (or what came in 15 s)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode() + body)
        if finish:  # the client sends no more: a body cut short
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


# Each was a 500 (and an "unexpected error" traceback in the log): gunicorn's chunked reader raised
# out of the MAX_BODY_BYTES guard.
MALFORMED_CHUNKED = [
    pytest.param(b"1\r\nab\r\n0\r\n\r\n", False, id="chunk-longer-than-its-size"),
    pytest.param(b"zz\r\n{}\r\n0\r\n\r\n", False, id="size-not-hex"),
    pytest.param(b"-2\r\n{}\r\n0\r\n\r\n", False, id="negative-size"),
    pytest.param("\u0662\r\n{}\r\n0\r\n\r\n".encode(), False, id="arabic-indic-digit-size"),
    pytest.param(b"2\r\n{}", True, id="cut-after-a-chunk"),
]


@pytest.mark.parametrize(("body", "finish"), MALFORMED_CHUNKED)
@pytest.mark.parametrize(("path", "content_type"), [
    ("/bundle", "application/json"),
    ("/", "application/x-www-form-urlencoded"),
    ("/", "multipart/form-data; boundary=x"),
])
def test_malformed_chunked_body_is_400_not_500(serve: Callable[..., LiveServer], body: bytes, finish: bool,
                                               path: str, content_type: str) -> None:
    server = serve()
    answer = _raw_post(server, path, content_type, body, finish)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 400 BAD REQUEST", answer[:300]
    assert json.loads(payload)["error"]["code"] == "bad_request"
    assert "unexpected error" not in server.log_text()
