"""File bytes that pre-flight already fetched, held in memory until their member streams out.

Pre-flight must learn every file's size and validators before the first byte of the zip is sent.
For an HTTP file one ranged GET (`Range: bytes=0-{n-1}`) answers that as well as a HEAD does, and
for a file of at most n bytes it also delivers the whole file: a bundle of 1,000 small files then
costs 1,000 upstream round trips instead of 2,000 (bench B2). A larger file's first n bytes are kept
too, and its member continues from byte n (Range + If-Range, the resume path), so no byte is read
twice.

Held bytes are bounded twice: per worker (`PREFLIGHT_HOLD_BYTES`) and per download (half of that,
so one huge bundle cannot starve every other download of the fast path). When the budget is spent,
pre-flight falls back to HEAD and the member is fetched while streaming, as before: the budget only
changes how many requests are sent, never a byte of the zip.
"""

from __future__ import annotations

import threading


class HoldBudget:
    """One worker's allowance of held bytes, shared by all its downloads.

    The locks are re-entrant: a `Head` caught in a reference cycle is given back from `__del__`,
    which the garbage collector may run while this very thread is inside `reserve`.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._lock = threading.RLock()

    def reserve(self, count: int) -> bool:
        with self._lock:
            if self.used + count > self.total:
                return False
            self.used += count
            return True

    def release(self, count: int) -> None:
        with self._lock:
            self.used -= count


class Holding:
    """One download's share of the worker's budget."""

    def __init__(self, budget: HoldBudget, limit: int) -> None:
        self._budget = budget
        self.limit = limit
        self.used = 0
        self._lock = threading.RLock()

    def reserve(self, count: int) -> bool:
        with self._lock:
            if self.used + count > self.limit or not self._budget.reserve(count):
                return False
            self.used += count
            return True

    def release(self, count: int) -> None:
        if count <= 0:
            return
        with self._lock:
            self.used -= count
        self._budget.release(count)

    def keep(self, data: bytes, reserved: int) -> Head:
        """Hold `data` on a reservation of `reserved` bytes (at least len(data)); the rest goes back."""
        self.release(reserved - len(data))
        return Head(data, self)


class Head:
    """The first bytes of one file (or all of it), handed over once, then given back to the budget."""

    __slots__ = ("_data", "_holding", "size")

    def __init__(self, data: bytes, holding: Holding) -> None:
        self._data: bytes | None = data
        self._holding = holding
        self.size = len(data)

    def take(self) -> bytes | None:
        """The bytes, the first time; None after that (or after `discard`)."""
        data, self._data = self._data, None
        if data is not None:
            self._holding.release(len(data))
        return data

    def discard(self) -> None:
        self.take()

    def __del__(self) -> None:  # a download that ended without streaming (HEAD, 304, an error)
        self.discard()
