"""Pre-flight deadlines (PREFLIGHT_TIMEOUT) and pre-flight cancelled when the client goes away.

A silent source (accepts, never answers), an endless one (headers, then a byte now and then) and
one whose answers come after the deadline all become a 504 JSON naming them before the deadline,
whatever HTTP_TIMEOUT and the retries would allow; a client that hangs up stops pre-flight's
upstream requests. End to end through gunicorn's gevent worker, plus the same rules in process.
These tests use nothing but the HTTP API, so they run unchanged against older code (they fail there).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient

from zipstream import create_app
from zipstream.config import Config

from .support.live import LiveServer, live_server
from .support.upstream import UpstreamServer

# Generous: the deadline is 2 s; a loaded 2-core machine gets 4 s more before this counts as a miss.
SLACK = 6.0


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """gunicorn (gevent) with a 2 s pre-flight deadline and the default 30 s HTTP_TIMEOUT."""
    with live_server({"PREFLIGHT_TIMEOUT": "2"}, tmp_path_factory.mktemp("deadline")) as server:
        yield server


def _one_off(server: LiveServer, srcs: list[str], timeout: float = SLACK) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.post(server.url("/bundle"), json={"files": [{"src": src} for src in srcs]},
                             timeout=timeout)
    return response, time.monotonic() - started


def _timed_out(response: requests.Response, src: str) -> dict[str, Any]:
    assert response.status_code == 504, response.text
    assert response.headers["Content-Type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "upstream_timeout"
    assert src in [failure["src"] for failure in error["sources"]]
    assert src in error["message"]
    return error


# -- end to end, gunicorn + gevent --


def test_a_silent_source_is_a_504_naming_it_within_the_deadline(live: LiveServer, upstream: UpstreamServer) -> None:
    upstream.add("/silent.bin", b"x")
    upstream.set_behaviour("/silent.bin", silent=True)
    src = upstream.url("/silent.bin")
    response, took = _one_off(live, [src])  # before: no answer for 122 s (4 x HTTP_TIMEOUT + backoff)
    error = _timed_out(response, src)
    assert "PREFLIGHT_TIMEOUT" in error["sources"][0]["reason"]
    assert 1.5 < took < SLACK


def test_an_endless_body_is_a_504_within_the_deadline(live: LiveServer, upstream: UpstreamServer) -> None:
    # Headers at once, then one byte every 0.2 s: no single read ever waits HTTP_TIMEOUT.
    upstream.add("/endless.bin", b"y" * 4096)
    upstream.set_behaviour("/endless.bin", trickle_seconds=0.2)
    src = upstream.url("/endless.bin")
    response, took = _one_off(live, [src])
    _timed_out(response, src)
    assert took < SLACK


def test_only_the_late_sources_are_named(live: LiveServer, upstream: UpstreamServer) -> None:
    upstream.add("/fine.bin", b"fine")
    upstream.add("/late.bin", b"late")
    upstream.set_behaviour("/late.bin", latency=5)
    fine, late = upstream.url("/fine.bin"), upstream.url("/late.bin")
    response, took = _one_off(live, [fine, late])
    error = _timed_out(response, late)
    assert [failure["src"] for failure in error["sources"]] == [late]
    assert took < SLACK


def test_a_healthy_bundle_is_untouched_by_the_deadline(live: LiveServer, upstream: UpstreamServer) -> None:
    upstream.add("/a.bin", b"a" * 1000)
    upstream.set_behaviour("/a.bin", latency=0.5)
    response, _took = _one_off(live, [upstream.url("/a.bin")])
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/zip"


def test_preflight_stops_within_a_second_of_the_client_hanging_up(
        serve: Callable[..., LiveServer], upstream: UpstreamServer) -> None:
    # 200 sources answering after 1 s each: 64 at a time (fewer than the sources, whatever the default),
    # pre-flight would run ~4 s. The deadline is long so only the hang-up can stop it.
    server = serve(PREFLIGHT_TIMEOUT="60", PREFLIGHT_CONCURRENCY="64")
    srcs = []
    for index in range(200):
        upstream.add(f"/slow{index}.bin", b"s")
        srcs.append(upstream.url(f"/slow{index}.bin"))
    upstream.set_behaviour(latency=1.0)
    body = json.dumps({"files": [{"src": src} for src in srcs]}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
        client.sendall(b"POST /bundle HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.5)
    hung_up = time.monotonic()
    time.sleep(1.0)
    already = len(upstream.requests)
    time.sleep(3.0)
    later = upstream.requests_since(hung_up + 1.0)
    # Before: 72 in that window (pre-flight went on through all 200 sources, 64 at a time).
    assert already < 200
    assert later <= 5, f"{later} upstream requests more than 1 s after the client hung up"
    assert "Traceback" not in server.log_text()


# -- in process (threads, no gevent): the same rules hold without gunicorn --


@pytest.fixture
def app_client(make_config: Callable[..., Config]) -> Callable[..., FlaskClient]:
    def make(**env: str) -> FlaskClient:
        return create_app(make_config(**env)).test_client()
    return make


def test_retries_fit_inside_the_deadline(app_client: Callable[..., FlaskClient], upstream: UpstreamServer) -> None:
    upstream.add("/silent.bin", b"x")
    upstream.set_behaviour("/silent.bin", silent=True)
    client = app_client(PREFLIGHT_TIMEOUT="2", HTTP_TIMEOUT="1")
    started = time.monotonic()
    response = client.post("/bundle", json={"files": [{"src": upstream.url("/silent.bin")}]})
    took = time.monotonic() - started
    assert response.status_code == 504, response.get_data(as_text=True)
    # 1 s, 0.2 s back-off, then an attempt capped at the 0.8 s left; before: 4 attempts, 6.3 s.
    assert len(upstream.requests_for("/silent.bin")) == 2
    assert took < 4


def test_a_5xx_is_not_retried_past_the_deadline(app_client: Callable[..., FlaskClient],
                                                upstream: UpstreamServer) -> None:
    upstream.add("/busy.bin", b"x")
    upstream.set_behaviour("/busy.bin", status=503)
    client = app_client(PREFLIGHT_TIMEOUT="1")
    started = time.monotonic()
    response = client.post("/bundle", json={"files": [{"src": upstream.url("/busy.bin")}]})
    took = time.monotonic() - started
    assert response.status_code == 502  # it answered, wrongly: the last answer stands
    assert "HTTP 503" in response.get_json()["error"]["sources"][0]["reason"]
    # 0 s, back-off 0.2 s, then the 0.6 s back-off would leave too little of the second: stop.
    # Before: all 4 attempts, 2.3 s of back-off, past the deadline.
    assert 1 <= len(upstream.requests_for("/busy.bin")) <= 2
    assert took < 1.5


def test_a_silent_s3_endpoint_is_a_504_and_botocore_stops_retrying(
        app_client: Callable[..., FlaskClient], upstream: UpstreamServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # The "S3 endpoint" accepts and never answers; S3_TIMEOUT (30 s) x botocore's 4 attempts would be 2 min.
    upstream.set_behaviour(silent=True)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", upstream.base_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = app_client(PREFLIGHT_TIMEOUT="2", FS_INTERFACES="s3", S3_PATH_STYLE="true")
    started = time.monotonic()
    response = client.post("/bundle", json={"files": [{"src": "s3://bucket/key.bin"}]})
    took = time.monotonic() - started
    assert response.status_code == 504, response.get_data(as_text=True)
    assert response.get_json()["error"]["sources"][0]["src"] == "s3://bucket/key.bin"
    assert took < SLACK
    time.sleep(1.0)
    assert len(upstream.requests) == 1  # no retry was started after the deadline


def test_a_connect_that_hangs_is_a_504_within_the_deadline(app_client: Callable[..., FlaskClient]) -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs, so connect() just waits
    # (loopback's stand-in for a black-holed address). Before: 4 x 10 s connect timeouts + back-off.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):  # fills the queue (nobody accepts)
            src = f"http://127.0.0.1:{port}/never.bin"
            client = app_client(PREFLIGHT_TIMEOUT="1.5")
            started = time.monotonic()
            response = client.post("/bundle", json={"files": [{"src": src}]})
            took = time.monotonic() - started
    assert response.status_code == 504, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "upstream_timeout"
    assert error["sources"][0]["src"] == src
    assert took < SLACK


def test_a_pipelined_request_is_not_a_hang_up(live: LiveServer, upstream: UpstreamServer) -> None:
    # The next request arrives while pre-flight still waits on the source: bytes to read are not EOF.
    upstream.add("/p.bin", b"p" * 100)
    upstream.set_behaviour("/p.bin", latency=1.0)
    body = json.dumps({"files": [{"src": upstream.url("/p.bin")}]}).encode()
    with socket.create_connection(("127.0.0.1", live.port), timeout=SLACK) as client:
        client.sendall(b"POST /bundle HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.5)
        client.sendall(b"GET /health-check HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := client.recv(65536):
            received += chunk
    first, _, rest = received.partition(b"\r\n")
    assert first == b"HTTP/1.1 200 OK", received[:300]
    assert b"application/zip" in received.split(b"\r\n\r\n", 1)[0]
    assert b"HTTP/1.1 200 OK" in rest  # the pipelined health-check was answered too
