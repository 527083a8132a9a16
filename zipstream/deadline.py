"""One pre-flight's time limit and its cancellation, shared by every source request it makes.

No Flask, no network code: the web layer makes a `Deadline` (PREFLIGHT_TIMEOUT) and may `cancel()` it
when the client hangs up; pre-flight (preflight.py) and the sources read it. Sources cap each attempt's
timeout with `cap()`, sleep their back-off with `sleep()`, refuse to start a request with `check()`,
and register what would unblock a request in flight with `aborting()`: when the deadline passes
(`expire()`, called by pre-flight) or is cancelled, those callbacks run, so a greenlet or thread
blocked on a socket wakes at once instead of waiting out HTTP_TIMEOUT.

Why wall-clock and not just socket timeouts: a socket timeout bounds one read, and a source that
sends a byte now and then (or a DNS lookup, which has no timeout at all) never trips it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator

from .errors import ClientGone, SourceTimeout

Clock = Callable[[], float]

_current = threading.local()  # greenlet-local under gevent (threading.local is patched)
_ids = itertools.count()


class Deadline:
    """`seconds` from now (None: no limit), under the name of the setting that chose it."""

    def __init__(self, seconds: float | None, setting: str = "PREFLIGHT_TIMEOUT",
                 clock: Clock = time.monotonic) -> None:
        self.seconds = seconds
        self.setting = setting
        self._clock = clock
        self._end = None if seconds is None else clock() + seconds
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._aborts: dict[int, Callable[[], None]] = {}
        self._stopped = False  # expired or cancelled: every abort has run, new ones run at once

    # -- time --
    def remaining(self) -> float:
        """Seconds left (0 when passed; infinity without a limit)."""
        if self._end is None:
            return math.inf
        return max(0.0, self._end - self._clock())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0

    @property
    def cancelled(self) -> bool:
        """The client went away: nothing pre-flight learns now will be used."""
        return self._cancelled.is_set()

    def cap(self, seconds: float) -> float:
        """`seconds`, or the time left if that is less (a timeout for one attempt)."""
        return min(seconds, self.remaining())

    def describe(self) -> str:
        """E.g. 'PREFLIGHT_TIMEOUT (20 s)', for error reasons."""
        return f"{self.setting} ({self.seconds:g} s)" if self.seconds is not None else self.setting

    def check(self, src: str) -> None:
        """Raise before a new upstream request that must not start: ClientGone, or SourceTimeout naming `src`."""
        if self.cancelled:
            raise ClientGone("the client closed the connection during pre-flight")
        if self.expired:
            raise SourceTimeout(src, f"no answer within {self.describe()}")

    def sleep(self, seconds: float) -> bool:
        """Wait `seconds` (a back-off) unless cancelled first; False if the wait would outlast the deadline
        (then it does not wait at all) or it was cancelled."""
        if seconds >= self.remaining():
            return False
        return not self._cancelled.wait(seconds)

    # -- stopping what is in flight --
    def cancel(self) -> None:
        """The client is gone: stop every request in flight and let no new one start."""
        self._cancelled.set()
        self._stop()

    def expire(self) -> None:
        """The time is up (pre-flight stopped waiting): stop every request still in flight."""
        self._stop()

    def _stop(self) -> None:
        with self._lock:
            self._stopped = True
            aborts, self._aborts = list(self._aborts.values()), {}
        for abort in aborts:
            with contextlib.suppress(Exception):  # best effort: the request may have just ended
                abort()

    @contextlib.contextmanager
    def aborting(self, abort: Callable[[], None]) -> Iterator[None]:
        """Within this block, `abort()` runs if the deadline expires or is cancelled (at once if it already has)."""
        key = next(_ids)
        with self._lock:
            stopped = self._stopped
            if not stopped:
                self._aborts[key] = abort
        if stopped:
            with contextlib.suppress(Exception):
                abort()
        try:
            yield
        finally:
            with self._lock:
                self._aborts.pop(key, None)

    # -- for libraries that cannot be handed one (botocore's event hooks, urllib3's connections) --
    @contextlib.contextmanager
    def applying(self) -> Iterator[Deadline]:
        """Make this the current thread's (greenlet's) deadline within the block; see `current()`."""
        previous = getattr(_current, "deadline", None)
        _current.deadline = self
        try:
            yield self
        finally:
            _current.deadline = previous


def current() -> Deadline | None:
    """The deadline the running thread (greenlet) works under, if any."""
    deadline: Deadline | None = getattr(_current, "deadline", None)
    return deadline


def shut(sock: socket.socket | None) -> None:
    """Wake whoever is blocked on `sock` (recv returns EOF; works across threads and greenlets)."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
