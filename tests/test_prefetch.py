"""The bounded read-ahead of members: order, errors, early close, memory bound; alone and in a real zip."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from zipstream.config import Config
from zipstream.download import PreparedZip, prepare
from zipstream.errors import StreamAborted
from zipstream.models import FileRef
from zipstream.prefetch import Prefetcher
from zipstream.sources import build_sources

from .support.live import LiveServer
from .support.upstream import UpstreamServer
from .support.waiting import wait_for

CHUNK = 64 * 1024


class Bodies:
    """Member bodies that count chunks produced and record being closed (a stand-in for upstreams)."""

    def __init__(self, sizes: list[int | None], fail_at: dict[int, int] | None = None) -> None:
        self.sizes = sizes  # None: endless
        self.fail_at = fail_at or {}  # member -> raise after this many chunks
        self.produced: dict[int, int] = {}
        self.opened: set[int] = set()
        self.closed: set[int] = set()
        self.lock = threading.Lock()

    @staticmethod
    def data(index: int, number: int, length: int) -> bytes:
        return bytes([(index * 31 + number) % 251]) * length

    def open(self, index: int) -> Iterator[bytes]:
        with self.lock:
            self.opened.add(index)
        return self._body(index)

    def _body(self, index: int) -> Iterator[bytes]:
        size = self.sizes[index]
        number = 0
        sent = 0
        try:
            while size is None or sent < size:
                if self.fail_at.get(index) == number:
                    raise OSError(f"member {index} cut after {number} chunks")
                length = CHUNK if size is None else min(CHUNK, size - sent)
                with self.lock:
                    self.produced[index] = self.produced.get(index, 0) + 1
                yield self.data(index, number, length)
                sent += length
                number += 1
        finally:
            with self.lock:
                self.closed.add(index)

    def expected(self, index: int) -> bytes:
        size = self.sizes[index]
        assert size is not None
        return b"".join(self.data(index, n, min(CHUNK, size - n * CHUNK)) for n in range(-(-size // CHUNK)))


def test_many_small_members_keep_order_and_bytes() -> None:
    sizes = [(i * 997) % (3 * CHUNK) for i in range(300)]
    bodies = Bodies(list(sizes))
    prefetcher = Prefetcher(bodies.open, len(sizes), depth=8, budget=1024 * 1024)
    try:
        for index in range(len(sizes)):
            assert b"".join(prefetcher.take(index)) == bodies.expected(index)
    finally:
        prefetcher.close()
    assert prefetcher.join(5)
    assert bodies.closed == set(range(len(sizes)))


def test_fetches_run_ahead_but_only_depth_members() -> None:
    bodies = Bodies([CHUNK] * 20)
    prefetcher = Prefetcher(bodies.open, 20, depth=3, budget=1024 * 1024)
    try:
        first = prefetcher.take(0)
        wait_for(lambda: bodies.closed >= {0, 1, 2, 3}, "members 1-3 fetched while 0 is not read yet")
        assert bodies.opened == {0, 1, 2, 3}
        assert b"".join(first) == bodies.expected(0)
    finally:
        prefetcher.close()
    assert prefetcher.join(5)


def test_members_already_in_memory_are_not_fetched_ahead() -> None:
    bodies = Bodies([CHUNK] * 10)
    local = {0, 2, 3, 7}  # e.g. small files pre-flight fetched whole: the consumer reads them itself
    prefetcher = Prefetcher(bodies.open, 10, depth=4, budget=1024 * 1024, local=local.__contains__)
    try:
        for index in range(10):
            if index not in local:
                assert b"".join(prefetcher.take(index)) == bodies.expected(index)
    finally:
        prefetcher.close()
    assert prefetcher.join(5)
    assert bodies.opened == set(range(10)) - local


def test_error_in_prefetched_member_surfaces_where_it_is_consumed() -> None:
    bodies = Bodies([3 * CHUNK] * 6, fail_at={2: 1})
    prefetcher = Prefetcher(bodies.open, 6, depth=4, budget=4 * 1024 * 1024)
    try:
        first = prefetcher.take(0)
        wait_for(lambda: 2 in bodies.closed, "member 2 failed in the background")
        # Members before the failing one are complete and correct.
        assert b"".join(first) == bodies.expected(0)
        assert b"".join(prefetcher.take(1)) == bodies.expected(1)
        failing = prefetcher.take(2)
        assert next(failing) == Bodies.data(2, 0, CHUNK)  # the chunk before the cut is delivered
        with pytest.raises(OSError, match="member 2 cut after 1 chunks"):
            next(failing)
    finally:
        prefetcher.close()
    assert prefetcher.join(5)


def test_early_close_ends_every_fetch_and_closes_every_body() -> None:
    bodies = Bodies([None] * 10)  # endless members: only closing can end them
    prefetcher = Prefetcher(bodies.open, 10, depth=4, budget=1024 * 1024)
    current = prefetcher.take(0)
    next(current)
    wait_for(lambda: bodies.opened == {0, 1, 2, 3, 4}, "read-ahead started")
    current.close()  # what archive.ZipPlan does when the download is closed
    prefetcher.close()
    assert prefetcher.join(5)
    assert prefetcher.running == 0
    assert bodies.closed == bodies.opened == {0, 1, 2, 3, 4}


def test_close_before_a_taken_member_is_iterated_still_ends_its_worker() -> None:
    bodies = Bodies([None] * 3)
    prefetcher = Prefetcher(bodies.open, 3, depth=2, budget=256 * 1024)
    prefetcher.take(0)  # never iterated: a generator that never started has no finally to run
    wait_for(lambda: len(bodies.opened) == 3, "all fetches started")
    prefetcher.close()
    assert prefetcher.join(5)
    assert bodies.closed == {0, 1, 2}


def test_a_huge_member_is_never_buffered_past_the_budget() -> None:
    budget = 512 * 1024
    bodies = Bodies([None, None, None])
    prefetcher = Prefetcher(bodies.open, 3, depth=2, budget=budget)
    try:
        huge = prefetcher.take(0)
        # Nobody reads: the workers must stop once the budget is used, not read the endless bodies.
        wait_for(lambda: prefetcher.peak_buffered + CHUNK > budget, "the buffer filled")
        time.sleep(0.2)  # give a runaway worker the chance to overshoot (no timing is asserted)
        assert prefetcher.peak_buffered <= budget
        # Buffered chunks plus the one each worker holds in its hand.
        assert sum(bodies.produced.values()) <= budget // CHUNK + 3
        # The reader drains member 0; its worker resumes, and the total stays within the budget.
        for _ in range(50):
            assert len(next(huge)) == CHUNK
        assert bodies.produced[0] >= 50
        assert prefetcher.peak_buffered <= budget
    finally:
        prefetcher.close()
    assert prefetcher.join(5)
    assert bodies.closed == {0, 1, 2}


def test_a_chunk_larger_than_the_budget_still_passes() -> None:
    bodies = Bodies([4 * CHUNK])

    def big_chunks(index: int) -> Iterator[bytes]:
        yield b"".join(bodies.open(index))

    prefetcher = Prefetcher(big_chunks, 1, depth=1, budget=CHUNK)
    assert b"".join(prefetcher.take(0)) == bodies.expected(0)
    prefetcher.close()


# -- through download.PreparedZip with a real upstream ------------------------------------------


def _config(tmp_path: Path, **env: str) -> Config:
    return Config.from_env({"SQLITE_PATH": str(tmp_path / "z.sqlite3"), "FS_INTERFACES": "https",
                            "HTTP_ALLOW_PRIVATE": "true", **env})


@pytest.mark.parametrize("compression", ["stored", "deflate"])
def test_zip_of_many_members_is_byte_correct_with_prefetch(
    tmp_path: Path, upstream: UpstreamServer, compression: str
) -> None:
    contents = {f"/f{i:03d}.bin": bytes([i % 256]) * (i * 37) for i in range(120)}
    for path, data in contents.items():
        upstream.add(path, data)
    upstream.set_behaviour(latency=0.005)
    config = _config(tmp_path, PREFETCH="6", PREFETCH_BYTES="262144")
    files = [FileRef(src=upstream.url(path)) for path in contents]
    prepared = prepare(files, "b.zip", compression, 0, build_sources(config), None, config)
    archive = zipfile.ZipFile(io.BytesIO(b"".join(prepared.stream())))
    assert archive.namelist() == [path[1:] for path in contents]
    for path, data in contents.items():
        assert archive.read(path[1:]) == data


def _prepared(tmp_path: Path, upstream: UpstreamServer, prefix: str, count: int, size: int,
              prefetch: int) -> tuple[PreparedZip, dict[str, bytes]]:
    """A stored zip of `count` members of `size` bytes served by `upstream`, and their contents by path."""
    contents = {f"/{prefix}{i}.bin": bytes([i]) * size for i in range(count)}
    for path, data in contents.items():
        upstream.add(path, data)
    config = _config(tmp_path, PREFETCH=str(prefetch))
    files = [FileRef(src=upstream.url(path)) for path in contents]
    return prepare(files, "b.zip", "stored", 0, build_sources(config), None, config), contents


def test_resume_from_the_middle_uses_prefetch_and_matches_the_whole(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    prepared, _ = _prepared(tmp_path, upstream, "r", 10, 50_000, prefetch=3)
    whole = b"".join(prepared.stream())
    assert b"".join(prepared.stream(123_456)) == whole[123_456:]
    assert b"".join(prepared.stream(1000, 300_000)) == whole[1000:300_000]


def test_failing_member_aborts_the_zip_after_earlier_members(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    prepared, contents = _prepared(tmp_path, upstream, "e", 6, 100_000, prefetch=4)
    upstream.set_behaviour("/e3.bin", status=404)  # after pre-flight: fails inside a read-ahead
    received = bytearray()

    def download() -> None:
        for chunk in prepared.stream():
            received.extend(chunk)

    with pytest.raises(StreamAborted, match=r"e3\.bin"):
        download()
    # Everything of members 0-2 went out before the abort; none of member 3's data did.
    for path in ("/e0.bin", "/e1.bin", "/e2.bin"):
        assert contents[path] in received
    assert bytes([3]) * 1000 not in received


def test_closing_the_download_early_closes_upstream_bodies(tmp_path: Path, upstream: UpstreamServer) -> None:
    size = 16 * 1024 * 1024
    contents = {f"/big{i}.bin": bytes([i]) * size for i in range(5)}
    for path, data in contents.items():
        upstream.add(path, data)
    config = _config(tmp_path, PREFETCH="4", PREFETCH_BYTES="1048576")
    files = [FileRef(src=upstream.url(path)) for path in contents]
    prepared = prepare(files, "b.zip", "stored", 0, build_sources(config), None, config)
    baseline = threading.active_count()
    stream = prepared.stream()
    next(stream)  # the first local header
    next(stream)  # member 0's first chunk: the read-ahead is running now
    # The read-ahead's GET asks no Range; pre-flight's (already logged) asked `bytes=0-0`.
    wait_for(lambda: None in upstream.ranges_for("/big4.bin"), "read-ahead reached member 4")
    stream.close()  # the client went away
    wait_for(lambda: threading.active_count() <= baseline, "prefetch workers ended")
    # Cut bodies were closed: no member was sent whole (sockets hold a few MiB at most).
    sent = upstream.bytes_sent
    assert all(sent.get(path, 0) < size for path in contents), sent


def test_prefetch_under_gunicorn_gevent_worker(
    serve: Callable[..., LiveServer], upstream: UpstreamServer
) -> None:
    contents = {f"/g{i:02d}.txt": f"file {i}\n".encode() * (i + 1) * 100 for i in range(60)}
    for path, data in contents.items():
        upstream.add(path, data)
    upstream.set_behaviour(latency=0.01)
    server = serve(PREFETCH="8", ACCESS_LOG="/dev/null")
    body = {"files": [{"src": upstream.url(path)} for path in contents], "compression": "deflate"}
    response = requests.post(server.url("/bundle"), json=body, timeout=30)
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    for path, data in contents.items():
        assert archive.read(path[1:]) == data
