"""From a list of file references to a ready-to-stream zip: pre-flight, names, layout, bytes.

Everything that can fail is decided in `prepare()`, before the first byte is sent (STYLE.md habit
5). What `PreparedZip.stream()` raises afterwards can only abort the connection.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property

from . import cooperative
from .archive import Entry, ZipPlan, clamp_time, deflate_stream
from .config import Config
from .deadline import Deadline
from .errors import (
    ClientGone,
    LimitExceeded,
    SchemaNotReady,
    SourceError,
    SourcesFailed,
    SourceTimeout,
    StreamAborted,
)
from .models import FileRef
from .names import safe_name, unique_names
from .numbers import MAX_BYTES
from .prefetch import Prefetcher
from .repositories import CrcCache, Known
from .sources import HoldScope, SourceInfo, Sources

log = logging.getLogger(__name__)

# How often learned CRC-32s are written back while a download runs (members, seconds).
# A member this big is written back at once: the cost is nothing next to its bytes, and a client
# that resumes right after a cut must find the CRC-32s of every member it already has.
CRC_FLUSH_MEMBERS = 64
CRC_FLUSH_SECONDS = 5.0
CRC_FLUSH_BYTES = 4 * 1024 * 1024


# A resume without If-Range is honoured only inside the bytes of that zip version known to have gone
# out; they are recorded in steps of at least this many bytes (PreparedZip._record_delivery).
DELIVERY_STEP = 256 * 1024
# Every zip written here starts with "PK" (a local header, or the end record of an empty zip).
SAME_IN_EVERY_ZIP = 2

# How often pre-flight looks up from waiting to see whether the client has gone (seconds).
CANCEL_POLL = 0.25


def preflight(files: Sequence[FileRef], sources: Sources, concurrency: int,
              deadline: Deadline | None = None, hold: bool = False) -> list[list[SourceInfo]]:
    """Stat every src concurrently; raises SourcesFailed listing every src that cannot be read.

    With `hold`, sources may keep the first bytes of files (`SourceInfo.head`) within this
    download's share of their budget (sources/held.py).
    With a `deadline`, the answer comes by then whatever the sources do: a src not stat-ed by then
    fails with SourceTimeout (so SourcesFailed is a 504 unless another src failed worse), and the
    requests still in flight are aborted. If the deadline is cancelled (the client hung up), queued
    srcs are never requested, those in flight are aborted, and ClientGone is raised.
    """
    deadline = deadline if deadline is not None else Deadline(None)
    scope = HoldScope() if hold else None

    def stat(ref: FileRef) -> list[SourceInfo] | SourceError:
        try:
            deadline.check(ref.src)  # queued behind slower srcs: maybe there is no time left
            with scope.applying() if scope is not None else nullcontext():
                return sources.stat(ref.src, deadline)
        except SourceError as error:
            return error

    # Always through the pool (a greenlet each under gevent), even for one src: waiting on futures
    # is what lets the answer come at the deadline while a socket or a DNS lookup still hangs.
    pool = ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(files))), thread_name_prefix="preflight")
    futures = [pool.submit(stat, ref) for ref in files]
    pending: set[Future[list[SourceInfo] | SourceError]] = set(futures)
    try:
        while pending and not deadline.cancelled and not deadline.expired:
            _done, pending = wait(pending, timeout=min(deadline.remaining(), CANCEL_POLL))
    finally:
        # Never wait for the workers here: one may be stuck until its socket gives up.
        pool.shutdown(wait=False, cancel_futures=True)
    if pending or deadline.cancelled:
        deadline.expire()  # wake the requests still in flight; they end without starting others
    results: list[list[SourceInfo] | SourceError] = []
    for ref, future in zip(files, futures, strict=True):
        if future in pending:
            started = future.running() or future.done()
            reason = (f"no answer within {deadline.describe()}" if started
                      else f"not checked: {deadline.describe()} ran out first")
            results.append(SourceTimeout(ref.src, reason))
        else:
            results.append(future.result())  # an unexpected error is raised here, as before
    if deadline.cancelled:
        discard_heads(info for result in results if not isinstance(result, SourceError) for info in result)
        raise ClientGone("the client closed the connection during pre-flight")
    failures = [result for result in results if isinstance(result, SourceError)]
    if failures:
        discard_heads(info for result in results if not isinstance(result, SourceError) for info in result)
        raise SourcesFailed(failures)
    return [result for result in results if not isinstance(result, SourceError)]


def discard_heads(infos: Iterable[SourceInfo]) -> None:
    """Give the bytes pre-flight held back to the budget (a download that ended or never started)."""
    for info in infos:
        if info.head is not None:
            info.head.discard()


def entry_names(files: Sequence[FileRef], stats: Sequence[Sequence[SourceInfo]]) -> list[str]:
    """The unique, safe entry name of every file, in order (prefixes expanded in place)."""
    names = []
    for ref, infos in zip(files, stats, strict=True):
        expanded = len(infos) != 1 or ref.src.endswith("/")
        for info in infos:
            if ref.dst and expanded:
                name = safe_name(f"{ref.dst}/{info.name}")
            elif ref.dst:
                name = safe_name(ref.dst)
            else:
                name = safe_name(info.name)
            # A dst that leaves nothing once made safe ("", "..", "/") means the src's default name.
            names.append(name or safe_name(info.name) or safe_name(info.src.split("://", 1)[-1]) or "file")
    return unique_names(names)


@dataclass
class PreparedZip:
    """A zip whose every source answered: its exact length (when known), ETag and byte stream."""

    filename: str
    compression: str
    entries: list[Entry]
    infos: list[SourceInfo]
    sources: Sources
    cache: CrcCache | None
    plan: ZipPlan | None
    learned: dict[int, int] = field(default_factory=dict)
    # Bytes of this exact zip (by ETag), from its first, known to have gone out in some response:
    # a resume without a validator is only honoured inside them (see vouches). Unknown counts as 0.
    delivered: int = 0
    prefetch: int = 0  # members fetched ahead of the one streaming out (0: one after another)
    prefetch_bytes: int = 4 * 1024 * 1024
    # MAX_BUNDLE_BYTES (0: none). Sized members were counted at pre-flight; the bytes of a member
    # without a size (a decoded gzip body, a close-delimited one) are counted as they stream.
    max_bytes: int = 0
    _unsized_sent: int = 0

    @property
    def length(self) -> int | None:
        return self.plan.length if self.plan is not None else None

    @property
    def rangeable(self) -> bool:
        """Byte ranges (and resume) need a stored zip whose every source has a size and a validator."""
        return self.plan is not None and self.plan.sized and all(info.validated for info in self.infos)

    @cached_property
    def etag(self) -> str | None:
        """A strong ETag: changes whenever any byte of the zip would change."""
        if not self.rangeable or self.plan is None:
            return None
        digest = hashlib.sha256(self.plan.fingerprint().encode())
        for info in self.infos:
            digest.update(info.identity().encode())
        return f'"zs1-{digest.hexdigest()[:40]}"'

    @property
    def last_modified(self) -> datetime:
        return max((entry.modified_at for entry in self.entries), default=datetime.fromtimestamp(0, UTC))

    _prefetcher: Prefetcher | None = None

    def distrust(self, indexes: Iterable[int]) -> None:
        """Members whose source's validators were seen to differ between requests: their versions
        can't be vouched for across requests, so this zip has no ETag and no ranges."""
        for index in indexes:
            self.infos[index] = replace(self.infos[index], stable=False)
            self.learned.pop(index, None)
        self.__dict__.pop("etag", None)
        self.delivered = 0

    def _held_whole(self, index: int) -> bool:
        """Pre-flight fetched this whole file: its bytes are in memory, nothing to fetch ahead."""
        head = self.infos[index].head
        return head is not None and head.size == self.infos[index].size

    _last_opened: int | None = None

    @property
    def failed_src(self) -> str | None:
        """The src of the member opened last: the one a failure before the first byte came from."""
        return self.infos[self._last_opened].src if self._last_opened is not None else None

    # The first member whose data lies wholly in the response streaming now: of those (and only
    # those) no byte was sent by an earlier response, so they may be read whole again (see _unstable).
    _whole_from: int = 0

    def _rereadable(self, index: int, start: int) -> bool:
        return start == 0 and index >= self._whole_from

    def _open(self, index: int, start: int) -> Iterator[bytes]:
        self._last_opened = index
        if start == 0 and self._prefetcher is not None and not self._held_whole(index):
            chunks = self._prefetcher.take(index)
        else:
            unstable = self._unstable if self._rereadable(index, start) else None
            chunks = self.sources.open(self.infos[index], start, unstable=unstable)
        if self.max_bytes and self.entries[index].size is None:
            return self._counted(chunks)
        return chunks

    def _counted(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """An unsized member's chunks, cut (LimitExceeded) once the bundle passes MAX_BUNDLE_BYTES."""
        sized = sum(entry.size or 0 for entry in self.entries)
        try:
            for chunk in chunks:
                self._unsized_sent += len(chunk)
                if sized + self._unsized_sent > self.max_bytes:
                    raise LimitExceeded(f"the files add up to more than {self.max_bytes} bytes (MAX_BUNDLE_BYTES)",
                                        limit="MAX_BUNDLE_BYTES")
                yield chunk
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _open_yielding(self, index: int, start: int) -> Iterator[bytes]:
        """Member chunks with a greenlet switch after each: stream-zip can deflate many input chunks
        (very compressible data) before it yields output."""
        return cooperative.yielding(self._open(index, start))

    def _open_direct(self, index: int, start: int) -> Iterator[bytes]:
        """Without read-ahead: a member whose first bytes only are read (for its CRC-32)."""
        return self.sources.open(self.infos[index], start)

    def _open_whole(self, index: int) -> Iterator[bytes]:
        unstable = self._unstable if self._rereadable(index, 0) else None
        return self.sources.open(self.infos[index], 0, unstable=unstable)

    def _unstable(self, info: SourceInfo) -> None:
        """`info`'s validators disagreed between requests while its bytes did not (it was read
        whole again and matched its size): remember that, so later downloads of any bundle naming
        this src are served without ranges or ETag (see prepare)."""
        log.warning("%s: its validators differ between requests; bundles naming it are served "
                    "without ranges or ETag from now on", info.src)
        if self.cache is None:
            return
        try:
            self.cache.mark_unstable(info.src)
        except Exception as error:  # noqa: BLE001 - losing a cache write must never break a download
            log.warning("could not record the unstable validators of %s: %s", info.src, error)

    def stream(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """The zip's bytes [start, stop); raises StreamAborted if a source fails part-way."""
        expected = None
        if self.length is not None:
            expected = (stop if stop is not None else self.length) - start
        sent = 0
        response_end = stop if stop is not None else self.length  # None: deflate, length unknown
        self._unsized_sent = 0
        self._whole_from = self._first_whole_member(start)
        # Read ahead only when the stream runs to the end (whole zip or a resume): a range that
        # stops early would fetch members it never sends.
        if self.prefetch > 0 and (stop is None or stop == self.length):
            self._prefetcher = Prefetcher(
                self._open_whole, len(self.infos), self.prefetch, self.prefetch_bytes, local=self._held_whole
            )
        try:
            if self.plan is None:
                chunks = deflate_stream(self.entries, self._open_yielding)
            else:
                chunks = self.plan.stream(self._open, start, stop, self.learned, self._learn,
                                          open_head=self._open_direct)
            for chunk in chunks:
                sent += len(chunk)
                if expected is not None and sent > expected:
                    raise StreamAborted(f"produced more than the promised {expected} bytes")
                self._record_delivery(start + sent, response_end)
                yield chunk
            if expected is not None and sent != expected:
                raise StreamAborted(f"produced {sent} of the promised {expected} bytes")
        except StreamAborted:
            raise
        except Exception as error:
            # A member failed after bytes went out: the only honest answer is to cut the connection.
            raise StreamAborted(f"{type(error).__name__}: {error}") from error
        finally:
            if self._prefetcher is not None:
                self._prefetcher.close()
                self._prefetcher = None
            discard_heads(self.infos)
            self._flush_crcs(force=True)

    def _first_whole_member(self, start: int) -> int:
        """Index of the first member whose data starts at or after zip offset `start`."""
        if self.plan is None or start == 0:
            return 0
        for index, member in enumerate(self.plan.members):
            if member.offset + len(member.header) >= start:
                return index
        return len(self.plan.members)

    # -- how much of each zip version went out: a resume without If-Range is only safe inside that --
    def vouches(self, start: int) -> bool:
        """Whether a client claiming the first `start` bytes of this zip (Range without If-Range) may
        resume it: only bytes that some response of this very version delivered can be in its file.

        The first two bytes ("PK") are the same in every zip we write, so a resume from byte 1 or 2
        (axel probes with `bytes=1-`) never splices.
        """
        return start <= max(SAME_IN_EVERY_ZIP, self.delivered)

    def _record_delivery(self, end: int, response_end: int | None = None) -> None:
        """Record, before they are sent, that the zip's bytes [0, end) are going out.

        Called only for responses that are themselves vouched (a whole zip, a range from 0, or a
        resume the client proved with If-Range / If-Match or that lies inside what was delivered),
        so the prefix stays contiguous. One cache write per step (at least DELIVERY_STEP bytes, and
        1/16 of what is recorded), so a multi-GiB download costs a few hundred writes; the record is
        at most one step ahead of the bytes really sent, and written before they go so that a client
        cut and resuming at once (or on another instance) finds it. Never past `response_end`, the
        end of this response: a `Range: bytes=0-0` probe of a new version vouched for its first
        256 KiB, so an old partial file of that size could be resumed with the new version's bytes.
        """
        if end <= self.delivered or self.etag is None or self.cache is None:
            return
        step = max(DELIVERY_STEP, self.delivered // 16)
        target = max(end, self.delivered + step)
        for limit in (self.length, response_end):
            if limit is not None:
                target = min(target, limit)
        if target <= self.delivered:
            return
        self.delivered = target
        try:
            self.cache.mark_served(self.etag, target)
        except Exception as error:  # noqa: BLE001 - losing a cache write must never break a download
            log.warning("could not record the delivered part of the zip: %s", error)

    # -- CRC-32s learned while streaming, so a resumed download need not read the files again --
    _pending: dict[str, int] = field(default_factory=dict)
    _pending_bytes: int = 0
    _last_flush: float = field(default_factory=time.monotonic)

    def _learn(self, index: int, crc: int) -> None:
        info = self.infos[index]
        if info.validated and self.entries[index].crc32 is None and self.learned.get(index) != crc:
            self.learned[index] = crc
            self._pending[info.identity()] = crc
            self._pending_bytes += info.size or 0
            self._flush_crcs(force=self._pending_bytes >= CRC_FLUSH_BYTES)

    def _flush_crcs(self, force: bool = False) -> None:
        if not self._pending or self.cache is None:
            return
        due = len(self._pending) >= CRC_FLUSH_MEMBERS or time.monotonic() - self._last_flush > CRC_FLUSH_SECONDS
        if not (force or due):
            return
        pending, self._pending, self._pending_bytes = self._pending, {}, 0
        self._last_flush = time.monotonic()
        try:
            self.cache.put_crcs(pending)
        except Exception as error:  # noqa: BLE001 - losing a cache write must never break a download
            log.warning("could not store %d learned CRC-32s: %s", len(pending), error)


@contextmanager
def _heads_given_back_on_error(stats: Sequence[Sequence[SourceInfo]]) -> Iterator[None]:
    """A zip that fails to lay out (too many files, too big) never streams: give its held bytes back."""
    try:
        yield
    except BaseException:
        discard_heads(info for infos in stats for info in infos)
        raise


def prepare(
    files: Sequence[FileRef],
    filename: str,
    compression: str,
    created_at: int,
    sources: Sources,
    cache: CrcCache | None,
    config: Config,
    hold: bool = False,
    deadline: Deadline | None = None,
) -> PreparedZip:
    """Pre-flight every source and lay out the zip; raises before anything is sent.

    `hold`: let pre-flight keep small files' bytes for the stream (a whole-zip GET; not for HEAD
    or a range, which would hold bytes they never send). `deadline`: pre-flight's time limit and
    cancellation (default: PREFLIGHT_TIMEOUT from now).
    """
    if deadline is None:
        deadline = Deadline(config.preflight_timeout)
    stats = preflight(files, sources, config.preflight_concurrency, deadline, hold)
    with _heads_given_back_on_error(stats):
        # Before any name is made: a prefix or directory may expand to far more files than MAX_FILES.
        count = sum(len(infos) for infos in stats)
        if count > config.max_files:
            raise LimitExceeded(
                f"the bundle expands to {count} files; at most {config.max_files} are allowed (MAX_FILES)",
                limit="MAX_FILES",
            )
        names = entry_names(files, stats)
        fallback_time = clamp_time(datetime.fromtimestamp(created_at, UTC))
        entries: list[Entry] = []
        infos: list[SourceInfo] = []
        position = 0
        for ref, expanded in zip(files, stats, strict=True):
            for info in expanded:
                given = ref.crc32 if len(expanded) == 1 else None
                entries.append(Entry(
                    name=names[position],
                    size=info.size,
                    modified_at=clamp_time(info.last_modified) if info.last_modified else fallback_time,
                    # An empty file's CRC-32 is 0: known up front, so it never needs reading for it.
                    crc32=given if given is not None else info.crc32 if info.size != 0 else 0,
                ))
                infos.append(info)
                position += 1
        # A store's size is its own say (botocore reads any int): none is below 0 or above numbers.MAX_BYTES.
        absurd = [SourceError(info.src, f"the source claims a size of {info.size} bytes") for info in infos
                  if info.size is not None and not 0 <= info.size <= MAX_BYTES]
        if absurd:
            raise SourcesFailed(absurd)
        total = sum(entry.size or 0 for entry in entries)
        if total > MAX_BYTES:  # ZIP64 offsets are 64-bit: the layout could not even be written
            raise LimitExceeded(f"the files add up to {total} bytes; a zip holds at most {MAX_BYTES} (ZIP64)",
                                limit="ZIP64")
        if config.max_bundle_bytes and total > config.max_bundle_bytes:
            raise LimitExceeded(
                f"the files add up to {total} bytes; at most {config.max_bundle_bytes} are allowed (MAX_BUNDLE_BYTES)",
                limit="MAX_BUNDLE_BYTES",
            )
        plan = ZipPlan(entries) if compression == "stored" else None
        prepared = PreparedZip(
            filename=filename, compression=compression, entries=entries, infos=infos, sources=sources,
            cache=cache, plan=plan, prefetch=config.prefetch, prefetch_bytes=config.prefetch_bytes,
            max_bytes=config.max_bundle_bytes,
        )
        if plan is not None and cache is not None:
            identities = {info.identity(): index for index, info in enumerate(infos)
                          if info.validated and entries[index].crc32 is None}
            srcs = {info.src: index for index, info in enumerate(infos) if info.validated}
            version = prepared.etag
            # One read for the three records: learned CRC-32s, how much of this version went out
            # before, and which srcs were seen with validators that differ between requests.
            if identities or srcs or version is not None:
                try:
                    known = cache.known(list(identities), list(srcs), version)
                except SchemaNotReady:
                    # The table is gone (dropped after migrate): a quiet miss would turn every resume
                    # into a 200 of the whole zip; answer 503 naming `zipstream migrate` instead.
                    raise
                except Exception as error:  # noqa: BLE001 - a cache miss only costs upstream reads / a restart
                    log.warning("could not read learned CRC-32s: %s", error)
                    known = Known()
                prepared.learned = {identities[key]: crc for key, crc in known.crcs.items() if key in identities}
                prepared.delivered = known.delivered
                if unsteady := [index for src, index in srcs.items() if src in known.unstable]:
                    prepared.distrust(unsteady)
        return prepared
