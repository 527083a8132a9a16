"""Bounded parallel read-ahead of zip members: while member k streams out, the next ones are fetched.

No Flask, no network code of its own: a `Prefetcher` is given `open_member(index)` (an iterator of
chunks per member) and runs each member's iteration in a worker thread (a greenlet under gunicorn's
gevent worker, which monkey-patches `threading`). Every chunk is granted from the download's memory
`Account` (memory.py) before it is read, and given back once the consumer asks for the next one:

- read ahead (any member, while the consumer has what it needs and its client drains): `try_acquire`,
  within the download's own `budget` (PREFETCH_BYTES) and the worker's share for bytes held for later.
  Refused, the fetch waits until the consumer moves on; it never waits in the worker's queue, so a
  stalled download's read-ahead never keeps another download from streaming.
- the chunk the consumer is waiting for (the member it reads, nothing buffered): `acquire`, in the
  worker's queue, of the size the consumer asks for (`wanted`, memory.ClientWindow.read_size), read
  with that size (chunks.reading).

Order and bytes are those of `open_member`; an error raised by a member's iterator is re-raised where
that member's chunks are consumed, after the chunks that preceded it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator

from .chunks import CHUNK_SIZE, close_iterator, reading
from .errors import StreamAborted
from .memory import MIN_READ, Account, MemoryBudget

OpenMember = Callable[[int], Iterator[bytes]]


class _Fetch:
    """One member being fetched by a worker thread into the download's shared, bounded buffer."""

    def __init__(self, index: int, owner: Prefetcher) -> None:
        self.index = index
        self._owner = owner
        self._cond = owner._cond  # one lock per download: the budget is shared by all members
        # (chunk, granted as read-ahead; else within the download's grant for the chunk going out)
        self._chunks: deque[tuple[bytes, bool]] = deque()
        self.buffered = 0
        self._current = 0  # the read-ahead grant of the chunk the consumer has now
        self._waiting = False  # the consumer waits for this member's next chunk
        self.opened = False  # granted memory once (so its body is open)
        self._done = False
        self._cancelled = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"prefetch-{index}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _grant(self) -> tuple[int, bool] | None:
        """Memory for the next read: (bytes, as read-ahead), or None once cancelled."""
        owner = self._owner
        with self._cond:
            while True:
                if self._cancelled:
                    return None
                size = min(CHUNK_SIZE, owner._room(self))
                if size > 0 and owner._keeping_up() and owner._in_turn(self) and owner.account.try_acquire(size):
                    self.opened = True
                    return size, True
                if self is owner._head and self._waiting and not self._chunks:
                    break
                self._cond.wait()  # until the consumer moves on, waits, or cancels
        granted = owner.account.next_read(owner._wanted(), cancelled=lambda: self._cancelled or owner._gone())
        if granted is None:
            return None
        self.opened = True
        return granted, False

    def _run(self) -> None:
        owner = self._owner
        account = owner.account
        body: Iterator[bytes] | None = None
        try:
            chunks: Iterator[bytes] | None = None
            while True:
                grant = self._grant()
                if grant is None:
                    if self._cancelled:
                        return
                    raise StreamAborted("the client left while its download waited for memory")
                size, ahead = grant
                try:
                    if chunks is None:
                        # Opened with its first grant: a member that never gets memory costs no request.
                        body = owner._open_member(self.index)
                        chunks = iter(body)
                    with reading(size):
                        chunk = next(chunks)
                except StopIteration:
                    if ahead:
                        account.release(size, ahead)
                    return
                except BaseException:
                    if ahead:
                        account.release(size, ahead)
                    raise
                if ahead:
                    account.resize(size, len(chunk), ahead)
                else:
                    account.streamed(len(chunk))  # the download's grant for the chunk going out
                if not chunk:
                    continue
                with self._cond:
                    if self._cancelled:
                        if ahead:
                            account.release(len(chunk), ahead)
                        return
                    self._chunks.append((chunk, ahead))
                    self.buffered += len(chunk)
                    owner._add(len(chunk))
                    self._cond.notify_all()
                del chunk  # not kept alive while this waits for its next grant
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised where it reads
            with self._cond:
                self._error = error
        finally:
            try:
                close_iterator(body)
            finally:
                with self._cond:
                    self._done = True
                    self._cond.notify_all()
                owner._ended(self)

    def chunks(self) -> Iterator[bytes]:
        """The member's chunks in order; raises the fetch's error once the chunks before it are out.

        A read-ahead chunk's memory is given back once the next one is here: until then the layers
        above (the zip writer, the server) still hold it.
        """
        owner = self._owner
        try:
            while True:
                with self._cond:
                    while not self._chunks and not self._done:
                        self._waiting = True
                        self._cond.notify_all()
                        self._cond.wait()
                    self._waiting = False
                    previous, self._current = self._current, 0
                    owner.account.release(previous, ahead=True)
                    if self._chunks:
                        if (not owner._closed and owner._next <= self.index + owner._depth
                                and owner._keeping_up()):
                            owner._start_through(self.index + owner._depth)
                        chunk, ahead = self._chunks.popleft()
                        self._current = len(chunk) if ahead else 0
                        self.buffered -= len(chunk)
                        owner._add(-len(chunk))
                        self._cond.notify_all()
                    elif self._error is not None:
                        raise self._error
                    else:
                        return
                yield chunk
                del chunk
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop fetching: the worker closes the body at its next chunk (at once, if it is waiting).
        What it had read ahead, and the consumer's read-ahead chunk, go back to the budget."""
        account = self._owner.account
        with self._cond:
            if not self._done:
                self._cancelled = True
            self._owner._add(-self.buffered)
            for chunk, ahead in self._chunks:
                if ahead:
                    account.release(len(chunk), ahead)
            account.release(self._current, ahead=True)
            self._current = 0
            self._chunks.clear()
            self.buffered = 0
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to end; True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


class Prefetcher:
    """Serves members 0..count-1 in order, keeping up to `depth` members after the current one in flight.

    `take(index)` returns member `index`'s chunks. At most `budget` bytes are read ahead per download:
    half for the member being read, half shared by the members ahead; the member being read may always
    have the chunk its consumer waits for. Memory comes from `account` (default: a budget of its own,
    unbounded); `wanted()` is the size of the chunk the consumer waits for (default CHUNK_SIZE), and
    `gone()` whether its client left (a fetch waiting for memory then gives up). `close()` cancels every
    fetch; each worker closes its body and ends.
    """

    def __init__(self, open_member: OpenMember, count: int, depth: int, budget: int,
                 local: Callable[[int], bool] | None = None, *, account: Account | None = None,
                 wanted: Callable[[], int] | None = None, gone: Callable[[], bool] | None = None) -> None:
        if depth < 1:
            raise ValueError("a prefetcher needs depth >= 1; read members directly otherwise")
        self._open_member = open_member
        # Members whose bytes are already in memory: fetching them ahead would only cost a worker.
        # The consumer reads those directly, never through take().
        self._local = local
        self._count = count
        self._depth = depth
        self.budget = max(1, budget)
        self.account = account if account is not None else Account(MemoryBudget(1 << 62))
        self._wanted = wanted or (lambda: CHUNK_SIZE)
        self._gone = gone or (lambda: False)
        self._cond = threading.Condition()
        self._buffered = 0  # over every member, guarded by _cond
        self._head: _Fetch | None = None  # the member being consumed
        self._fetches: dict[int, _Fetch] = {}  # started, not yet taken
        self._live: set[_Fetch] = set()  # workers still running (taken or not)
        self._next = 0  # lowest index not yet started
        self._closed = False
        self.peak_buffered = 0  # most bytes buffered at once (tests and benchmarks read it)
    # -- called by the workers, with _cond held --
    def _keeping_up(self) -> bool:
        """Read ahead only for a client that drains what it is sent: one that stalls (its reads down to
        memory.MIN_READ) would keep the worker's share for read-ahead from the downloads that move."""
        return self._wanted() > MIN_READ

    def _in_turn(self, fetch: _Fetch) -> bool:
        """Members are opened in order: read-ahead goes to the next member the consumer needs first."""
        return fetch is self._head or all(other.opened or other._done for index, other in list(self._fetches.items())
                                          if index < fetch.index)  # list(): take() pops meanwhile

    def _room(self, fetch: _Fetch) -> int:
        """Bytes `fetch` may read ahead now, within this download's budget (<= 0: none)."""
        half = self.budget // 2
        if fetch is self._head:
            # The member being read always progresses (no deadlock on a chunk bigger than the budget).
            return CHUNK_SIZE if fetch.buffered == 0 else half - fetch.buffered
        head = self._head.buffered if self._head is not None else 0
        return (self.budget - half) - (self._buffered - head)

    def _add(self, size: int) -> None:
        self._buffered += size
        self.peak_buffered = max(self.peak_buffered, self._buffered)

    def _ended(self, fetch: _Fetch) -> None:
        with self._cond:
            self._live.discard(fetch)

    # -- the consumer's side --
    def _start_through(self, last: int) -> None:
        last = min(last, self._count - 1)
        while self._next <= last:
            if self._local is not None and self._local(self._next):
                self._next += 1
                continue
            fetch = _Fetch(self._next, self)
            self._fetches[self._next] = fetch
            with self._cond:
                self._live.add(fetch)
            fetch.start()
            self._next += 1

    def take(self, index: int) -> Iterator[bytes]:
        """Member `index`'s chunks (starting its fetch now if it was not started yet)."""
        if self._closed:
            raise RuntimeError("prefetcher is closed")
        for skipped in [i for i in self._fetches if i < index]:
            self._fetches.pop(skipped).cancel()  # passed over: its bytes will never be read
        if index not in self._fetches:
            if index < self._next:
                raise RuntimeError(f"member {index} was already taken")
            self._next = index
        # The members ahead get a worker only while the client drains: a stalled download keeps one
        # worker (greenlet) parked, not `depth` of them (chunks() starts the rest once it drains).
        self._start_through(index + self._depth if self._keeping_up() else index)
        fetch = self._fetches.pop(index)
        with self._cond:
            self._head = fetch
            self._cond.notify_all()
        return fetch.chunks()

    def close(self) -> None:
        """Cancel every fetch still running; their workers close their bodies and end."""
        self._closed = True
        self._fetches = {}
        with self._cond:
            live = list(self._live)
        for fetch in live:
            fetch.cancel()

    @property
    def running(self) -> int:
        """Workers that have not ended yet."""
        with self._cond:
            return len(self._live)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every worker still running to end (tests use this); True if all have."""
        with self._cond:
            live = list(self._live)
        return all(fetch.join(timeout) for fetch in live)
