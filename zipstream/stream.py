"""The bytes of a planned zip from any offset: members opened (and read ahead), counted, and their
CRC-32s learned for later downloads.

What it is given is all it uses: the plan (plan.py), how to read a member's source from an offset
(`OpenSource`: `Sources.open`), and where to record what it learns (a `CrcCache`, or None). It reads
no bundle, knows no backend, imports no Flask. It runs after the response has started: whatever
fails here raises StreamAborted, which can only cut the connection (STYLE.md habit 5).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from . import cooperative, counters
from .archive import MemberProgress, deflate_stream
from .chunks import CHUNK_SIZE, close_iterator, give_back_freed_heap_now_and_then, reading
from .errors import LimitExceeded, StreamAborted
from .memory import MIN_READ, Account, ClientWindow, worker_budget
from .plan import Plan
from .prefetch import Prefetcher
from .preflight import discard_heads
from .repositories import CrcCache
from .sources import SourceInfo

log = logging.getLogger(__name__)

# How often learned CRC-32s are written back while a download runs (members, seconds).
# A member this big is written back at once: the cost is nothing next to its bytes, and a client
# that resumes right after a cut must find the CRC-32s of every member it already has.
CRC_FLUSH_MEMBERS = 64
CRC_FLUSH_SECONDS = 5.0
CRC_FLUSH_BYTES = 4 * 1024 * 1024

# After a chunk this big goes out, the server is handed an empty one, so that it lets go of the chunk
# before the next is read (bytes): the smallest read (memory.MIN_READ); smaller chunks (a member's
# header, its descriptor) cost less than the extra round through the server.
RELEASE_AFTER = MIN_READ

# A download whose client has taken nothing this long parks (ZipStream.stream), even if no other
# download waits for memory: its upstream bodies and buffers go back too (seconds).
PARK_AFTER = 10.0
# ... and this long while other downloads want more memory than there is (MemoryBudget.pressed): long
# enough that clients slowed by a busy machine or link, which take a piece every second or two while
# every download drains at once, are not parked and fetched again over and over (B8's drain at 2,000
# clients: 7.4 parks and 13.6 upstream requests per download with 1 s, 6 for 3 files without parking).
PARK_PRESSED_AFTER = 3.0

# Called when a source's validators disagreed between requests while its bytes did not.
Unstable = Callable[[SourceInfo], None]


class OpenSource(Protocol):
    """Reads one source from byte `start`, only as the version `info` describes (`Sources.open`)."""

    def __call__(self, info: SourceInfo, start: int = 0, *, unstable: Unstable | None = None) -> Iterator[bytes]:
        """The source's chunks from `start`; with `unstable`, a member read whole may be read again
        when its validators disagree before its first byte (see Sources.open)."""


class _PendingCrcs:
    """CRC-32s learned while streaming, not yet in the cache: written in batches (CRC_FLUSH_MEMBERS
    members or CRC_FLUSH_SECONDS, at once past CRC_FLUSH_BYTES of members) and when the stream ends."""

    def __init__(self, cache: CrcCache | None) -> None:
        self._cache = cache
        self._crcs: dict[str, int] = {}
        self._bytes = 0
        self._last_flush = time.monotonic()

    def add(self, identity: str, crc: int, size: int) -> None:
        self._crcs[identity] = crc
        self._bytes += size
        self.flush(force=self._bytes >= CRC_FLUSH_BYTES)

    def flush(self, force: bool = False) -> None:
        if not self._crcs or self._cache is None:
            return
        due = len(self._crcs) >= CRC_FLUSH_MEMBERS or time.monotonic() - self._last_flush > CRC_FLUSH_SECONDS
        if not (force or due):
            return
        crcs, self._crcs, self._bytes = self._crcs, {}, 0
        self._last_flush = time.monotonic()
        try:
            self._cache.put_crcs(crcs)
        except Exception as error:  # noqa: BLE001 - losing a cache write must never break a download
            log.warning("could not store %d learned CRC-32s: %s", len(crcs), error)


class ZipStream:
    """The bytes of one planned zip, any range of them; one `stream()` at a time.

    `learned`: CRC-32s by member index that earlier downloads learned (the cache's); the ones
    learned while streaming are added, and stored through `cache`. `prefetch`: members fetched
    ahead of the one streaming out (0: one after another), within `prefetch_bytes`. `max_bytes`:
    MAX_BUNDLE_BYTES (0: none); sized members were counted by the plan, the bytes of a member
    without a size (a decoded gzip body, a close-delimited one) are counted as they stream.
    """

    def __init__(self, plan: Plan, open_source: OpenSource, cache: CrcCache | None = None,
                 learned: Mapping[int, int] | None = None, prefetch: int = 0,
                 prefetch_bytes: int = 4 * 1024 * 1024, max_bytes: int = 0) -> None:
        self.plan = plan
        self.learned = dict(learned or {})
        self._open_source = open_source
        self._cache = cache
        self._prefetch = prefetch
        self._prefetch_bytes = prefetch_bytes
        self._max_bytes = max_bytes
        self._sized_bytes = plan.sized_bytes
        self._pending = _PendingCrcs(cache)
        # The client's socket, when the server says which it is (ZipResponse sets it): the stream
        # waits for it to drain before each chunk and reads what it drains (memory.ClientWindow).
        self.client: ClientWindow | None = None
        # State of the stream running now (set by stream()):
        self._prefetcher: Prefetcher | None = None
        self._account: Account | None = None
        self._read_size = CHUNK_SIZE  # the size of the next chunk read for the output
        self._last_opened: int | None = None
        self._unsized_sent = 0
        # The first member whose data lies wholly in the response streaming now: of those (and only
        # those) no byte was sent by an earlier response, so they may be read whole again (_unstable).
        self._whole_from = 0

    @property
    def failed_src(self) -> str | None:
        """The src of the member opened last: the one a failure before the first byte came from."""
        return self.plan.infos[self._last_opened].src if self._last_opened is not None else None

    def stream(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """The zip's bytes [start, stop); raises StreamAborted if a source fails part-way.

        Cooperative: the one place a download takes turns with the others on a gevent worker
        (cooperative.Turns), over its output and, for deflate, each member's input.

        Memory: every chunk read for it is granted from the worker's MemoryBudget (memory.py) and
        given back when the next one is asked for; with a `client`, the next chunk is read only once
        its socket is writable, in the size it drained. Everything is given back when this ends.

        Parking: when its client has taken nothing for PARK_AFTER s, or PARK_PRESSED_AFTER s while other
        downloads want more memory than there is (MemoryBudget.pressed), a stream whose every byte can
        be asked for again (`Plan.rangeable`) gives back everything but the client's connection: its
        chunk, its read-ahead, what pre-flight held, its upstream bodies. Once the client reads again
        it goes on from where it was, as a resume would (ranged, same-version reads; the CRC-32 of a
        member it stopped inside is carried over, not read again). So a stalled download costs its
        connection and its greenlet.
        """
        plan = self.plan
        length = plan.length
        expected = None if length is None else (stop if stop is not None else length) - start
        sent = 0
        self._unsized_sent = 0
        self._whole_from = plan.first_whole_member(start)
        turns = cooperative.Turns()
        client = self.client
        parkable = client is not None and plan.rangeable
        progress: dict[int, MemberProgress] | None = {} if parkable else None
        prefixes: dict[int, tuple[int, int]] = {}
        chunks: Iterator[bytes] | None = None
        try:
            while True:
                chunks = self._pipeline(turns, start + sent, stop, progress, prefixes)
                parked: bytes | None = None  # parked: the chunk it was sending ...
                handed = 0  # ... and how much of it went out
                for chunk in chunks:
                    if expected is not None and sent + len(chunk) > expected:
                        raise StreamAborted(f"produced more than the promised {expected} bytes")
                    if client is None:
                        sent += len(chunk)
                        yield chunk
                        continue
                    # Back-pressure: a client that stops reading stops its download here, before the
                    # next chunk is read; the next is as big as what it drained meanwhile. A chunk
                    # bigger than twice that (read ahead while the client was faster), or than the
                    # socket takes at once, goes out in pieces no bigger than that, so a client that
                    # stalls stalls here, where the download can park, not inside the server's write.
                    handed = 0
                    while handed < len(chunk):
                        if not handed and len(chunk) <= min(2 * self._read_size, max(MIN_READ, client.room)):
                            piece = chunk  # (a client that keeps pace: its chunks go out whole)
                        else:
                            size = max(MIN_READ, min(self._read_size, client.room))
                            piece = chunk[handed:handed + size]
                        client.sending()
                        yield piece
                        client.sent()
                        handed += len(piece)
                        sent += len(piece)
                        client.handed(len(piece))
                        del piece
                        if not client.wait_writable(self._park if parkable else None):
                            parked = chunk
                            break
                        self._read_size = client.read_size()
                    if parked is not None:
                        break
                    large = len(chunk) >= RELEASE_AFTER
                    del chunk
                    if large:
                        # The server keeps the last item it was handed until it asks for the next
                        # (gunicorn's `for item in body`), and every layer here drops its own: an
                        # empty item first, so the next chunk is read while nothing holds this one
                        # (a download's grant covers one chunk, memory.Account). gevent sends nothing.
                        yield b""
                if parked is None:
                    break
                assert client is not None and progress is not None and plan.layout is not None
                prefixes = self._prefixes(start + sent, progress, parked if handed < len(parked) else None)
                del parked, chunk
                progress.clear()
                self._end_pipeline(chunks)
                chunks = None
                # The server and every layer above hold the last piece they were handed until they ask
                # for the next (gunicorn's `for item in body`): an empty one makes them let go of it, or
                # a parked download would keep up to 2 x its last read outside the budget (58 KiB each at
                # 1,000 parked downloads per worker, bench.memory_probe). gevent sends nothing for it.
                yield b""
                give_back_freed_heap_now_and_then()  # what the pipeline freed may leave holes (chunks.py)
                counters.PARKS.inc()
                counters.PARKED.inc()
                try:
                    client.wait_writable()
                finally:
                    counters.PARKED.dec()
                if client.gone():  # a closed or reset socket is writable too: nothing to go on for
                    raise StreamAborted("the client left while its download was parked")
                self._read_size = client.read_size()
            if expected is not None and sent != expected:
                raise StreamAborted(f"produced {sent} of the promised {expected} bytes")
        except StreamAborted:
            raise
        except Exception as error:
            # A member failed after bytes went out: the only honest answer is to cut the connection.
            raise StreamAborted(f"{type(error).__name__}: {error}") from error
        finally:
            self._end_pipeline(chunks)
            self._pending.flush(force=True)

    def _pipeline(self, turns: cooperative.Turns, start: int, stop: int | None,
                  progress: dict[int, MemberProgress] | None, prefixes: dict[int, tuple[int, int]]) -> Iterator[bytes]:
        """The zip's chunks from `start`, with a memory Account and (streaming to the end) read-ahead."""
        plan = self.plan
        client = self.client
        self._account = account = Account(worker_budget())
        self._read_size = client.read_size() if client is not None else CHUNK_SIZE
        # Its first chunk's memory before anything else: a download that waits for it (many clients
        # that come back at once after a stall) holds nothing meanwhile, no reader, no upstream body.
        if not account.acquire(self._read_size, cancelled=self._client_gone):
            raise StreamAborted("the client left while its download waited for memory")
        # Read ahead only when the stream runs to the end (whole zip or a resume): a range that
        # stops early would fetch members it never sends.
        if self._prefetch > 0 and (stop is None or stop == plan.length):
            self._prefetcher = Prefetcher(
                self._open_whole, len(plan.infos), self._prefetch, self._prefetch_bytes, local=self._held_whole,
                account=account, wanted=lambda: self._read_size, gone=self._client_gone,
            )
        if plan.layout is None:
            # stream-zip may deflate many input chunks (very compressible data) before it yields.
            zipped = deflate_stream(plan.entries, lambda index, at: turns.yielding(self._open(index, at)))
        else:
            zipped = plan.layout.stream(self._open, start, stop, self.learned, self._learn,
                                        open_head=self._open_direct, progress=progress, prefix_crcs=prefixes)
        return turns.yielding(zipped)

    def _end_pipeline(self, chunks: Iterator[bytes] | None) -> None:
        """Close the chunks and give back everything they held (bodies, read-ahead, holds, memory)."""
        try:
            close_iterator(chunks)
        finally:
            if self._prefetcher is not None:
                self._prefetcher.close()
                self._prefetcher = None
            discard_heads(self.plan.infos)
            if self._account is not None:
                self._account.close()
                self._account = None

    def _prefixes(self, position: int, progress: dict[int, MemberProgress],
                  sent_part: bytes | None) -> dict[int, tuple[int, int]]:
        """Of each member read from its first byte by the stream that parked at zip offset `position`,
        the CRC-32 of its bytes before `position` (ZipPlan.stream's prefix_crcs): the stream going on
        from there needs no read of them. `sent_part`: the part that went out of a chunk cut short."""
        assert self.plan.layout is not None
        prefixes: dict[int, tuple[int, int]] = {}
        for index, member in progress.items():
            placed = self.plan.layout.members[index]
            length = min(position - placed.offset - len(placed.header), member.seen)
            prefix = member.prefix_at(length, sent_part) if length >= 0 else None
            if prefix is not None:
                prefixes[index] = prefix
        return prefixes

    def _park(self, stalled: float) -> bool:
        """Whether a download whose client has taken nothing for `stalled` s gives back what it holds."""
        return stalled >= PARK_AFTER or (stalled >= PARK_PRESSED_AFTER and worker_budget().pressed())

    # -- opening members --
    def _held_whole(self, index: int) -> bool:
        """Pre-flight fetched this whole file: its bytes are in memory, nothing to fetch ahead."""
        head = self.plan.infos[index].head
        return head is not None and head.size == self.plan.infos[index].size

    def _rereadable(self, index: int, start: int) -> bool:
        return start == 0 and index >= self._whole_from

    def _client_gone(self) -> bool:
        return self.client is not None and self.client.gone()

    def _open(self, index: int, start: int) -> Iterator[bytes]:
        self._last_opened = index
        if start == 0 and self._prefetcher is not None and not self._held_whole(index):
            chunks = self._prefetcher.take(index)
        else:
            unstable = self._unstable if self._rereadable(index, start) else None
            chunks = self._granted(self._open_source(self.plan.infos[index], start, unstable=unstable))
        if self._max_bytes and self.plan.entries[index].size is None:
            return self._counted(chunks)
        return chunks

    def _open_direct(self, index: int, start: int) -> Iterator[bytes]:
        """Without read-ahead: a member whose first bytes only are read (for its CRC-32)."""
        return self._granted(self._open_source(self.plan.infos[index], start))

    def _granted(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """A member read without read-ahead: each chunk read within the download's grant for the chunk
        going out (memory.Account.next_read: it waits in the worker's queue only for its first), in
        the size the output asks for."""
        account = self._account
        if account is None:  # not streaming: nothing to account
            yield from chunks
            return
        try:
            while True:
                size = account.next_read(self._read_size, cancelled=self._client_gone)
                if size is None:
                    raise StreamAborted("the client left while its download waited for memory")
                with reading(size):
                    chunk = next(chunks, None)
                if chunk is None:
                    return
                account.streamed(len(chunk))
                yield chunk
                del chunk
        finally:
            close_iterator(chunks)

    def _open_whole(self, index: int) -> Iterator[bytes]:
        unstable = self._unstable if self._rereadable(index, 0) else None
        return self._open_source(self.plan.infos[index], 0, unstable=unstable)

    def _counted(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """An unsized member's chunks, cut (LimitExceeded) once the bundle passes MAX_BUNDLE_BYTES."""
        try:
            for chunk in chunks:
                self._unsized_sent += len(chunk)
                if self._sized_bytes + self._unsized_sent > self._max_bytes:
                    raise LimitExceeded(f"the files add up to more than {self._max_bytes} bytes (MAX_BUNDLE_BYTES)",
                                        limit="MAX_BUNDLE_BYTES")
                yield chunk
        finally:
            close_iterator(chunks)

    # -- what the stream learns --
    def _unstable(self, info: SourceInfo) -> None:
        """`info`'s validators disagreed between requests while its bytes did not (it was read
        whole again and matched its size): remember that, so later downloads of any bundle naming
        this src are served without ranges or ETag (download.prepare)."""
        log.warning("%s: its validators differ between requests; bundles naming it are served "
                    "without ranges or ETag from now on", info.src)
        if self._cache is None:
            return
        try:
            self._cache.mark_unstable(info.src)
        except Exception as error:  # noqa: BLE001 - losing a cache write must never break a download
            log.warning("could not record the unstable validators of %s: %s", info.src, error)

    def _learn(self, index: int, crc: int) -> None:
        """A member's CRC-32, computed from its full data: kept, and stored for later downloads."""
        info = self.plan.infos[index]
        if info.validated and self.plan.entries[index].crc32 is None and self.learned.get(index) != crc:
            self.learned[index] = crc
            self._pending.add(info.identity(), crc, info.size or 0)
