"""A hostile bundle can't turn ZipStream into a request amplifier against a third party (issue 14).

Ten thousand sources on a third party that never answers (or answers 503 to everything) cost that
third party at most PREFLIGHT_CONCURRENCY requests per download when silent, at most 1 + len(BACKOFF)
per source when busy, and nothing once the answer has gone out or the client has left: pre-flight has
one deadline (PREFLIGHT_TIMEOUT), a concurrency limit, and is cancelled by a hang-up. Real gunicorn
(gevent worker); the third party is tests/support/counting.py, which logs each request as it arrives.
Requests are counted, not timed; bench/preflight_amplification.py has the figures at default settings.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from zipstream.config import Config
from zipstream.sources.http_transport import BACKOFF

from .support.counting import CountingUpstream
from .support.live import LiveServer, live_server

SOURCES = 10_000  # MAX_FILES's default: the largest bundle the service accepts
CONCURRENCY = Config().preflight_concurrency
# How long the third party is watched after the answer (or the hang-up) for requests that come late.
WATCH = 1.5


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """gunicorn with a 2 s pre-flight deadline; every other setting (HTTP_TIMEOUT 30 s, MAX_FILES) default."""
    with live_server({"PREFLIGHT_TIMEOUT": "2"}, tmp_path_factory.mktemp("amplification")) as server:
        yield server


def _files(third_party: CountingUpstream, count: int = SOURCES) -> dict[str, list[dict[str, str]]]:
    return {"files": [{"src": third_party.url(f"/file{index}.bin")} for index in range(count)]}


def _late(third_party: CountingUpstream, after: float) -> int:
    """Requests that reached the third party after `after`, watched for WATCH seconds more."""
    time.sleep(WATCH)
    return len(third_party.arrivals(since=after))


def test_ten_thousand_silent_sources_cost_the_third_party_one_request_per_worker(live: LiveServer) -> None:
    with CountingUpstream("silent") as third_party:
        answer = requests.post(live.url("/bundle"), json=_files(third_party), timeout=120)
        ended = time.monotonic()
        assert answer.status_code == 504, answer.text[:300]
        assert _late(third_party, ended) == 0
        # Each worker's one attempt waits until the deadline (HTTP_TIMEOUT 30 s > PREFLIGHT_TIMEOUT 2 s);
        # the other sources are never asked. Not 40,000 (10,000 x 4 attempts): 64.
        assert len(third_party.arrivals()) <= CONCURRENCY
        assert max(third_party.per_path().values()) == 1


def test_a_stored_silent_bundle_costs_the_same_per_download(live: LiveServer) -> None:
    with CountingUpstream("silent") as third_party:
        created = requests.post(live.url("/"), json=_files(third_party), timeout=120)
        assert created.status_code == 201, created.text[:300]
        assert third_party.arrivals() == []  # storing a bundle reads nothing
        for download in (1, 2):
            answer = requests.get(live.url(f"/{created.json()['id']}"), timeout=120)
            ended = time.monotonic()
            assert answer.status_code == 504
            assert _late(third_party, ended) == 0
            assert len(third_party.arrivals()) <= download * CONCURRENCY


def test_busy_sources_are_retried_a_bounded_number_of_times_and_never_after_the_answer(live: LiveServer) -> None:
    with CountingUpstream("busy") as third_party:
        answer = requests.post(live.url("/bundle"), json=_files(third_party), timeout=120)
        ended = time.monotonic()
        assert answer.status_code == 502, answer.text[:300]
        # Before: a request whose connection was being opened at the deadline was still sent, after
        # the answer had gone out (up to one per worker).
        assert _late(third_party, ended) == 0
        per_source = third_party.per_path()
        assert max(per_source.values()) <= 1 + len(BACKOFF)
        # Back-off (0.2 + 0.6 + 1.5 s per source retried three times) is what bounds the total: far
        # fewer sources are asked than the bundle names, and never 4 requests for each of them.
        assert len(third_party.arrivals()) < SOURCES


@pytest.mark.parametrize("behaviour", ["silent", "busy"])
def test_nothing_is_sent_a_second_after_the_client_leaves(tmp_path: Path, behaviour: str) -> None:
    # A long deadline, so only the hang-up can stop pre-flight.
    with CountingUpstream(behaviour) as third_party, \
            live_server({"PREFLIGHT_TIMEOUT": "60"}, tmp_path) as server:
        body = json.dumps(_files(third_party)).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
            client.sendall(b"POST /bundle HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                           + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            deadline = time.monotonic() + 30
            while not third_party.arrivals() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # pre-flight is under way
        left = time.monotonic()
        assert third_party.arrivals(), "pre-flight never started"
        time.sleep(1.0)
        assert _late(third_party, left + 1.0) == 0
        if behaviour == "silent":
            assert len(third_party.arrivals()) <= CONCURRENCY
        assert "Traceback" not in server.log_text()
