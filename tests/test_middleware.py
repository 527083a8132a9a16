"""The WSGI layers around the app: a fast 503 past WORKER_CONNECTIONS, the client's address behind proxies."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from zipstream import create_app, logs
from zipstream.config import Config, ConfigError
from zipstream.middleware import RequestLimit

from .support.live import LiveServer
from .support.upstream import UpstreamServer


def test_past_worker_connections_a_fast_503_not_silence(serve: Callable[..., LiveServer],
                                                         upstream: UpstreamServer) -> None:
    upstream.add("/slow.bin", b"s" * 2_000_000)
    upstream.set_behaviour("/slow.bin", stall_after=1_000_000, stall_seconds=4)
    server = serve(WORKER_CONNECTIONS="3")
    bundle = requests.post(server.url("/"), json={"files": [{"src": upstream.url("/slow.bin")}]}, timeout=10).json()
    downloads = [requests.get(server.url(f"/{bundle['id']}"), stream=True, timeout=30) for _ in range(3)]
    try:
        for response in downloads:  # three slow downloads hold the worker's three slots
            assert response.status_code == 200
            assert len(next(response.iter_content(1024))) > 0
        for path in ("/health-check", "/openapi.json", f"/{bundle['id']}"):
            started = time.monotonic()
            refused = requests.get(server.url(path), timeout=10)
            took = time.monotonic() - started
            assert refused.status_code == 503, (path, refused.text)
            assert refused.headers["Content-Type"] == "application/json"
            assert int(refused.headers["Retry-After"]) > 0
            error = refused.json()["error"]
            assert error["code"] == "unavailable"
            assert "WORKER_CONNECTIONS" in error["message"]
            print(f"{path} with WORKER_CONNECTIONS=3 held by slow downloads: {refused.status_code} in"
                  f" {took * 1000:.0f} ms")
            assert took < 1.0, (path, took)
    finally:
        for response in downloads:
            response.close()
    deadline = time.monotonic() + 15  # the slots free when the server notices the closed downloads
    while requests.get(server.url("/health-check"), timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "slots never freed"
        time.sleep(0.2)
    lines = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    assert any(line.get("event") == "request" and line.get("status") == 503 for line in lines)  # logged


def test_request_limit_counts_until_the_body_is_closed() -> None:
    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        if environ.get("PATH_INFO") == "/boom":
            raise RuntimeError("boom")
        start_response("200 OK", [])
        return iter([b"x"])

    limit = RequestLimit(app, 2)
    statuses: list[str] = []

    def start(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    first = limit({"PATH_INFO": "/"}, start)  # type: ignore[arg-type]
    second = limit({"PATH_INFO": "/"}, start)  # type: ignore[arg-type]
    third = limit({"PATH_INFO": "/"}, start)  # type: ignore[arg-type]
    assert statuses == ["200 OK", "200 OK", "503 SERVICE UNAVAILABLE"]
    assert b"WORKER_CONNECTIONS" in b"".join(third)
    first.close()  # type: ignore[attr-defined]
    first.close()  # type: ignore[attr-defined]  # a second close does not free a second slot
    assert limit.in_flight == 1
    with pytest.raises(RuntimeError):
        limit({"PATH_INFO": "/boom"}, start)  # type: ignore[arg-type]
    assert limit.in_flight == 1  # an exception frees its slot
    second.close()  # type: ignore[attr-defined]
    assert limit.in_flight == 0


def test_request_limit_is_per_process_and_thread_safe() -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    limit = RequestLimit(app, 1000)

    def hammer() -> None:
        for _ in range(500):
            limit({}, lambda *args: None).close()  # type: ignore[arg-type, attr-defined]

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert limit.in_flight == 0


def _logged_addr(config: Config, headers: dict[str, str], peer: str = "10.0.0.2") -> str:
    client = create_app(config).test_client()
    stream = io.StringIO()
    logs.configure("info", stream)
    with client.get("/health-check", headers=headers, environ_base={"REMOTE_ADDR": peer}) as response:
        response.get_data()  # the line is written when the body is closed
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines() if '"event": "request"' in text]
    return str(line["remote_addr"])


def test_forwarded_for_is_ignored_by_default(make_config: Callable[..., Config]) -> None:
    # Without a proxy that rewrites it, X-Forwarded-For is whatever the client wrote.
    assert _logged_addr(make_config(), {"X-Forwarded-For": "6.6.6.6"}) == "10.0.0.2"


def test_forwarded_for_trusted_for_the_configured_hops(make_config: Callable[..., Config]) -> None:
    one = make_config(TRUSTED_PROXY_HOPS="1")
    assert _logged_addr(one, {"X-Forwarded-For": "203.0.113.7"}) == "203.0.113.7"
    # The client's own X-Forwarded-For ("6.6.6.6") is kept by the proxy, which appends what it saw:
    # only the entries the trusted hops added count.
    assert _logged_addr(one, {"X-Forwarded-For": "6.6.6.6, 203.0.113.7"}) == "203.0.113.7"
    two = make_config(TRUSTED_PROXY_HOPS="2")
    assert _logged_addr(two, {"X-Forwarded-For": "6.6.6.6, 203.0.113.7, 10.0.0.9"}) == "203.0.113.7"
    # Fewer entries than trusted hops: not forwarded by the whole chain, so the peer's address stays.
    assert _logged_addr(two, {"X-Forwarded-For": "203.0.113.7"}) == "10.0.0.2"
    assert _logged_addr(one, {}) == "10.0.0.2"


@pytest.mark.parametrize(("name", "value"), [("TRUSTED_PROXY_HOPS", "-1"), ("TRUSTED_PROXY_HOPS", "one"),
                                             ("WORKER_CONNECTIONS", "0"), ("DB_IDLE_TIMEOUT", "0")])
def test_bad_settings_name_the_variable(make_config: Callable[..., Config], name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        make_config(**{name: value})
