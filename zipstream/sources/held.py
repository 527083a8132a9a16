"""File bytes that pre-flight already fetched, held in memory until their member streams out.

Pre-flight must learn every file's size and validators before the first byte of the zip is sent.
For an HTTP file one ranged GET (`Range: bytes=0-{n-1}`) answers that as well as a HEAD does, and
for a file of at most n bytes it also delivers the whole file: a bundle of 1,000 small files then
costs 1,000 upstream round trips instead of 2,000 (bench B2). A larger file's first n bytes are kept
too, and its member continues from byte n (Range + If-Range, the resume path), so no byte is read
twice.

Held bytes are bounded three times: per worker (`PREFLIGHT_HOLD_BYTES`, the `HoldBudget` the HTTP
source builds for itself), per download (half of that, so one huge bundle cannot starve every other
download of the fast path), and by the worker's memory for downloads (`MEMORY_BUDGET`, memory.py), of
which held bytes take the share for bytes held for later, never waiting for it. When any is spent,
pre-flight asks for one byte instead and the member is fetched while streaming, as before: the
budgets only change how many requests are sent, never a byte of the zip.

Only a download that streams every member right after pre-flight may hold (a whole-zip GET; a HEAD,
a range or a conditional request would hold bytes it never sends). Its pre-flight says so by running
each `stat` inside `HoldScope.applying()`: the `Source` contract has no parameter for it, and a source
that never holds (S3, file) never sees it. A source that holds asks `current()` for the download's
scope and `HoldScope.holding(budget)` for its share of its own budget.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from ..memory import MemoryBudget, worker_budget

_current = threading.local()  # greenlet-local under gevent (threading.local is patched)


class HoldBudget:
    """One worker's allowance of held bytes, shared by all its downloads, drawn from the worker's
    memory for downloads (`memory`, default memory.worker_budget()) as bytes held for later.

    The locks are re-entrant: a `Head` caught in a reference cycle is given back from `__del__`,
    which the garbage collector may run while this very thread is inside `reserve`.
    """

    def __init__(self, total: int, memory: MemoryBudget | None = None) -> None:
        self.total = total
        self.used = 0
        self._memory = memory
        self._lock = threading.RLock()

    @property
    def memory(self) -> MemoryBudget:
        return self._memory if self._memory is not None else worker_budget()

    def reserve(self, count: int) -> bool:
        with self._lock:
            if self.used + count > self.total or not self.memory.try_acquire(count):
                return False
            self.used += count
            return True

    def release(self, count: int) -> None:
        if count <= 0:
            return
        with self._lock:
            self.used -= count
        self.memory.release(count, ahead=True)


class HoldScope:
    """One download's permission to hold first bytes, and its share of each budget (half of it).

    Its pre-flight makes one (only when it streams every member right after) and runs each `stat`
    within `applying()`, in whichever thread (greenlet) runs it.
    """

    def __init__(self) -> None:
        self._holdings: dict[int, Holding] = {}
        self._lock = threading.Lock()

    def holding(self, budget: HoldBudget) -> Holding:
        """This download's share of `budget`: half of its total (the same object on every call)."""
        with self._lock:
            share = self._holdings.get(id(budget))
            if share is None:
                share = self._holdings[id(budget)] = Holding(budget, budget.total // 2)
            return share

    @property
    def used(self) -> int:
        """Bytes this download holds now, in every budget."""
        with self._lock:
            return sum(holding.used for holding in self._holdings.values())

    @contextlib.contextmanager
    def applying(self) -> Iterator[HoldScope]:
        """Make this the running thread's (greenlet's) scope within the block; see `current()`."""
        previous = getattr(_current, "scope", None)
        _current.scope = self
        try:
            yield self
        finally:
            _current.scope = previous


def current() -> HoldScope | None:
    """The hold scope of the pre-flight the running thread (greenlet) works for, if it may hold."""
    scope: HoldScope | None = getattr(_current, "scope", None)
    return scope


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
