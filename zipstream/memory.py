"""One worker's memory for downloads: every byte it holds for them is granted from one budget.

A gevent worker serves thousands of downloads at once, and what it holds for each one is bytes read
from upstream and not yet handed to the client's socket: the chunk going out, the chunks read ahead
(prefetch.py), the first bytes pre-flight kept (sources/held.py). Bounding that per download bounds
nothing when 10,000 clients stop reading. So each of those bytes is granted, before it is read, from
the worker's `MemoryBudget` (`MEMORY_BUDGET` bytes, `worker_budget()`), and given back when the
download no longer references it:

- **the chunk going out** is granted by blocking `acquire`: first come, first served (FIFO), and a
  download that can't have it waits (back-pressure) instead of growing the worker;
- **bytes held for later** (read-ahead, pre-flight holds) are granted by `try_acquire`, which never
  waits and never passes a download that does; they may use at most `ahead_limit` (half the budget),
  so what slow downloads read ahead never leaves the downloads that stream nothing to send. Refused,
  a download reads without read-ahead or hold: other requests, never other bytes.

A client that stops reading stops its download before the next chunk is read (`ClientWindow`: the
socket must be writable first), and the size of that next read follows what the client drained
(`ClientWindow.read_size`), so a stalled download keeps one small chunk, not a megabyte.

Each download books its grants in an `Account`, whose `close()` (in the stream's `finally`) gives back
whatever is still booked, however the download ended. No Flask here.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import ssl
import struct
import termios
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from . import counters
from .chunks import CHUNK_SIZE
from .config import MEMORY_BUDGET
from .errors import ClientStalled
from .peek import peek

log = logging.getLogger(__name__)

# A download that waits for memory checks this often whether its client is still there (seconds).
WAIT_POLL = 1.0
# The "downloads are waiting for memory" line is logged at most this often per worker (seconds).
WAIT_LOG_EVERY = 10.0
# A download waiting for its client asks this often whether to park (stream.ZipStream: give back all it
# holds but the connection, and go on from where it is once the client reads again) (seconds).
PARK_POLL = 1.0
# A download refused a bigger read counts as pressure on the budget for this long (seconds): long enough
# for the downloads waiting for their clients to see it (PARK_POLL) and park.
PRESSED_FOR = 2.0
# Reads shrink to what the client drained, but not below this: a read costs about the same CPU whatever
# its size, and a stalled download keeps about this much (10,000 of them: 80 MiB; bench B8).
MIN_READ = 8 * 1024


class MemoryBudget:
    """`total` bytes granted to downloads, first come first served; `ahead_limit` of them (default half)
    at most for bytes held for later. Thread- and greenlet-safe.

    The lock is re-entrant: a pre-flight `Head` caught in a reference cycle gives its bytes back from
    `__del__`, which the garbage collector may run while this very thread is inside the lock.
    """

    def __init__(self, total: int, ahead_limit: int | None = None) -> None:
        self._lock = threading.RLock()
        self._queue: deque[_Waiter] = deque()
        self.used = 0  # bytes granted now (every kind)
        self.ahead = 0  # of which held for later
        self.peak = 0  # most bytes granted at once
        self.waits = 0  # blocking acquires that had to wait
        self._short_at = -1e9  # when a download last read less than it wanted, for want of room
        self._logged = 0.0
        self.total = 0
        self.ahead_limit = 0
        self.resize(total, ahead_limit)

    def resize(self, total: int, ahead_limit: int | None = None) -> None:
        """Set the budget (bytes); what is granted stays granted."""
        with self._lock:
            self.total = max(1, total)
            self.ahead_limit = self.total // 2 if ahead_limit is None else min(ahead_limit, self.total)
            counters.MEMORY_BUDGET.set(self.total)
            self._grant_waiters()

    @property
    def waiting(self) -> int:
        """Acquires waiting now."""
        return len(self._queue)

    def pressed(self) -> bool:
        """Downloads want more than there is: one waits for memory now, or one was refused a bigger
        read within the last PRESSED_FOR s (a client that drains fast, held to small reads)."""
        return bool(self._queue) or time.monotonic() - self._short_at < PRESSED_FOR

    def try_acquire(self, count: int, ahead: bool = True) -> bool:
        """Grant `count` bytes if they fit now and nobody waits: held for later (`ahead`, within
        `ahead_limit` too), or more for the chunk going out of a download that has some already."""
        with self._lock:
            if self._queue or self.used + count > self.total or (ahead and self.ahead + count > self.ahead_limit):
                if not ahead:
                    self._short_at = time.monotonic()
                return False
            if ahead:
                self.ahead += count
            self._add(count)
            return True

    def acquire(self, count: int, cancelled: Callable[[], bool] | None = None) -> bool:
        """Grant `count` bytes for the chunk going out, waiting (FIFO) until they fit; False if `cancelled()`
        turned true meanwhile (looked at every WAIT_POLL s). A request larger than the whole budget is
        granted once nothing else is."""
        with self._lock:
            if not self._queue and self._fits(count):
                self._add(count)
                return True
            waiter = _Waiter(count)
            self._queue.append(waiter)
            self.waits += 1
            counters.MEMORY_WAITS.inc()
            counters.MEMORY_WAITING.set(len(self._queue))
            self._log_wait()
        try:
            while not waiter.event.wait(WAIT_POLL):
                if cancelled is not None and cancelled():
                    break
        finally:
            with self._lock:
                if not waiter.granted:
                    self._queue.remove(waiter)
                    self._grant_waiters()  # the next in line may fit now
                counters.MEMORY_WAITING.set(len(self._queue))
        return waiter.granted

    def release(self, count: int, ahead: bool = False) -> None:
        """Give back `count` bytes (`ahead`: granted by try_acquire) and wake whoever now fits, in order."""
        if count <= 0:
            return
        with self._lock:
            self.used -= count
            if ahead:
                self.ahead -= count
            counters.MEMORY_GRANTED.set(self.used)
            self._grant_waiters()

    # -- with the lock held --
    def _fits(self, count: int) -> bool:
        return self.used + count <= self.total or self.used == 0

    def _add(self, count: int) -> None:
        self.used += count
        if self.used > self.peak:
            self.peak = self.used
            counters.MEMORY_PEAK.set(self.peak)
        counters.MEMORY_GRANTED.set(self.used)

    def _grant_waiters(self) -> None:
        while self._queue and self._fits(self._queue[0].count):
            waiter = self._queue.popleft()
            self._add(waiter.count)
            waiter.granted = True
            waiter.event.set()

    def _log_wait(self) -> None:
        now = time.monotonic()
        if now - self._logged >= WAIT_LOG_EVERY:
            self._logged = now
            log.warning("downloads are waiting for memory: %d waiting, %d of %d bytes granted (MEMORY_BUDGET), "
                        "%d of them read ahead or held", len(self._queue), self.used, self.total, self.ahead,
                        extra={"event": "memory_wait", "waiting": len(self._queue), "granted": self.used,
                               "budget": self.total})


class _Waiter:
    __slots__ = ("count", "event", "granted")

    def __init__(self, count: int) -> None:
        self.count = count
        self.event = threading.Event()
        self.granted = False


class Account:
    """One download's grants from a budget: what it holds now, given back in full by `close()`.

    Its grant for the chunk going out (`out`, `next_read` / `streamed`) covers the chunk the layers
    above still hold (the zip writer's and the server's frames keep it until the next one arrives), so
    it is kept while the next is read, and set to that one's size once it is. A download that has one
    never waits for memory: it reads within what it holds, and halves its reads while others wait, which
    gives them the rest. Only a download holding none (its first chunk) waits, in the worker's queue.

    After `close()` nothing more is granted (a read-ahead worker still ending gets False) and giving
    back is a no-op, so no path can give back twice or keep a byte past the download's end.
    """

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.out = 0  # granted by acquire
        self.ahead = 0  # granted by try_acquire
        self.closed = False
        self._lock = threading.RLock()

    @property
    def held(self) -> int:
        return self.out + self.ahead

    def try_acquire(self, count: int) -> bool:
        """Bytes held for later (MemoryBudget.try_acquire)."""
        with self._lock:
            if self.closed or not self.budget.try_acquire(count):
                return False
            self.ahead += count
            return True

    def acquire(self, count: int, cancelled: Callable[[], bool] | None = None) -> bool:
        """Bytes for the chunk going out (MemoryBudget.acquire); False once closed or cancelled."""
        if self.closed:
            return False
        stop = (lambda: self.closed or cancelled()) if cancelled is not None else (lambda: self.closed)
        if not self.budget.acquire(count, stop):
            return False
        with self._lock:
            if self._ended():  # granted while the download was ending
                self.budget.release(count)
                return False
            self.out += count
            return True

    def next_read(self, wanted: int, cancelled: Callable[[], bool] | None = None) -> int | None:
        """Bytes the next read for the chunk going out may return (at most `wanted`), granted; None once
        closed, or if `cancelled()` turned true while it waited (only a download holding nothing waits)."""
        with self._lock:
            if self.closed:
                return None
            held = self.out
        if held == 0:
            return wanted if self.acquire(wanted, cancelled) else None
        if self.budget.waiting:
            return min(wanted, max(MIN_READ, held // 2))
        if wanted > held and self._grow(wanted - held):
            return wanted
        return min(wanted, held)

    def streamed(self, size: int) -> None:
        """The read returned `size` bytes: the grant for the chunk going out becomes that, but not less
        than MIN_READ (the smallest read), so that the next read never waits."""
        with self._lock:
            held = self.out
        self.resize(held, max(size, min(held, MIN_READ)))

    def _grow(self, count: int) -> bool:
        with self._lock:
            if self.closed or not self.budget.try_acquire(count, ahead=False):
                return False
            self.out += count
            return True

    def release(self, count: int, ahead: bool = False) -> None:
        """Give back `count` bytes of the kind given (never more than is held of it)."""
        with self._lock:
            if self.closed or count <= 0:
                return
            if ahead:
                count = min(count, self.ahead)
                self.ahead -= count
            else:
                count = min(count, self.out)
                self.out -= count
        self.budget.release(count, ahead)

    def resize(self, granted: int, used: int, ahead: bool = False) -> None:
        """A grant of `granted` bytes turned out to hold `used`: give back the rest, or book the excess
        (a chunk larger than asked for: it is in memory already, so it is counted, never refused)."""
        if used <= granted:
            self.release(granted - used, ahead)
            return
        with self._lock:
            if self.closed:
                return
            extra = used - granted
            with self.budget._lock:
                if ahead:
                    self.budget.ahead += extra
                self.budget._add(extra)
            if ahead:
                self.ahead += extra
            else:
                self.out += extra

    def _ended(self) -> bool:  # a method: mypy would take `closed` for still False after a wait
        return self.closed

    def close(self) -> None:
        """Give back everything still held; grant nothing more."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            out, ahead, self.out, self.ahead = self.out, self.ahead, 0, 0
        self.budget.release(out)
        self.budget.release(ahead, ahead=True)


_worker: MemoryBudget | None = None
_worker_lock = threading.Lock()


def worker_budget(env: Mapping[str, str] | None = None) -> MemoryBudget:
    """This process's budget: MEMORY_BUDGET bytes (read from the environment on first use)."""
    global _worker
    if _worker is None:
        with _worker_lock:
            if _worker is None:
                _worker = MemoryBudget(MEMORY_BUDGET.read(os.environ if env is None else env))
    return _worker


def configure(total: int) -> MemoryBudget:
    """Make this process's budget `total` bytes (the app at start-up; tests)."""
    budget = worker_budget()
    budget.resize(total)
    return budget


# -- the client's side --------------------------------------------------------------------------------
# Bytes the kernel may queue for a client beyond what is in flight to it (TCP_NOTSENT_LOWAT, tcp(7)):
# the socket counts as writable only below it. Without it, Linux grows a loopback or LAN socket's send
# buffer to 4 MiB and takes ~3 MB from a client that reads nothing, in kernel memory the container pays
# for too. In flight (the window the client opened) is not limited: a fast, distant client keeps its speed.
NOTSENT_LOWAT = 256 * 1024
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux's number; Python 3.11 lacks the name
_SIOCOUTQ = termios.TIOCOUTQ  # bytes in a TCP socket's send queue, not yet acknowledged (tcp(7))
_SIOCOUTQNSD = 0x894B  # of which not sent yet (linux/sockios.h; Python has no name for it)


class ClientWindow:
    """The socket of the client a download is sent to, seen as the stream paces itself on it.

    `wait_writable()` before each chunk: a client that stops reading stops its download there, holding
    nothing more than the chunk it last had. `read_size()`: how much to read next, like TCP's slow
    start: twice what the client drained since the last read (at least MIN_READ, at most CHUNK_SIZE),
    so a fast client soon reads whole chunks and a stalled one keeps a small one.
    """

    def __init__(self, sock: socket.socket, send_timeout: float | None = None) -> None:
        self.fileno = sock.fileno()
        self.send_timeout = send_timeout
        self._sock = sock
        self._timeout_before: float | None = None
        self._stalled_since: float | None = None  # a stall that parked goes on from here
        with contextlib.suppress(OSError):  # not TCP (a Unix socket): nothing queued to limit
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
        self._queued = 0  # the send queue at the last read_size()
        self._handed = 0  # bytes handed to the server since then
        self._size = MIN_READ
        self.room = CHUNK_SIZE  # bytes the socket could take at the last read_size() without a wait

    @classmethod
    def of(cls, environ: Mapping[str, Any], send_timeout: float | None = None) -> ClientWindow | None:
        """The client of a WSGI request, if the server says which socket it is (gunicorn; not over TLS)."""
        sock = environ.get("gunicorn.socket")
        if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
            return None
        return cls(sock, send_timeout)

    def wait_writable(self, park: Callable[[float], bool] | None = None) -> bool:
        """Wait until the socket can take bytes (or is closed or reset: the write then fails); True.

        With `park`: asked every PARK_POLL s while the client takes nothing, with the seconds it has
        stalled so far; once it says yes, False at once (the caller gives back what it holds, then
        waits again: the stall's clock goes on where it was).

        Raises ClientStalled after `send_timeout` seconds (SEND_TIMEOUT) without room: a client that
        takes nothing would otherwise keep its download, and the memory granted to it, for as long as it
        likes, and with enough of them every other download waits for memory (nginx: `send_timeout`).
        """
        from gevent.socket import wait_write  # only ever called under gunicorn's gevent worker

        began = self._stalled_since if self._stalled_since is not None else time.monotonic()
        self._stalled_since = None
        while True:
            stalled = time.monotonic() - began
            left = None if self.send_timeout is None else self.send_timeout - stalled
            if left is not None and left <= 0:
                raise ClientStalled(f"the client took no bytes for {self.send_timeout:g} s (SEND_TIMEOUT)")
            step = left if park is None else PARK_POLL if left is None else min(PARK_POLL, left)
            try:
                wait_write(self.fileno, timeout=step)
                return True
            except TimeoutError:
                if park is not None and park(time.monotonic() - began):
                    self._stalled_since = began
                    return False
            except (OSError, ValueError):
                return True

    def sending(self) -> None:
        """A chunk goes to the server now: its write, too, gives up after `send_timeout` without progress
        (socket.timeout out of gunicorn's write; the worker closes the connection, gunicorn_worker.py)."""
        if self.send_timeout is not None:
            with contextlib.suppress(OSError):
                self._timeout_before = self._sock.gettimeout()
                self._sock.settimeout(self.send_timeout)

    def sent(self) -> None:
        """The server wrote the chunk: the socket's own timeout again (gunicorn's keep-alive reads)."""
        if self.send_timeout is not None:
            with contextlib.suppress(OSError):
                self._sock.settimeout(self._timeout_before)

    def handed(self, count: int) -> None:
        """`count` bytes went to the server for this client."""
        self._handed += count

    def read_size(self) -> int:
        """Bytes to read for the next chunk (MIN_READ..CHUNK_SIZE). Sets `room`: what the socket takes
        now without a wait, NOTSENT_LOWAT less what it has not sent yet (SIOCOUTQNSD; Linux takes no
        more while that much is unsent, tcp(7)): a write of more waits inside the server, where a
        download can't park (stream.ZipStream)."""
        try:
            queued = struct.unpack("i", fcntl.ioctl(self.fileno, _SIOCOUTQ, b"\0\0\0\0"))[0]
            unsent = struct.unpack("i", fcntl.ioctl(self.fileno, _SIOCOUTQNSD, b"\0\0\0\0"))[0]
            buffer = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        except OSError:
            return self._size
        # Nor more than the send buffer has free: Linux shrinks it when the machine's TCP memory runs
        # short (tcp_mem), and a socket then takes far less than NOTSENT_LOWAT (the attack pass: 106-160 KB
        # of 256 KiB, SO_SNDBUF down to ~67 KB). Half of it counts: the rest is the kernel's overhead.
        self.room = max(0, min(NOTSENT_LOWAT - unsent, buffer // 2 - queued))
        drained = self._queued + self._handed - queued
        self._queued, self._handed = queued, 0
        self._size = max(MIN_READ, min(CHUNK_SIZE, 2 * drained))
        return self._size

    def gone(self) -> bool:
        """The client closed or reset the connection (never blocks, never consumes a byte)."""
        try:
            return peek(self.fileno) == b""
        except OSError:
            return True
