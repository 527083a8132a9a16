"""Members -> zip bytes. Pure data path: no Flask, no network, no database.

Two writers:

* **stored** (the default): written here, because stream-zip can only stream an uncompressed
  member when its CRC-32 is known before its data (`NO_COMPRESSION_*(size, crc)`), and otherwise
  buffers the whole member in memory. A member whose CRC is known up front is written exactly as
  stream-zip's `NO_COMPRESSION_32/64(size, crc)` writes it (tests prove the bytes identical); a
  member whose CRC is not known is written like stream-zip's `ZIP_32/64` layout (CRC and sizes in a
  data descriptor after the data) with compression method 0. Either way every byte offset follows
  from names, sizes and modification times alone, which is what makes exact `Content-Length` and
  HTTP Range resume possible: see `ZipPlan`.
* **deflate**: stream-zip's `ZIP_32`/`ZIP_64` (data descriptors), length unknown in advance; its end
  records are replaced by ours (see `_corrected_end_records`).

Every field of both, with its value and the reason for it: docs/zip-layout.md.
"""

from __future__ import annotations

import hashlib
import stat
import threading
import types
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from struct import Struct
from typing import Any

from stream_zip import ZIP_32, ZIP_64, stream_zip

from .chunks import CHUNK_SIZE, close_iterator

_zlib: types.ModuleType
try:  # zlib-ng: the same CRC-32 and deflate formats, 4-5x faster (SIMD); plain zlib where it has no wheel
    from zlib_ng import zlib_ng as _zlib
except ImportError:  # pragma: no cover - zlib-ng is a dependency; this keeps odd platforms working
    _zlib = zlib

crc32 = _zlib.crc32


def _gf2_times(matrix: list[int], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, matrix[row]) for row in range(32)]


def _crc32_combine_py(crc1: int, crc2: int, length2: int) -> int:
    """zlib's crc32_combine (Mark Adler's GF(2) matrix method), for a zlib without zlib-ng."""
    if length2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << row for row in range(31)]  # the operator for one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:  # apply len2 zero bytes to crc1 (the first square gives the one-zero-byte operator)
        even = _gf2_square(odd)
        if length2 & 1:
            crc1 = _gf2_times(even, crc1)
        length2 >>= 1
        if not length2:
            break
        odd = _gf2_square(even)
        if length2 & 1:
            crc1 = _gf2_times(odd, crc1)
        length2 >>= 1
        if not length2:
            break
    return crc1 ^ crc2


# The CRC-32 of A+B from crc32(A), crc32(B) and len(B) (zlib-ng's binding exposes zlib's function).
crc32_combine: Callable[[int, int, int], int] = getattr(_zlib, "crc32_combine", _crc32_combine_py)

# zlib's default level: level 9 (stream-zip's default) costs ~3x the CPU for ~1% smaller media.
DEFLATE_LEVEL = 6
# Bumped whenever the bytes written for the same members change, so old ETags stop matching.
FORMAT_VERSION = 2  # 2: ZIP64 end records at the sentinel edges, classic record disk 0 (issue 12)
# stream-zip's `chunk_size` is not a read size: it is how much deflated output stream-zip gathers
# before it yields any, so the deflate path's first byte waits for that much (and until the first
# byte a failing source is still a JSON 502, after it a cut connection). A quarter of CHUNK_SIZE:
# the deflate path's first byte comes as soon as it did before chunks.CHUNK_SIZE was one size
# (tests/test_download_live.py::test_upstream_dying_mid_file_cuts_the_download[deflate]).
DEFLATE_BLOCK = CHUNK_SIZE // 4
FILE_MODE = stat.S_IFREG | 0o644
_DOS_EPOCH = datetime(1980, 1, 1, tzinfo=UTC)
_UNIX_EXTRA_MAX = 2**31 - 1

_local_header = Struct("<4sHHH4sIIIHH")
_central_header = Struct("<4sBBBBHH4sIIIHHHHHII")
_descriptor_32 = Struct("<4sIII")
_descriptor_64 = Struct("<4sIQQ")
_zip64_local_extra = Struct("<2sHQQ")
_zip64_central_extra = Struct("<2sHQQQ")
_unix_extra = Struct("<2sH1sl")
_dos_time = Struct("<HH")
_eocd = Struct("<4sHHHHIIH")
_zip64_eocd = Struct("<4sQHHIIQQQQ")
_zip64_locator = Struct("<4sIQI")

_UTF8 = 0x0800
_DESCRIPTOR = 0x0008
_LIMIT_32 = 0xFFFFFFFF
_LIMIT_16 = 0xFFFF


class ArchiveError(Exception):
    """A member's data did not match what was promised (length or CRC-32): the zip must be abandoned."""


@dataclass(frozen=True)
class Entry:
    """One member to write: its final name, size (None if unknown), time and, if known, CRC-32."""

    name: str
    size: int | None
    modified_at: datetime
    crc32: int | None = None


def clamp_time(moment: datetime) -> datetime:
    """A UTC time a zip can hold: DOS dates start in 1980, the 'UT' extra ends in 2038."""
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    moment = max(moment, _DOS_EPOCH)
    return min(moment, datetime.fromtimestamp(_UNIX_EXTRA_MAX, UTC))


def _dos(moment: datetime) -> bytes:
    return _dos_time.pack(
        moment.second // 2 | moment.minute << 5 | moment.hour << 11,
        moment.day | moment.month << 5 | (moment.year - 1980) << 9,
    )


@dataclass(frozen=True)
class _Member:
    """How one entry is laid out at a given offset: header bytes and the shape of what follows."""

    entry: Entry
    offset: int
    header: bytes
    zip64: bool
    descriptor: bool  # CRC and sizes follow the data (CRC not known when the header was written)

    @property
    def descriptor_length(self) -> int:
        if not self.descriptor:
            return 0
        return _descriptor_64.size if self.zip64 else _descriptor_32.size

    def descriptor_bytes(self, crc: int, size: int) -> bytes:
        if not self.descriptor:
            return b""
        if self.zip64:
            return _descriptor_64.pack(b"PK\x07\x08", crc, size, size)
        return _descriptor_32.pack(b"PK\x07\x08", crc, size, size)

    def central_record(self, crc: int, size: int) -> bytes:
        entry = self.entry
        name = entry.name.encode("utf-8")
        unix = _unix_extra.pack(b"UT", 5, b"\x01", int(entry.modified_at.timestamp()))
        flags = _UTF8 | (_DESCRIPTOR if self.descriptor else 0)
        if self.zip64:
            extra = _zip64_central_extra.pack(b"\x01\x00", 24, size, size, self.offset) + unix
            version, sizes, offset = 45, (_LIMIT_32, _LIMIT_32), _LIMIT_32
        else:
            extra = unix
            version, sizes, offset = 20, (size, size), self.offset
        return _central_header.pack(
            b"PK\x01\x02", version, 3, version, 0, flags, 0, _dos(entry.modified_at), crc,
            sizes[0], sizes[1], len(name), len(extra), 0, 0, 0, FILE_MODE << 16, offset,
        ) + name + extra


def _place(entry: Entry, offset: int) -> _Member:
    """Lay out `entry`'s local header at `offset` (mirrors stream-zip's formats byte for byte)."""
    name = entry.name.encode("utf-8")
    if len(name) > 0xFFFF:
        raise ArchiveError(f"entry name longer than 65535 bytes: {entry.name[:40]}...")
    unix = _unix_extra.pack(b"UT", 5, b"\x01", int(entry.modified_at.timestamp()))
    descriptor = entry.crc32 is None
    size = entry.size
    zip64 = size is None or size >= _LIMIT_32 or offset >= _LIMIT_32
    dos = _dos(entry.modified_at)
    if descriptor:
        flags = _UTF8 | _DESCRIPTOR
        if zip64:  # stream-zip ZIP_64 layout
            extra = _zip64_local_extra.pack(b"\x01\x00", 16, 0, 0) + unix
            fields = (45, flags, 0, dos, 0, _LIMIT_32, _LIMIT_32)
        else:  # stream-zip ZIP_32 layout
            extra = unix
            fields = (20, flags, 0, dos, 0, 0, 0)
    else:
        assert size is not None and entry.crc32 is not None
        if zip64:  # stream-zip NO_COMPRESSION_64(size, crc)
            extra = _zip64_local_extra.pack(b"\x01\x00", 16, size, size) + unix
            fields = (45, _UTF8, 0, dos, entry.crc32, _LIMIT_32, _LIMIT_32)
        else:  # stream-zip NO_COMPRESSION_32(size, crc)
            extra = unix
            fields = (20, _UTF8, 0, dos, entry.crc32, size, size)
    header = _local_header.pack(b"PK\x03\x04", *fields, len(name), len(extra)) + name + extra
    return _Member(entry, offset, header, zip64, descriptor)


def _needs_zip64_end(count: int, cd_offset: int, cd_size: int) -> bool:
    """Whether a classic end record field would hold its "see ZIP64" sentinel (or overflow).

    `>=`, not `>`: a count of exactly 0xFFFF or an offset/size of exactly 0xFFFFFFFF *is* the
    sentinel, so readers then look for ZIP64 records (Go's writer uses the same test).
    """
    return count >= _LIMIT_16 or cd_offset >= _LIMIT_32 or cd_size >= _LIMIT_32


def _end_records(count: int, cd_offset: int, cd_size: int, force_zip64: bool) -> bytes:
    """The end records after a central directory of `count` records, `cd_size` bytes at `cd_offset`.

    ZIP64 end record and locator when any field needs them (or `force_zip64`: some member is
    ZIP64, as stream-zip does). The classic record always says disk 0 (one-disk archive; yauzl 2
    refuses 0xFFFF as "multi-disk") and holds the real value of every field that fits, the
    sentinel only where it does not (Info-ZIP's and Python's choice). docs/zip-layout.md.
    """
    zip64 = force_zip64 or _needs_zip64_end(count, cd_offset, cd_size)
    classic = _eocd.pack(
        b"PK\x05\x06", 0, 0, min(count, _LIMIT_16), min(count, _LIMIT_16),
        min(cd_size, _LIMIT_32), min(cd_offset, _LIMIT_32), 0,
    )
    if not zip64:
        return classic
    return (
        _zip64_eocd.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, cd_offset)
        + _zip64_locator.pack(b"PK\x06\x07", 0, cd_offset + cd_size, 1)
        + classic
    )


# Opens member `index`'s data from byte `start`; yields chunks up to the member's end.
OpenMember = Callable[[int, int], Iterator[bytes]]
# Called with (index, crc) whenever a member's CRC-32 is computed from its full data.
CrcLearned = Callable[[int, int], None]


class ZipPlan:
    """A stored zip's layout: offsets of every part, computed from names, sizes and times only.

    With every size known, `length` is exact and `stream(start, stop)` produces any byte range of
    the archive, reading only the members (or member tails) that range needs.
    """

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.sized = all(entry.size is not None for entry in entries)
        self.members: list[_Member] = []
        offset = 0
        for entry in entries:
            member = _place(entry, offset)
            self.members.append(member)
            if entry.size is None:
                offset = -1
                break
            offset += len(member.header) + entry.size + member.descriptor_length
        self.central_offset = offset if self.sized else -1
        if self.sized:
            self.central_size = sum(
                len(m.central_record(0, m.entry.size or 0)) for m in self.members
            )
            self.length: int | None = (
                self.central_offset + self.central_size
                + len(_end_records(len(entries), self.central_offset, self.central_size,
                                 any(member.zip64 for member in self.members)))
            )
        else:
            self.length = None

    def fingerprint(self) -> str:
        """A digest of everything the archive's bytes depend on, besides member contents."""
        digest = hashlib.sha256(f"zipstream-stored-{FORMAT_VERSION}".encode())
        for entry in self.entries:
            digest.update(
                repr((entry.name, entry.size, int(entry.modified_at.timestamp()), entry.crc32)).encode()
            )
        return digest.hexdigest()

    def stream(
        self,
        open_member: OpenMember,
        start: int = 0,
        stop: int | None = None,
        known_crcs: dict[int, int] | None = None,
        on_crc: CrcLearned | None = None,
        open_head: OpenMember | None = None,
        progress: dict[int, MemberProgress] | None = None,
        prefix_crcs: Mapping[int, tuple[int, int]] | None = None,
    ) -> Iterator[bytes]:
        """The archive's bytes [start, stop) (whole archive by default).

        `known_crcs` are CRC-32s learned earlier (by index); any member read in full is checked
        against what it was promised, and reported through `on_crc`. `open_head` opens a member
        whose first bytes are read only for its CRC-32 (default `open_member`): a caller with
        read-ahead can bypass it there, since only part of the member is wanted.

        `progress` (out): for each member read from its first byte while its CRC-32 is computed, how
        far it has been read and the CRC-32 of those bytes (MemberProgress, live). `prefix_crcs` (in):
        index -> (length, CRC-32 of the member's first `length` bytes); a `start` exactly `length`
        bytes into that member's data then needs no read of those bytes for its CRC-32. Together they
        let a stream stopped inside a member go on later from there (stream.ZipStream parks).
        """
        if stop is None:
            stop = self.length if self.length is not None else 1 << 62
        whole = start == 0 and stop == (self.length if self.length is not None else 1 << 62)
        if not whole and not self.sized:
            raise ValueError("byte ranges need every member's size")
        crcs: dict[int, int] = dict(known_crcs or {})
        for index, entry in enumerate(self.entries):
            if entry.crc32 is not None:
                crcs[index] = entry.crc32
        sizes: dict[int, int] = {}
        pos = 0
        central: list[bytes] = []

        def emit(chunk: bytes, at: int) -> bytes:
            """The part of `chunk` (which starts at archive offset `at`) inside [start, stop)."""
            lo, hi = max(start, at), min(stop, at + len(chunk))
            if lo >= hi:
                return b""
            if lo == at and hi == at + len(chunk):
                return chunk
            return chunk[lo - at : hi - at]

        needs_all_crcs = self.central_offset < 0 or stop > self.central_offset
        any_zip64 = False
        for index, entry in enumerate(self.entries):
            member = self.members[index] if self.sized else _place(entry, pos)
            any_zip64 = any_zip64 or member.zip64
            if pos >= stop:
                break
            if part := emit(member.header, pos):
                yield part
            pos += len(member.header)
            data_start = pos
            size = entry.size
            data_end = data_start + size if size is not None else None
            descriptor_end = (data_end + member.descriptor_length) if data_end is not None else None
            in_range = data_end is None or (start < data_end and data_start < stop)
            crc_wanted = index not in crcs and member.descriptor and (
                needs_all_crcs or descriptor_end is None or (start < descriptor_end and data_end is not None
                                                              and data_end < stop)
            )
            if in_range or crc_wanted:
                head: _HeadCrc | _KnownCrc | None = None
                if crc_wanted and data_end is not None and data_start < start < data_end:
                    read_from = start - data_start
                    prefix = prefix_crcs.get(index) if prefix_crcs is not None else None
                    if prefix is not None and prefix[0] == read_from:
                        head = _KnownCrc(prefix[1])
                    else:
                        # A resume inside a member whose CRC-32 is unknown: stream the bytes after the
                        # cut now, and read the ones before it alongside, for the CRC only (combined at
                        # the member's end, before its descriptor), so the first byte never waits for them.
                        # From the end of a shorter known prefix, if there is one (a head cut short).
                        known = prefix if prefix is not None and 0 < prefix[0] < read_from else (0, 0)
                        head = _HeadCrc(open_head or open_member, index, entry.name, read_from, *known)
                else:
                    read_from = 0 if (crc_wanted or start <= data_start) else start - data_start
                seen = yield from self._member_data(
                    index, entry, open_member, read_from, data_start, stop, emit, crcs, on_crc, head, progress
                )
                if size is None:
                    size = seen
                    data_end = data_start + size
            assert size is not None and data_end is not None
            sizes[index] = size
            pos = data_end
            if member.descriptor:
                if pos < stop and pos + member.descriptor_length > start:
                    descriptor = member.descriptor_bytes(crcs[index], size)
                    if part := emit(descriptor, pos):
                        yield part
                pos += member.descriptor_length
            if needs_all_crcs:
                central.append(member.central_record(crcs[index], size))
        if pos >= stop or not needs_all_crcs:
            return
        # Central directory and end records.
        central_offset = pos
        central_bytes = b"".join(central)
        tail = central_bytes + _end_records(len(self.entries), central_offset, len(central_bytes), any_zip64)
        for piece_start in range(0, len(tail), CHUNK_SIZE):
            piece = tail[piece_start : piece_start + CHUNK_SIZE]
            if part := emit(piece, central_offset + piece_start):
                yield part

    @staticmethod
    def _member_data(
        index: int, entry: Entry, open_member: OpenMember, read_from: int, data_start: int, stop: int,
        emit: Callable[[bytes, int], bytes], crcs: dict[int, int], on_crc: CrcLearned | None,
        head: _HeadCrc | _KnownCrc | None = None, progress: dict[int, MemberProgress] | None = None,
    ) -> Generator[bytes, None, int]:
        """Yield the in-range part of member `index`, reading from `read_from`; returns bytes seen.

        With `head` (the CRC-32 of bytes [0, read_from) being computed alongside, or known), the
        member's CRC-32 is still known at its end: the tail's, combined with the head's.
        """
        limit = entry.size
        tally = _Tally(entry.name, limit, seen=read_from, crc=read_from == 0 or head is not None)
        if progress is not None and tally.crc is not None:
            progress[index] = MemberProgress(tally, read_from, head.crc if isinstance(head, _KnownCrc) else head)
        try:
            chunks = open_member(index, read_from)
        except BaseException:
            if head is not None:
                head.cancel()
            raise
        try:
            for chunk in chunks:
                at = data_start + tally.seen
                tally.add(chunk)
                part = emit(chunk, at)
                del chunk  # not kept while the next is read (memory.py: a grant covers one chunk)
                if part:
                    yield part
                    del part
                elif at >= stop and index in crcs:
                    break  # past the range and the CRC is not needed: stop reading
        finally:
            close_iterator(chunks)
            if head is not None and (limit is None or tally.seen != limit):
                head.cancel()  # cut short (error or client gone): its CRC will never be needed
        seen = tally.seen
        if not (data_start + seen >= stop and index in crcs):
            tally.check_length()
        if tally.crc is not None and (limit is None or seen == limit):
            crc = tally.crc if head is None else crc32_combine(head.result(), tally.crc, seen - read_from)
            _check_crc(entry.name, crc, crcs.get(index))
            crcs[index] = crc
            if on_crc is not None:
                on_crc(index, crc)
        return seen


class _Tally:
    """One member's bytes as they pass, checked against what was promised: the one place both writers
    check a source (stored: ZipPlan._member_data; deflate: _checked).

    `add` counts each chunk (from `seen`, where a read starts) and computes the CRC-32 of the bytes
    added, unless `crc` is False (`self.crc` is then None); it raises ArchiveError once more than
    `size` bytes came. `check_length` raises ArchiveError if fewer did (`size` None: any number).
    """

    __slots__ = ("before_crc", "before_seen", "crc", "name", "seen", "size")

    def __init__(self, name: str, size: int | None, seen: int = 0, crc: bool = True) -> None:
        self.name = name
        self.size = size
        self.seen = seen
        self.crc: int | None = 0 if crc else None
        # Where the last chunk added began, and the CRC-32 up to there (MemberProgress.prefix_at).
        self.before_seen = seen
        self.before_crc = self.crc

    def add(self, chunk: bytes) -> None:
        seen = self.seen + len(chunk)
        if self.size is not None and seen > self.size:
            raise ArchiveError(f"{self.name}: source sent more than its {self.size} bytes")
        self.before_seen = self.seen
        self.before_crc = self.crc
        self.seen = seen
        if self.crc is not None:
            self.crc = crc32(chunk, self.crc)

    def check_length(self) -> None:
        if self.size is not None and self.seen < self.size:
            raise ArchiveError(f"{self.name}: source ended after {self.seen} of {self.size} bytes")


def _check_crc(name: str, crc: int, expected: int | None) -> None:
    """ArchiveError if a member's CRC-32 differs from the one it was promised (given or learned)."""
    if expected is not None and crc != expected:
        raise ArchiveError(f"{name}: CRC-32 {crc:08x} differs from the expected {expected:08x}")


class MemberProgress:
    """How far a member's data has been read from its first byte (`seen`, bytes) and the CRC-32 of
    those bytes (`crc()`): what a stream stopped inside the member needs to go on from there without
    reading them again (ZipPlan.stream's `progress` and `prefix_crcs`). Live: it follows the read.

    A read that began inside the member (a resume) knows the CRC-32 of the bytes before it (`prefix_crc`)
    or has them read alongside (a _HeadCrc): until that read is done, `crc()` and `prefix_at` give the
    CRC-32 of as much of the head as it read (shorter than asked: the stream going on reads the rest)."""

    __slots__ = ("_head", "_prefix", "_prefix_crc", "_tally")

    def __init__(self, tally: _Tally, prefix: int = 0, prefix_crc: int | _HeadCrc | None = 0) -> None:
        self._tally = tally
        self._prefix = prefix  # bytes before the read began, whose CRC-32 is `prefix_crc`
        self._head = prefix_crc if isinstance(prefix_crc, _HeadCrc) else None  # ... or is being read
        self._prefix_crc = prefix_crc if isinstance(prefix_crc, int) else 0

    @property
    def seen(self) -> int:
        return self._tally.seen

    def crc(self) -> int:
        """The CRC-32 of the first `seen` bytes (once the bytes before the read, if any, were read)."""
        assert self._head_read() is None, "the bytes before the read are still being read"
        return self._crc_to(self._tally.crc, self._tally.seen)

    def prefix_at(self, length: int, chunk: bytes | None = None) -> tuple[int, int] | None:
        """(length, CRC-32 of the member's first `length` bytes) for a stream that stops there: at
        `seen`, or inside the last chunk read (`chunk`, of which only the first bytes went out);
        None anywhere else. While the bytes before the read are still being read for their CRC-32:
        (how many of them were read, their CRC-32), or None if none were."""
        head = self._head_read()
        if head is not None:
            return head if head[0] and self._prefix <= length <= self._tally.seen else None
        tally = self._tally
        if length == tally.seen:
            return length, self.crc()
        if chunk is None or not tally.before_seen <= length < tally.seen:
            return None
        return length, crc32(chunk[: length - tally.before_seen], self._crc_to(tally.before_crc, tally.before_seen))

    def _head_read(self) -> tuple[int, int] | None:
        """While the bytes before the read are being read alongside: (bytes read, their CRC-32)."""
        if self._head is None:
            return None
        read = self._head.read
        if read[0] < self._prefix:
            return read
        self._prefix_crc, self._head = read[1], None  # all read: known from now on
        return None

    def _crc_to(self, crc: int | None, seen: int) -> int:
        assert crc is not None  # only made for a tally that computes one
        if not self._prefix:
            return crc
        return crc32_combine(self._prefix_crc, crc, seen - self._prefix)


class _KnownCrc:
    """The CRC-32 of a member's first bytes, already known (a parked stream's MemberProgress)."""

    __slots__ = ("crc",)

    def __init__(self, crc: int) -> None:
        self.crc = crc

    def result(self) -> int:
        return self.crc

    def cancel(self) -> None:
        pass


class _HeadCrc:
    """The CRC-32 of a member's first `length` bytes, read in a worker thread (a greenlet under
    gunicorn's gevent worker) while the rest of the member streams out."""

    def __init__(self, open_member: OpenMember, index: int, name: str, length: int, start: int = 0,
                 start_crc: int = 0) -> None:
        self._name = name
        self._length = length
        self._crc: int | None = None
        self._error: BaseException | None = None
        self._cancelled = threading.Event()
        # (bytes read so far, their CRC-32): from `start`, whose CRC-32 `start_crc` is known already
        # (a head cut short before). One tuple, so a reader in another thread sees a matching pair.
        self.read = (start, start_crc)
        # Opened here, in the caller's thread: the opener may keep per-download state (read-ahead).
        chunks = open_member(index, start)
        self._thread = threading.Thread(target=self._run, args=(chunks,), name=f"head-crc-{index}", daemon=True)
        self._thread.start()

    def _run(self, chunks: Iterator[bytes]) -> None:
        seen, crc = self.read
        try:
            for chunk in chunks:
                if self._cancelled.is_set():
                    return
                if len(chunk) > self._length - seen:
                    chunk = chunk[: self._length - seen]
                crc = crc32(chunk, crc)
                seen += len(chunk)
                self.read = (seen, crc)
                if seen >= self._length:
                    break
            if seen < self._length:
                raise ArchiveError(f"{self._name}: source ended after {seen} bytes, before the resume point "
                                   f"at {self._length}")
            self._crc = crc
        except BaseException as error:  # noqa: BLE001 - handed to result(), raised in the stream
            self._error = error
        finally:
            close_iterator(chunks)

    def result(self) -> int:
        """The head's CRC-32, once read (waits for it); raises what the read raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._crc is None:
            raise ArchiveError(f"{self._name}: the read of the bytes before the resume point was cancelled")
        return self._crc

    def cancel(self) -> None:
        """Stop reading (at the next chunk; the worker closes the source's body)."""
        self._cancelled.set()


def deflate_stream(entries: list[Entry], open_member: OpenMember) -> Iterator[bytes]:
    """A deflate-compressed zip through stream-zip (length not known in advance).

    stream-zip writes the members and central directory; its end records are replaced by ours
    (`_corrected_end_records`), since it saturates every classic field of a ZIP64 archive and
    misses the sentinel edges (0xFFFF entries, a directory at exactly 0xFFFFFFFF).
    """

    def members() -> Iterable[tuple[str, datetime, int, Any, Iterable[bytes]]]:
        offset_bound: int | None = 0  # the next local header's offset is at most this (None: unknown)
        for index, entry in enumerate(entries):
            size_bound = None if entry.size is None else _deflated_bound(entry.size)
            # ZIP_32 only where no 32-bit field of the member can reach 0xFFFFFFFF (the sentinel):
            # stream-zip's ZIP_32 writes the offset and sizes as they are, without ZIP64 extras.
            # And members from the 65,536th on are ZIP_64: stream-zip refuses more than 0xFFFF
            # ZIP_32 members (CentralDirectoryNumberOfEntriesOverflowError) unless one is ZIP_64.
            small = (
                size_bound is not None and offset_bound is not None
                and size_bound < _LIMIT_32 and offset_bound < _LIMIT_32 and index < _LIMIT_16
            )
            method = ZIP_32 if small else ZIP_64
            if offset_bound is not None and size_bound is not None:
                offset_bound += _member_overhead(entry) + size_bound
            else:
                offset_bound = None
            yield entry.name, entry.modified_at, FILE_MODE, method, _checked(entry, open_member(index, 0))

    yield from _corrected_end_records(
        stream_zip(members(), chunk_size=DEFLATE_BLOCK, get_compressobj=_compressobj), len(entries)
    )


def _deflated_bound(size: int) -> int:
    """An upper bound of `size` bytes once deflated.

    zlib's worst case is +0.03% plus a few bytes (stored blocks: 5 bytes per 64 KiB); 1/8 plus 64
    bytes is ample for zlib-ng too, and small enough that 65,535 empty members stay ZIP_32.
    """
    return size + (size >> 3) + 64


def _member_overhead(entry: Entry) -> int:
    """Upper bound of a stream-zip member's bytes besides its data: local header, extras, descriptor."""
    return _local_header.size + len(entry.name.encode("utf-8")) + _zip64_local_extra.size + 9 + _descriptor_64.size


# The longest end records: ZIP64 end record, ZIP64 locator and classic end record without comment.
_END_MAX = _zip64_eocd.size + _zip64_locator.size + _eocd.size


def _corrected_end_records(chunks: Iterable[bytes], count: int) -> Iterator[bytes]:
    """stream-zip's archive of `count` members with its end records rewritten by `_end_records`.

    Passes every byte through except the last `_END_MAX`, which it holds back; at the end it
    reads the central directory's offset and size from stream-zip's records (ZIP64 when present,
    else classic: then every field holds its real value) and writes ours instead. Raises
    ArchiveError if the records are not where and what stream-zip always writes.
    """
    held = b""  # at least the last _END_MAX bytes seen (one chunk of latency, no copying)
    emitted = 0
    try:
        for chunk in chunks:
            if len(chunk) >= _END_MAX:
                if held:
                    yield held
                    emitted += len(held)
                held = chunk
            else:
                held += chunk
                if len(held) > DEFLATE_BLOCK:
                    yield held[:-_END_MAX]
                    emitted += len(held) - _END_MAX
                    held = held[-_END_MAX:]
    finally:
        # An aborted download closes us; close stream-zip now so it closes the sources' bodies.
        close_iterator(chunks)
    total = emitted + len(held)
    if held[-_eocd.size:][:4] != b"PK\x05\x06":
        raise ArchiveError("stream-zip's output does not end with an end of central directory record")
    _, _, _, _, listed, cd_size, cd_offset, _ = _eocd.unpack(held[-_eocd.size:])
    locator = held[-_eocd.size - _zip64_locator.size : -_eocd.size]
    zip64 = (
        len(held) >= _END_MAX and locator[:4] == b"PK\x06\x07"
        and _zip64_locator.unpack(locator)[2] == total - _END_MAX
        and held[-_END_MAX:][:4] == b"PK\x06\x06"
    )
    if zip64:
        record = _zip64_eocd.unpack(held[-_END_MAX : -_END_MAX + _zip64_eocd.size])
        listed, cd_size, cd_offset = record[7], record[8], record[9]
    end_length = _END_MAX if zip64 else _eocd.size
    if listed != count or cd_offset + cd_size != total - end_length:
        raise ArchiveError(
            f"stream-zip's end records disagree with its output: {listed} of {count} entries, "
            f"directory {cd_size} bytes at {cd_offset}, records at {total - end_length}"
        )
    yield held[:-end_length]
    yield _end_records(count, cd_offset, cd_size, zip64)


def _compressobj() -> Any:
    """A raw-deflate compressor (zlib-ng's, when installed) for stream-zip."""
    return _zlib.compressobj(level=DEFLATE_LEVEL, wbits=-zlib.MAX_WBITS)


def _checked(entry: Entry, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Pass chunks through, failing (ArchiveError) if their total differs from the promised size or,
    for a member whose CRC-32 was given, their CRC from it (stream-zip computes the CRC it writes:
    computing it here too is only worth it to check a given one)."""
    tally = _Tally(entry.name, entry.size, crc=entry.crc32 is not None)
    try:
        for chunk in chunks:
            tally.add(chunk)
            yield chunk
    finally:
        close_iterator(chunks)
    tally.check_length()
    if tally.crc is not None:
        _check_crc(entry.name, tally.crc, entry.crc32)
