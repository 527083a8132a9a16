"""zipstream.preflight: every src stat-ed concurrently within one deadline, before the first byte.

The deadline's own parts (arithmetic, the 502/504 rule, the setting): tests/test_deadlines.py; the
bytes pre-flight may hold for the stream: tests/test_preflight_hold.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import requests

from zipstream.config import Config
from zipstream.deadline import Deadline
from zipstream.errors import ClientGone
from zipstream.models import FileRef
from zipstream.preflight import preflight
from zipstream.sources import build_sources

from .support.live import LiveServer
from .support.upstream import UpstreamServer

Serve = Callable[..., LiveServer]


def test_missing_source_fails_before_any_byte(serve: Serve, upstream: UpstreamServer) -> None:
    upstream.add("/ok.bin", b"x" * 1000)
    server = serve()
    response = requests.post(server.url("/bundle"), json={"files": [
        {"src": upstream.url("/ok.bin")}, {"src": upstream.url("/gone.bin")}, {"src": upstream.url("/gone2.bin")},
    ]}, timeout=30)
    assert response.status_code == 422
    assert response.headers["Content-Type"] == "application/json"
    srcs = [item["src"] for item in response.json()["error"]["sources"]]
    assert srcs == [upstream.url("/gone.bin"), upstream.url("/gone2.bin")]
    # Pre-flight read the small file once (its ranged GET), and nothing was fetched after the refusal.
    assert [(r.method, r.range) for r in upstream.requests_for("/ok.bin")] == [("GET", "bytes=0-65535")]


def test_preflight_cancelled_from_another_thread_stops_at_once(make_config: Callable[..., Config],
                                                               upstream: UpstreamServer) -> None:
    for index in range(50):
        upstream.add(f"/f{index}.bin", b"f")
    upstream.set_behaviour(latency=1.0)
    sources = build_sources(make_config())
    files = [FileRef(src=upstream.url(f"/f{index}.bin")) for index in range(50)]
    deadline = Deadline(30)
    threading.Timer(0.3, deadline.cancel).start()
    started = time.monotonic()
    with pytest.raises(ClientGone):
        preflight(files, sources, 4, deadline=deadline)
    assert time.monotonic() - started < 1.0  # the in-flight requests were closed, not waited for
    time.sleep(1.5)
    assert len(upstream.requests) <= 4  # only the first wave was ever sent
