"""The bounded read-ahead of members: order, errors, early close, memory bound (in a real zip: test_stream.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from zipstream.prefetch import Prefetcher

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
    # A member is opened with its first grant of memory: endless members fill the read-ahead budget
    # before all four ahead have one.
    wait_for(lambda: {0, 1} <= bodies.opened, "read-ahead started")
    current.close()  # what archive.ZipPlan does when the download is closed
    prefetcher.close()
    assert prefetcher.join(5)
    assert prefetcher.running == 0
    assert bodies.closed == bodies.opened


def test_close_before_a_taken_member_is_iterated_still_ends_its_worker() -> None:
    bodies = Bodies([None] * 3)
    prefetcher = Prefetcher(bodies.open, 3, depth=2, budget=256 * 1024)
    prefetcher.take(0)  # never iterated: a generator that never started has no finally to run
    # A member opens with its first grant: endless members fill the budget before all have one.
    wait_for(lambda: len(bodies.opened) >= 2, "fetches started")
    prefetcher.close()
    assert prefetcher.join(5)
    assert bodies.closed == bodies.opened


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
    assert bodies.closed == bodies.opened


def test_a_chunk_larger_than_the_budget_still_passes() -> None:
    bodies = Bodies([4 * CHUNK])

    def big_chunks(index: int) -> Iterator[bytes]:
        yield b"".join(bodies.open(index))

    prefetcher = Prefetcher(big_chunks, 1, depth=1, budget=CHUNK)
    assert b"".join(prefetcher.take(0)) == bodies.expected(0)
    prefetcher.close()
