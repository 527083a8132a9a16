"""Errors stay JSON until the first byte, resumes included (issue 13, point 5).

A resume inside a member starts with that member's bytes, so the first upstream read happens
before anything is sent: its failure must be the JSON 502 naming the src, never gunicorn's HTML
500 page. After the first byte, a failure cuts the connection (as before).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import requests
import urllib3

from .support.live import LiveServer
from .support.upstream import UpstreamServer

Serve = Callable[..., LiveServer]


def _bundle(server: LiveServer, upstream: UpstreamServer) -> tuple[str, str, int]:
    """A one-member bundle downloaded once in full (so resumes of it are vouched): url, ETag, length."""
    upstream.add("/a.bin", os.urandom(300_000))
    created = requests.post(server.url("/"), json={"files": [{"src": upstream.url("/a.bin")}]}, timeout=30)
    assert created.status_code == 201, created.text
    url = server.url(f"/{created.json()['id']}")
    whole = requests.get(url, timeout=30)
    assert whole.status_code == 200
    return url, whole.headers["ETag"], len(whole.content)


def test_a_resume_whose_first_read_fails_is_a_json_502_naming_the_src(serve: Serve,
                                                                     upstream: UpstreamServer) -> None:
    server = serve()
    url, etag, _ = _bundle(server, upstream)
    upstream.set_behaviour("/a.bin", read_status=501)  # HEAD (pre-flight) answers; reading fails
    for headers in ({"Range": "bytes=150000-", "If-Range": etag}, {"Range": "bytes=150000-"},
                    {"Range": "bytes=100-199"}):
        response = requests.get(url, headers=headers, timeout=30)
        assert response.status_code == 502, (headers, response.status_code, response.text[:300])
        assert response.headers["Content-Type"] == "application/json"
        error = response.json()["error"]
        assert error["code"] == "upstream_error"
        assert error["sources"][0]["src"] == upstream.url("/a.bin")
    assert "Traceback" not in server.log_text()


def test_after_the_first_byte_a_failure_still_cuts_the_connection(serve: Serve, upstream: UpstreamServer) -> None:
    """A resume that starts at the member's local header sends that header first: the read failing
    after it cannot become an error page, so the response is cut short of its Content-Length."""
    server = serve()
    url, etag, length = _bundle(server, upstream)
    upstream.set_behaviour("/a.bin", read_status=501)
    with requests.get(url, headers={"Range": "bytes=1-", "If-Range": etag}, stream=True, timeout=30) as response:
        assert response.status_code == 206
        received = b""
        with contextlib.suppress(urllib3.exceptions.HTTPError):  # "connection broken": the expected cut
            for chunk in response.raw.stream(65536, decode_content=False):
                received += chunk
    assert 0 < len(received) < length - 1
