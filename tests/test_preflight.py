"""zipstream.preflight: every src stat-ed concurrently within one deadline, before the first byte.

The deadline's own parts (arithmetic, the 502/504 rule, the setting): tests/test_deadlines.py; the
bytes pre-flight may hold for the stream: tests/test_preflight_hold.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from zipstream.config import Config
from zipstream.deadline import Deadline
from zipstream.errors import ClientGone, SourcesFailed
from zipstream.models import FileRef
from zipstream.preflight import preflight
from zipstream.sources import HoldScope, SourceInfo, Sources, build_sources
from zipstream.sources.held import HoldBudget

from .support.live import LiveServer
from .support.upstream import UpstreamServer
from .support.waiting import wait_for

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


class GatedSource:
    """A backend whose `stat` waits until the test opens its gate: what pre-flight asks, how many at once,
    and when, made visible. Each file it describes holds 10 bytes of `budget` (as the HTTP source holds
    small files), so what pre-flight gives back shows in `budget.used`."""

    schemes = ("gated",)

    def __init__(self, budget: HoldBudget | None = None) -> None:
        self.gate = threading.Event()
        self.budget = budget
        self.asked: list[str] = []
        self.in_flight = 0
        self.most = 0
        self._lock = threading.Lock()

    def check(self, src: str) -> None:
        pass

    def stat(self, src: str, deadline: Deadline | None = None) -> list[SourceInfo]:
        with self._lock:
            self.asked.append(src)
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            if src.endswith("/broken"):
                raise RuntimeError("a bug in a backend")
            if not src.endswith("/quick"):
                self.gate.wait(10)
            head = None
            if self.budget is not None:
                holding = HoldScope().holding(self.budget)
                assert holding.reserve(10)
                head = holding.keep(b"0123456789", 10)
            return [SourceInfo(src=src, name="f", size=10, head=head)]
        finally:
            with self._lock:
                self.in_flight -= 1

    def open(self, info: SourceInfo, start: int = 0) -> Iterator[bytes]:
        raise NotImplementedError


def test_no_more_srcs_are_asked_at_once_than_the_concurrency() -> None:
    backend = GatedSource()
    files = [FileRef(src=f"gated://host/{index}") for index in range(20)]
    threading.Thread(target=lambda: (wait_for(lambda: backend.in_flight == 3, "3 srcs in flight"),
                                     time.sleep(0.2), backend.gate.set()), daemon=True).start()
    stats = preflight(files, Sources([backend]), 3)
    assert [infos[0].src for infos in stats] == [ref.src for ref in files]
    assert backend.most == 3  # a fourth would have been asked while the first three waited
    assert sorted(backend.asked) == sorted(ref.src for ref in files)


def test_srcs_queued_at_the_deadline_are_never_asked_and_are_named() -> None:
    backend = GatedSource()
    files = [FileRef(src=f"gated://host/{index}") for index in range(10)]
    with pytest.raises(SourcesFailed) as failed:
        preflight(files, Sources([backend]), 2, deadline=Deadline(0.3))
    backend.gate.set()
    time.sleep(0.2)
    assert len(backend.asked) == 2  # the two in flight at the deadline; nothing after the answer
    reasons = [failure["reason"] for failure in failed.value.details["sources"]]
    assert reasons[:2] == ["no answer within PREFLIGHT_TIMEOUT (0.3 s)"] * 2
    assert reasons[2:] == ["not checked: PREFLIGHT_TIMEOUT (0.3 s) ran out first"] * 8


def test_an_answer_that_comes_after_the_deadline_gives_its_held_bytes_back() -> None:
    budget = HoldBudget(1000)
    backend = GatedSource(budget)
    files = [FileRef(src="gated://host/quick"), FileRef(src="gated://host/slow")]
    with pytest.raises(SourcesFailed):
        preflight(files, Sources([backend]), 2, deadline=Deadline(0.3))
    assert budget.used == 0  # the quick file's bytes went back with the failure
    backend.gate.set()  # the slow one answers now, holding bytes nobody will stream
    wait_for(lambda: backend.in_flight == 0, "the late answer")
    wait_for(lambda: budget.used == 0, "the late answer's bytes back in the budget")


def test_an_unexpected_error_is_raised_with_every_held_byte_given_back() -> None:
    budget = HoldBudget(1000)
    backend = GatedSource(budget)
    backend.gate.set()
    files = [FileRef(src=f"gated://host/{index}") for index in range(5)] + [FileRef(src="gated://host/broken")]
    with pytest.raises(RuntimeError, match="a bug in a backend"):
        preflight(files, Sources([backend]), 4)
    # Given back before the error travels (its traceback keeps pre-flight's frames alive), not when
    # the garbage collector gets to them.
    assert budget.used == 0


def test_no_srcs_no_workers() -> None:
    assert preflight([], Sources([GatedSource()]), 4) == []
