"""The zip writer: layout maths vs real bytes, byte identity with stream-zip, ranges, integrity checks."""

from __future__ import annotations

import io
import os
import random
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from stream_zip import (
    NO_COMPRESSION_32,
    NO_COMPRESSION_64,
    ZIP_32,
    ZIP_64,
    CentralDirectoryNumberOfEntriesOverflowError,
    stream_zip,
)

from zipstream import archive as archive_module
from zipstream.archive import (
    CHUNK_SIZE,
    FILE_MODE,
    ArchiveError,
    Entry,
    MemberProgress,
    OpenMember,
    ZipPlan,
    clamp_time,
    deflate_stream,
)

from .support import ci, readers
from .support import zip_shapes as zip_shapes_module
from .support.readers import CheckZip
from .support.waiting import wait_for
from .support.zip_shapes import Shapes

WHEN = datetime(2024, 2, 29, 13, 37, 42, tzinfo=UTC)
SIZES_AROUND_64K = [0, 1, 65535, 65536, 65537, 131071, 131072, 131073, 262144, 262145]


def stream_zip_reference(entries: list[Entry], datas: list[bytes]) -> bytes:
    """stream-zip's own bytes for `entries` (stored where the CRC is known): the yardstick ours must equal."""

    def members() -> Iterator[tuple[str, datetime, int, object, tuple[bytes]]]:
        offset = 0
        for entry, data in zip(entries, datas, strict=True):
            size = len(data)
            zip64 = size >= 0xFFFFFFFF or offset >= 0xFFFFFFFF
            if entry.crc32 is not None:
                method = (NO_COMPRESSION_64 if zip64 else NO_COMPRESSION_32)(size, entry.crc32)
            else:
                method = ZIP_64 if zip64 else ZIP_32
            offset += size
            yield entry.name, entry.modified_at, FILE_MODE, method, (data,)

    return b"".join(stream_zip(members(), chunk_size=CHUNK_SIZE))


def _datas(sizes: list[int], seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size) for size in sizes]


def _opener(datas: list[bytes], chunk: int = 10_000) -> tuple[list[tuple[int, int]], object]:
    calls: list[tuple[int, int]] = []

    def open_member(index: int, start: int) -> Iterator[bytes]:
        calls.append((index, start))
        data = datas[index]
        for offset in range(start, len(data), chunk):
            yield data[offset : offset + chunk]

    return calls, open_member


def _entries(datas: list[bytes], known_crc: bool, names: list[str] | None = None) -> list[Entry]:
    names = names or [f"file-{i}.bin" for i in range(len(datas))]
    return [
        Entry(name, len(data), WHEN, zlib.crc32(data) if known_crc else None)
        for name, data in zip(names, datas, strict=True)
    ]


@pytest.mark.parametrize("known_crc", [False, True])
def test_layout_length_matches_streamed_bytes(known_crc: bool) -> None:
    datas = _datas(SIZES_AROUND_64K)
    plan = ZipPlan(_entries(datas, known_crc, [f"dossier/été-{i}.bin" for i in range(len(datas))]))
    _, open_member = _opener(datas)
    full = b"".join(plan.stream(open_member))  # type: ignore[arg-type]
    assert plan.length == len(full)
    archive = zipfile.ZipFile(io.BytesIO(full))
    assert archive.testzip() is None
    assert [archive.read(name) for name in archive.namelist()] == datas
    assert all(info.flag_bits & 0x800 for info in archive.infolist())  # UTF-8 names flagged


def test_known_crc_members_are_byte_identical_to_stream_zip() -> None:
    datas = _datas(SIZES_AROUND_64K, seed=3)
    entries = _entries(datas, known_crc=True, names=[f"ünï/{i}.dat" for i in range(len(datas))])
    _, open_member = _opener(datas)
    ours = b"".join(ZipPlan(entries).stream(open_member))  # type: ignore[arg-type]
    assert ours == stream_zip_reference(entries, datas)


def test_descriptor_members_match_stream_zip_zip32_layout_except_method() -> None:
    """Unknown-CRC members use stream-zip's ZIP_32 layout; only compression method and data differ."""
    data = b"abc" * 1000
    entry = Entry("a.txt", len(data), WHEN)
    _, open_member = _opener([data])
    ours = b"".join(ZipPlan([entry]).stream(open_member))  # type: ignore[arg-type]
    theirs = b"".join(stream_zip([("a.txt", WHEN, 0o100644, ZIP_32, (data,))]))
    # Local header: identical except the compression method field (offset 8, 2 bytes).
    assert ours[:8] == theirs[:8]
    assert ours[8:10] == b"\x00\x00" and theirs[8:10] == b"\x08\x00"
    assert ours[10:30 + 5 + 9] == theirs[10:30 + 5 + 9]


@pytest.mark.parametrize("count", [1, 5000])
def test_random_ranges_equal_slices_of_full_download(count: int) -> None:
    rng = random.Random(count)
    sizes = [rng.choice([0, 1, 100, 65535, 65536, 65537]) for _ in range(count)]
    datas = _datas(sizes, seed=count)
    plan = ZipPlan(_entries(datas, known_crc=False))
    _, open_member = _opener(datas)
    full = b"".join(plan.stream(open_member))  # type: ignore[arg-type]
    assert len(full) == plan.length
    learned: dict[int, int] = {}
    b"".join(plan.stream(open_member, on_crc=learned.__setitem__))  # type: ignore[arg-type]
    for _ in range(40 if count > 1 else 300):
        start = rng.randrange(0, len(full))
        stop = rng.randrange(start + 1, len(full) + 1)
        # With and without CRCs learned from an earlier download.
        for known in ({}, learned):
            got = b"".join(plan.stream(open_member, start, stop, known_crcs=known))  # type: ignore[arg-type]
            assert got == full[start:stop], (start, stop, bool(known))


def test_resume_reads_only_the_member_it_was_cut_inside() -> None:
    datas = _datas([300_000, 300_000, 300_000])
    plan = ZipPlan(_entries(datas, known_crc=False))
    calls, open_member = _opener(datas)
    learned: dict[int, int] = {}
    full = b"".join(plan.stream(open_member, on_crc=learned.__setitem__))  # type: ignore[arg-type]
    assert calls == [(0, 0), (1, 0), (2, 0)]
    calls.clear()
    cut = plan.members[1].offset + len(plan.members[1].header) + 1234  # inside member 1's data
    rest = b"".join(plan.stream(open_member, cut, known_crcs=learned))  # type: ignore[arg-type]
    assert full[:cut] + rest == full
    # Member 0 not read at all; member 1 read from where the cut was; member 2 read once.
    assert calls == [(1, 1234), (2, 0)]


def test_resume_without_learned_crcs_rereads_the_cut_member_from_its_start() -> None:
    datas = _datas([200_000, 200_000])
    plan = ZipPlan(_entries(datas, known_crc=False))
    calls, open_member = _opener(datas)
    full = b"".join(plan.stream(open_member))  # type: ignore[arg-type]
    calls.clear()
    cut = plan.members[1].offset + len(plan.members[1].header) + 5000
    rest = b"".join(plan.stream(open_member, cut))  # type: ignore[arg-type]
    assert full[:cut] + rest == full
    assert (1, 0) in calls  # the cut member is read whole for its CRC
    assert (0, 0) in calls  # the central directory needs member 0's CRC: nothing learned, so read it


def test_a_stream_stopped_inside_a_member_goes_on_from_its_progress_without_reading_the_head_again() -> None:
    """A parked download (stream.ZipStream) stops its stream inside a member whose CRC-32 is not known,
    then goes on from there: the member's progress carries the CRC-32 of what was read, so nothing
    before the stop is read again, and twice over (a stop inside the continuation) still adds up."""
    datas = _datas([300_000, 300_000, 300_000])
    plan = ZipPlan(_entries(datas, known_crc=False))
    calls, open_member = _opener(datas)
    full = b"".join(plan.stream(open_member))  # type: ignore[arg-type]
    calls.clear()
    learned: dict[int, int] = {}
    progress: dict[int, MemberProgress] = {}
    prefixes: dict[int, tuple[int, int]] = {}
    out = b""
    for stop_after in (plan.members[1].offset + len(plan.members[1].header) + 25_000,
                       plan.members[1].offset + len(plan.members[1].header) + 190_000):
        chunks = plan.stream(open_member, len(out), known_crcs=learned,  # type: ignore[arg-type]
                             on_crc=learned.__setitem__, progress=progress, prefix_crcs=prefixes)
        for chunk in chunks:
            out += chunk
            if len(out) >= stop_after:
                break
        chunks.close()
        prefixes = {index: (member.seen, member.crc()) for index, member in progress.items()}
        progress.clear()
        data_start = plan.members[1].offset + len(plan.members[1].header)
        assert prefixes[1] == (len(out) - data_start, zlib.crc32(datas[1][: len(out) - data_start]))
    out += b"".join(plan.stream(open_member, len(out), known_crcs=learned,  # type: ignore[arg-type]
                                on_crc=learned.__setitem__, progress=progress, prefix_crcs=prefixes))
    assert out == full
    assert zipfile.ZipFile(io.BytesIO(out)).testzip() is None
    # Each member read once from where the stream was, never from 0 again for its CRC-32.
    assert [start for index, start in calls if index == 1] == [0, 30_000, 190_000]
    assert learned == {index: zlib.crc32(data) for index, data in enumerate(datas)}


def test_a_resumed_stream_stopped_again_inside_its_member_does_not_read_the_head_again() -> None:
    """A resume (Range) inside a member whose CRC-32 is not known reads the bytes before it alongside, for
    the CRC only (_HeadCrc). When that stream stops again inside the member (the download parks, and again),
    its progress carries over the head's CRC-32, or that of as much of the head as was read: before, the
    member had no progress, and every park read [0, position) from upstream again (a 3 MB member resumed
    at 2 MB, parked 10 times: 40 MB fetched for 200 KB sent)."""
    datas = _datas([300_000, 300_000])
    plan = ZipPlan(_entries(datas, known_crc=False))
    full = b"".join(plan.stream(_opener(datas)[1]))  # type: ignore[arg-type]
    data_start = plan.members[1].offset + len(plan.members[1].header)
    calls, plain = _opener(datas)
    release = threading.Event()

    def open_member(index: int, start: int) -> Iterator[bytes]:
        for number, chunk in enumerate(plain(index, start)):  # type: ignore[operator]
            if index == 1 and start == 0 and number == 2:
                release.wait(10)  # a slow head: 20,000 of its 200,000 bytes read when the stream stops
            yield chunk

    def stopped(prefixes: dict[int, tuple[int, int]], sent: int, head: int) -> tuple[int, dict[int, tuple[int, int]]]:
        """Stream from `sent` to 30,000 bytes further; the prefix of member 1 it carries (`head` bytes long)."""
        progress: dict[int, MemberProgress] = {}
        chunks = plan.stream(open_member, sent, progress=progress, prefix_crcs=prefixes)  # type: ignore[arg-type]
        out = b""
        for chunk in chunks:
            out += chunk
            if len(out) >= 30_000:
                break
        assert out == full[sent : sent + len(out)]
        sent += len(out)
        expected = (head, zlib.crc32(datas[1][:head]))
        wait_for(lambda: 1 in progress and progress[1].prefix_at(sent - data_start) == expected, "the head's CRC")
        chunks.close()
        return sent, {1: expected}

    sent, prefixes = stopped({}, data_start + 200_000, head=20_000)  # the head not read yet: as far as it got
    release.set()
    sent, prefixes = stopped(prefixes, sent, head=260_000)  # the head read: all it sent
    assert full[:sent] + b"".join(plan.stream(open_member, sent, prefix_crcs=prefixes)) == full  # type: ignore[arg-type]
    # The head read from 0 once, then from where it had got to; the data from where each stream was.
    assert sorted(start for index, start in calls if index == 1) == [0, 20_000, 200_000, 230_000, 260_000]


def test_a_members_progress_gives_the_crc_of_any_prefix_ending_in_the_last_chunk_read() -> None:
    """A parked download may stop inside a chunk it was sending in pieces (stream.ZipStream)."""
    datas = _datas([100_000])
    plan = ZipPlan(_entries(datas, known_crc=False))
    _, open_member = _opener(datas)
    progress: dict[int, MemberProgress] = {}
    chunks = plan.stream(open_member, progress=progress)  # type: ignore[arg-type]
    next(chunks)  # the local header
    next(chunks)
    last = next(chunks)  # member bytes [10,000, 20,000)
    member = progress[0]
    assert member.seen == 20_000
    for length in (10_000, 10_001, 15_000, 19_999, 20_000):
        assert member.prefix_at(length, last) == (length, zlib.crc32(datas[0][:length]))
    assert member.prefix_at(9_999, last) is None and member.prefix_at(20_001, last) is None
    assert member.prefix_at(15_000) is None  # inside the chunk, but which bytes went out is not said
    chunks.close()
    # A stream that went on from a known prefix combines it with what it read since.
    prefixes = {0: (15_000, zlib.crc32(datas[0][:15_000]))}
    start = plan.members[0].offset + len(plan.members[0].header) + 15_000
    chunks = plan.stream(open_member, start, progress=progress, prefix_crcs=prefixes)  # type: ignore[arg-type]
    first = next(chunks)
    second = next(chunks)
    assert first == datas[0][15_000:25_000] and second == datas[0][25_000:35_000]
    assert progress[0].prefix_at(30_000, second) == (30_000, zlib.crc32(datas[0][:30_000]))
    assert progress[0].prefix_at(35_000) == (35_000, zlib.crc32(datas[0][:35_000]))
    chunks.close()


def test_unsized_members_stream_as_zip64_descriptors() -> None:
    datas = _datas([70_000, 0, 5])
    entries = [Entry(f"u{i}", None, WHEN) for i in range(len(datas))]
    plan = ZipPlan(entries)
    assert plan.length is None
    _, open_member = _opener(datas)
    archive = zipfile.ZipFile(io.BytesIO(b"".join(plan.stream(open_member))))  # type: ignore[arg-type]
    assert archive.testzip() is None
    assert [archive.read(n) for n in archive.namelist()] == datas


def _stored(entries: list[Entry], open_member: OpenMember) -> bytes:
    return b"".join(ZipPlan(entries).stream(open_member))


def _deflated(entries: list[Entry], open_member: OpenMember) -> bytes:
    return b"".join(deflate_stream(entries, open_member))


WRITERS = [pytest.param(_stored, id="stored"), pytest.param(_deflated, id="deflate")]


@pytest.mark.parametrize("write", WRITERS)
def test_short_source_aborts(write: Callable[[list[Entry], OpenMember], bytes]) -> None:
    def short(_index: int, _start: int) -> Iterator[bytes]:
        yield b"12345"

    with pytest.raises(ArchiveError, match="ended after 5 of 10"):
        write([Entry("a", 10, WHEN)], short)


@pytest.mark.parametrize("write", WRITERS)
def test_long_source_aborts(write: Callable[[list[Entry], OpenMember], bytes]) -> None:
    def long(_index: int, _start: int) -> Iterator[bytes]:
        yield b"12"
        yield b"345"

    with pytest.raises(ArchiveError, match="more than its 3 bytes"):
        write([Entry("a", 3, WHEN)], long)


@pytest.mark.parametrize("write", WRITERS)
def test_wrong_given_crc_aborts(write: Callable[[list[Entry], OpenMember], bytes]) -> None:
    def data(_index: int, _start: int) -> Iterator[bytes]:
        yield b"abc"

    with pytest.raises(ArchiveError, match="CRC-32 352441c2 differs from the expected 000004d2"):
        write([Entry("a", 3, WHEN, crc32=1234)], data)


def test_a_member_differing_from_its_learned_crc_aborts() -> None:
    """A CRC-32 learned by an earlier download is still computed again and compared: a source that
    sends other bytes of the same size under the same validators is caught, not written."""
    datas = _datas([100_000])
    plan = ZipPlan(_entries(datas, known_crc=False))
    _, open_member = _opener([datas[0][:-1] + b"!"])
    with pytest.raises(ArchiveError, match="differs from the expected"):
        b"".join(plan.stream(open_member, known_crcs={0: zlib.crc32(datas[0])}))  # type: ignore[arg-type]


def test_times_are_clamped_into_zip_range() -> None:
    assert clamp_time(datetime(1970, 1, 1, tzinfo=UTC)).year == 1980
    assert clamp_time(datetime(2100, 1, 1, tzinfo=UTC)).year == 2038
    assert clamp_time(datetime(2020, 1, 1)).tzinfo is UTC


def test_deflate_stream_round_trips() -> None:
    datas = [b"a" * 200_000, b"", _datas([70_000])[0]]
    entries = [Entry(f"d{i}", len(d), WHEN) for i, d in enumerate(datas)]
    _, open_member = _opener(datas)
    archive = zipfile.ZipFile(io.BytesIO(b"".join(deflate_stream(entries, open_member))))  # type: ignore[arg-type]
    assert archive.testzip() is None
    assert [archive.read(n) for n in archive.namelist()] == datas
    assert archive.infolist()[0].compress_type == zipfile.ZIP_DEFLATED


@pytest.mark.parametrize("size", [65535, 65536, 65537, 131072, 3 * 65536 + 1])
@pytest.mark.parametrize("chunk", [1, 4096, 65536, 65537])
def test_stream_zip_pinned_version_does_not_truncate(size: int, chunk: int) -> None:
    """Regression for uktrade/stream-zip#189 (0.0.84 truncates): members landing on chunk boundaries."""
    data = random.Random(size).randbytes(size)
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    for method in (ZIP_32, NO_COMPRESSION_32(size, zlib.crc32(data))):
        members = [("a.bin", WHEN, 0o100644, method, iter(pieces)), ("b.bin", WHEN, 0o100644, method, iter(pieces))]
        out = b"".join(stream_zip(members, chunk_size=65536))
        archive = zipfile.ZipFile(io.BytesIO(out))
        assert archive.read("a.bin") == data
        assert archive.read("b.bin") == data


def test_real_readers_accept_both_member_formats(tmp_path: Path, zip_readers: CheckZip) -> None:
    datas = _datas([0, 1, 65536, 65537, 200_000])
    names = [f"dir/naïve {i}.bin" for i in range(len(datas))]
    for known in (False, True):
        _, open_member = _opener(datas)
        path = tmp_path / f"known-{known}.zip"
        path.write_bytes(b"".join(ZipPlan(_entries(datas, known, names)).stream(open_member)))  # type: ignore[arg-type]
        zip_readers(path, dict(zip(names, datas, strict=True)))


def test_java_zipinputstream_reads_known_crc_archives(tmp_path: Path, zip_readers: CheckZip) -> None:
    """Java's streaming reader rejects STORED + data descriptor; with CRCs known up front it must work."""
    datas = _datas([0, 10, 70_000])
    names = [f"j{i}.bin" for i in range(len(datas))]
    _, open_member = _opener(datas)
    path = tmp_path / "java.zip"
    path.write_bytes(b"".join(ZipPlan(_entries(datas, True, names)).stream(open_member)))  # type: ignore[arg-type]
    zip_readers(path, dict(zip(names, datas, strict=True)), readers=("java-stream",))


def test_more_than_65535_entries_use_zip64_end_records() -> None:
    count = 65_536 + 10
    entries = [Entry(f"{i}", 0, WHEN) for i in range(count)]
    plan = ZipPlan(entries)

    def empty(_index: int, _start: int) -> Iterator[bytes]:
        return iter(())

    data = b"".join(plan.stream(empty))
    assert len(data) == plan.length
    assert b"PK\x06\x06" in data[-200:]
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert len(archive.infolist()) == count


# --------------------------------------------------------------------------- the reader matrix (issue 12)

SLOW = pytest.mark.skipif(
    not (os.environ.get("ZIPSTREAM_SLOW") or ci.on_ci()),
    reason="runs on CI or with ZIPSTREAM_SLOW=1 (multi-GB reads: ~60 s per shape for all readers)",
)


FULL_READS_ON_CI = ("7z", "bsdtar", "java", "go")


@pytest.fixture(scope="session")
def zip_shapes(tmp_path_factory: pytest.TempPathFactory) -> Shapes:
    """Every shape built at most once per session, shared by every reader."""
    return Shapes(tmp_path_factory.mktemp("zip-shapes"))


@pytest.mark.parametrize("reader", readers.ALL)
@pytest.mark.parametrize("shape", [*zip_shapes_module.SMALL, *zip_shapes_module.COUNTS, *zip_shapes_module.BIG])
def test_every_reader_opens_every_shape(zip_shapes: Shapes, shape: str, reader: str) -> None:
    """Each reader lists (and, for the small shapes, reads and CRC-checks) each shape's members."""
    readers.require_readers([reader])
    built = zip_shapes[shape]
    readers.check_zip(built.path, built.expected, readers=[reader], listing=built.listing)


@pytest.mark.slow
@SLOW
@pytest.mark.parametrize("reader", readers.ALL)
@pytest.mark.parametrize("shape", zip_shapes_module.BIG)
def test_every_reader_reads_multi_gb_shapes_in_full(zip_shapes: Shapes, shape: str, reader: str) -> None:
    """The multi-GB shapes with every member's data read and CRC-checked (the sparse zip's real bytes).

    On CI by the native readers (7-Zip, bsdtar, Java, Go: 1-5 s per 4 GiB); zipfile, unzip and yauzl take
    10-16 s each per shape (150 s in all), so their full reads need ZIPSTREAM_SLOW=1. Every reader still
    opens every shape on CI (test_every_reader_opens_every_shape).
    """
    if reader not in FULL_READS_ON_CI and not os.environ.get("ZIPSTREAM_SLOW"):
        pytest.skip(f"{reader}'s full read of {shape} runs with ZIPSTREAM_SLOW=1 (10-16 s per shape)")
    readers.require_readers([reader])
    built = zip_shapes[shape]
    readers.check_zip(built.path, built.expected, readers=[reader], listing=False)


# --------------------------------------------------------------------------- end records at every edge (issue 12)

_EOCD = struct.Struct("<4sHHHHIIH")
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_LOCATOR = struct.Struct("<4sIQI")


def _end_records(tail: bytes, tail_offset: int) -> dict[str, object]:
    """The end records at the end of `tail` (which starts at archive offset `tail_offset`), by field."""
    signature, disk, cd_disk, on_disk, total, cd_size, cd_offset, comment = _EOCD.unpack(tail[-_EOCD.size:])
    assert signature == b"PK\x05\x06"
    fields: dict[str, object] = {
        "disk": disk, "cd_disk": cd_disk, "entries_on_disk": on_disk, "entries": total,
        "cd_size": cd_size, "cd_offset": cd_offset, "comment_length": comment, "zip64": None,
    }
    locator = tail[-_EOCD.size - _LOCATOR.size : -_EOCD.size]
    if locator[:4] == b"PK\x06\x07":
        _, locator_disk, record_at, disks = _LOCATOR.unpack(locator)
        record = tail[record_at - tail_offset : record_at - tail_offset + _ZIP64_EOCD.size]
        sig, length, made_by, needed, disk64, cd_disk64, on_disk64, total64, size64, offset64 = (
            _ZIP64_EOCD.unpack(record))
        assert sig == b"PK\x06\x06" and length == 44 and (made_by, needed) == (45, 45)
        assert (locator_disk, disks, disk64, cd_disk64) == (0, 1, 0, 0)
        assert record_at == offset64 + size64  # the record follows the central directory
        fields["zip64"] = {"entries": total64, "entries_on_disk": on_disk64, "cd_size": size64, "cd_offset": offset64}
    return fields


def _tail_of(plan: ZipPlan) -> bytes:
    """Central directory and end records only: known CRCs, so no member is read."""
    def unread(_index: int, _start: int) -> Iterator[bytes]:
        raise AssertionError("no member data is needed for the central directory")

    return b"".join(plan.stream(unread, plan.central_offset))  # type: ignore[arg-type]


def _plan_with_directory_at(offset: int) -> ZipPlan:
    """One known-CRC member sized so that the central directory starts at `offset`."""
    header = ZipPlan([Entry("big.bin", 0, WHEN, 0)]).central_offset
    return ZipPlan([Entry("big.bin", offset - header, WHEN, 0)])


@pytest.mark.parametrize(("count", "zip64"), [(65_534, False), (65_535, True), (65_536, True)])
def test_entry_count_sentinel_edge(count: int, zip64: bool) -> None:
    """0xFFFF entries *is* the sentinel: ZIP64 records from 65,535 on (was `> 0xFFFF`)."""
    plan = ZipPlan([Entry(f"{i}", 0, WHEN, 0) for i in range(count)])
    ends = _end_records(_tail_of(plan), plan.central_offset)
    assert (ends["disk"], ends["cd_disk"]) == (0, 0)
    assert ends["entries"] == ends["entries_on_disk"] == min(count, 0xFFFF)
    assert ends["cd_offset"] == plan.central_offset and ends["cd_size"] == plan.central_size
    assert (ends["zip64"] is not None) == zip64
    if zip64:
        assert ends["zip64"] == {"entries": count, "entries_on_disk": count, "cd_size": plan.central_size,
                                 "cd_offset": plan.central_offset}


@pytest.mark.parametrize(("offset", "zip64"), [(0xFFFFFFFE, False), (0xFFFFFFFF, True), (0x100000000, True)])
def test_directory_offset_sentinel_edge(offset: int, zip64: bool) -> None:
    """A central directory at exactly 0xFFFFFFFF needs ZIP64 records (was `> 0xFFFFFFFF`)."""
    plan = _plan_with_directory_at(offset)
    assert plan.central_offset == offset
    assert plan.members[0].zip64 is (offset - plan.members[0].offset - len(plan.members[0].header) >= 0xFFFFFFFF)
    ends = _end_records(_tail_of(plan), offset)
    assert (ends["disk"], ends["cd_disk"], ends["entries"], ends["entries_on_disk"]) == (0, 0, 1, 1)
    assert ends["cd_size"] == plan.central_size  # fits: the real value, never the sentinel
    assert ends["cd_offset"] == min(offset, 0xFFFFFFFF)
    assert (ends["zip64"] is not None) == zip64
    if zip64:
        assert ends["zip64"] == {"entries": 1, "entries_on_disk": 1, "cd_size": plan.central_size, "cd_offset": offset}


def test_zip64_archive_classic_end_record_has_disk_zero_and_real_values() -> None:
    """An unknown-size member makes a ZIP64 archive; its classic record said disk=0xFFFF before (yauzl 2)."""
    _, open_member = _opener([b"abc"])
    data = b"".join(ZipPlan([Entry("u.bin", None, WHEN)]).stream(open_member))  # type: ignore[arg-type]
    ends = _end_records(data, 0)
    zip64 = ends["zip64"]
    assert isinstance(zip64, dict)
    assert ends == {"disk": 0, "cd_disk": 0, "entries_on_disk": 1, "entries": 1, "cd_size": zip64["cd_size"],
                    "cd_offset": zip64["cd_offset"], "comment_length": 0, "zip64": zip64}


@pytest.mark.parametrize(("size", "offset"), [(0xFFFFFFFE, 0), (0xFFFFFFFF, 0), (0, 0xFFFFFFFE), (0, 0xFFFFFFFF)])
def test_member_size_and_offset_sentinel_edges(size: int, offset: int) -> None:
    """A member's size or local header offset of exactly 0xFFFFFFFF goes to the ZIP64 extra field."""
    entries = [Entry("m.bin", size, WHEN, 0)]
    if offset:
        pad = ZipPlan([Entry("pad.bin", 0, WHEN, 0)]).central_offset
        entries.insert(0, Entry("pad.bin", offset - pad, WHEN, 0))
    plan = ZipPlan(entries)
    member = plan.members[-1]
    assert member.offset == offset
    zip64 = size >= 0xFFFFFFFF or offset >= 0xFFFFFFFF
    assert member.zip64 is zip64
    record = member.central_record(0, size)
    compressed, uncompressed = struct.unpack("<II", record[20:28])
    (local_offset,) = struct.unpack("<I", record[42:46])
    if zip64:
        assert (compressed, uncompressed, local_offset) == (0xFFFFFFFF,) * 3
        extra_at = 46 + len("m.bin")
        assert record[extra_at : extra_at + 4] == b"\x01\x00\x18\x00"
        assert struct.unpack("<QQQ", record[extra_at + 4 : extra_at + 28]) == (size, size, offset)
        assert record[4:8] == b"\x2d\x03\x2d\x00"  # version made by 4.5 (Unix), needed 4.5
    else:
        assert (compressed, uncompressed, local_offset) == (size, size, offset)
        assert record[4:8] == b"\x14\x03\x14\x00"  # 2.0 (Unix), needed 2.0


@pytest.mark.parametrize("count", [65_534, 65_535, 65_536])
def test_deflate_path_entry_count_edge(count: int) -> None:
    """stream-zip writes 0xFFFF entries without ZIP64 records; the deflate path corrects it."""
    entries = [Entry(f"{i}", 0, WHEN) for i in range(count)]
    _, open_member = _opener([b""] * count)
    data = b"".join(deflate_stream(entries, open_member))  # type: ignore[arg-type]
    ends = _end_records(data, 0)
    assert (ends["disk"], ends["cd_disk"], ends["entries"]) == (0, 0, min(count, 0xFFFF))
    assert (ends["zip64"] is not None) == (count >= 0xFFFF)


def test_deflate_path_zip64_classic_record_has_disk_zero_and_real_values() -> None:
    _, open_member = _opener([b"no length " * 1000])
    data = b"".join(deflate_stream([Entry("s.txt", None, WHEN)], open_member))  # type: ignore[arg-type]
    ends = _end_records(data, 0)
    zip64 = ends["zip64"]
    assert isinstance(zip64, dict)
    assert (ends["disk"], ends["cd_disk"], ends["entries"], ends["entries_on_disk"]) == (0, 0, 1, 1)
    assert (ends["cd_size"], ends["cd_offset"]) == (zip64["cd_size"], zip64["cd_offset"])


def test_deflate_path_directory_at_0xffffffff_gets_zip64_records() -> None:
    """stream-zip upgrades only when the directory offset is `> 0xFFFFFFFF`: rewritten at exactly it.

    stream-zip's bytes are stood in for (4 GiB of zeros as one repeated chunk, then a central
    directory and the classic record stream-zip writes there), so no 4 GiB is deflated.
    """
    central = b"PK\x01\x02" + bytes(42) + b"x"  # one record's worth of bytes; only its length matters
    classic = _EOCD.pack(b"PK\x05\x06", 0, 0, 1, 1, len(central), 0xFFFFFFFF, 0)
    zeros = bytes(CHUNK_SIZE)

    def stream_zip_output() -> Iterator[bytes]:
        for _ in range(0xFFFFFFFF // CHUNK_SIZE):
            yield zeros
        yield bytes(0xFFFFFFFF % CHUNK_SIZE)
        yield central + classic

    length = 0
    tail = b""
    for chunk in archive_module._corrected_end_records(stream_zip_output(), 1):
        length += len(chunk)
        tail = (tail + chunk)[-200:]
    ends = _end_records(tail, length - len(tail))
    assert ends["zip64"] == {"entries": 1, "entries_on_disk": 1, "cd_size": len(central), "cd_offset": 0xFFFFFFFF}
    assert (ends["disk"], ends["cd_offset"], ends["cd_size"]) == (0, 0xFFFFFFFF, len(central))
    assert length == 0xFFFFFFFF + len(central) + 56 + 20 + 22


def test_deflate_path_refuses_end_records_that_do_not_add_up() -> None:
    classic = _EOCD.pack(b"PK\x05\x06", 0, 0, 1, 1, 10, 999, 0)
    with pytest.raises(ArchiveError, match="disagree"):
        b"".join(archive_module._corrected_end_records(iter([bytes(100), classic]), 1))


# --------------------------------------------------------------------------- where we now differ from stream-zip

_CLASSIC_FIELDS = (("signature", 4), ("disk", 2), ("cd_disk", 2), ("entries_on_disk", 2), ("entries", 2),
                   ("cd_size", 4), ("cd_offset", 4), ("comment_length", 2))
# Why each end-record field differs from stream-zip 0.0.83's (docs/zip-layout.md has the table).
WHY = {
    "zip64 records": "ZIP64 end record + locator inserted: a field holds its sentinel (0xFFFF entries or "
                     "0xFFFFFFFF), which tells readers to look for them (APPNOTE 4.4.1.4; Go's writer: >=)",
    "disk": "0, not 0xFFFF: a one-disk archive (yauzl 2: 'multi-disk zip files are not supported')",
    "cd_disk": "0, not 0xFFFF: the central directory is on disk 0",
    "entries_on_disk": "the real count where it fits 16 bits (Info-ZIP, Python), 0xFFFF only when it does not",
    "entries": "the real count where it fits 16 bits (Info-ZIP, Python), 0xFFFF only when it does not",
    "cd_size": "the real size where it fits 32 bits (Info-ZIP, Python)",
    "cd_offset": "the real offset where it fits 32 bits (Info-ZIP, Python)",
}


def _differences(ours: bytes, theirs: bytes) -> list[tuple[str, int, object, object]]:
    """(field, offset in ours, ours, theirs) for each end-record difference; asserts the rest is identical.

    Everything before stream-zip's end records (members and central directory) must be identical;
    our ZIP64 records, when stream-zip wrote none, count as one inserted field.
    """
    theirs_zip64 = theirs[-42:-38] == b"PK\x06\x07"
    ours_zip64 = ours[-42:-38] == b"PK\x06\x07"
    theirs_end = len(theirs) - (98 if theirs_zip64 else 22)
    assert ours[:theirs_end] == theirs[:theirs_end], "members or central directory differ"
    found: list[tuple[str, int, object, object]] = []
    if ours_zip64 and not theirs_zip64:
        found.append(("zip64 records", theirs_end, ours[theirs_end : theirs_end + 76], b""))
    else:
        assert ours_zip64 == theirs_zip64
        assert ours[theirs_end : len(ours) - 22] == theirs[theirs_end : len(theirs) - 22]  # ZIP64 records
    at_ours, at_theirs = len(ours) - 22, len(theirs) - 22
    for name, width in _CLASSIC_FIELDS:
        mine, other = ours[at_ours : at_ours + width], theirs[at_theirs : at_theirs + width]
        if mine != other:
            found.append((name, at_ours, int.from_bytes(mine, "little"), int.from_bytes(other, "little")))
        at_ours += width
        at_theirs += width
    for field, *_ in found:
        assert field in WHY
    return found


def test_stored_65535_entries_differ_from_stream_zip_only_by_inserted_zip64_records() -> None:
    count = 0xFFFF
    datas = [b""] * count
    entries = _entries(datas, known_crc=True)
    _, open_member = _opener(datas)
    ours = b"".join(ZipPlan(entries).stream(open_member))  # type: ignore[arg-type]
    theirs = stream_zip_reference(entries, datas)
    cd_end = len(theirs) - 22
    assert _differences(ours, theirs) == [("zip64 records", cd_end, ours[cd_end : cd_end + 76], b"")]
    assert ours == theirs[:cd_end] + ours[cd_end : cd_end + 76] + theirs[cd_end:]


def _raw_deflate(members: list[tuple[str, object, bytes]]) -> bytes:
    """stream-zip 0.0.83 as the deflate path calls it, end records as stream-zip writes them."""
    return b"".join(stream_zip(
        [(name, WHEN, FILE_MODE, method, (data,)) for name, method, data in members],
        chunk_size=CHUNK_SIZE, get_compressobj=archive_module._compressobj,
    ))


def test_deflate_zip64_archive_differs_from_stream_zip_in_five_classic_fields() -> None:
    data = b"no length " * 1000
    _, open_member = _opener([data])
    ours = b"".join(deflate_stream([Entry("s.txt", None, WHEN)], open_member))  # type: ignore[arg-type]
    theirs = _raw_deflate([("s.txt", ZIP_64, data)])
    end = len(ours) - 22
    cd_size, cd_offset = struct.unpack("<QQ", ours[end - 76 + 40 : end - 76 + 56])
    assert _differences(ours, theirs) == [
        ("disk", end + 4, 0, 0xFFFF),
        ("cd_disk", end + 6, 0, 0xFFFF),
        ("entries_on_disk", end + 8, 1, 0xFFFF),
        ("entries", end + 10, 1, 0xFFFF),
        ("cd_size", end + 12, cd_size, 0xFFFFFFFF),
        ("cd_offset", end + 16, cd_offset, 0xFFFFFFFF),
    ]


def test_deflate_65535_entries_differ_from_stream_zip_only_by_inserted_zip64_records() -> None:
    count = 0xFFFF
    _, open_member = _opener([b""] * count)
    ours = b"".join(deflate_stream([Entry(f"{i}", 0, WHEN) for i in range(count)], open_member))  # type: ignore[arg-type]
    theirs = _raw_deflate([(f"{i}", ZIP_32, b"") for i in range(count)])
    cd_end = len(theirs) - 22
    assert _differences(ours, theirs) == [("zip64 records", cd_end, ours[cd_end : cd_end + 76], b"")]


def test_deflate_65536_entries_differ_from_stream_zip_in_the_classic_record() -> None:
    """From the 65,536th member on the deflate path asks stream-zip for ZIP_64 (ZIP_32 alone would raise)."""
    count = 0x10000
    _, open_member = _opener([b""] * count)
    ours = b"".join(deflate_stream([Entry(f"{i}", 0, WHEN) for i in range(count)], open_member))  # type: ignore[arg-type]
    with pytest.raises(CentralDirectoryNumberOfEntriesOverflowError):  # why ours asks for ZIP_64
        _raw_deflate([(f"{i}", ZIP_32, b"") for i in range(count)])
    theirs = _raw_deflate([(f"{i}", ZIP_32 if i < 0xFFFF else ZIP_64, b"") for i in range(count)])
    end = len(ours) - 22
    cd_size, cd_offset = struct.unpack("<QQ", ours[end - 76 + 40 : end - 76 + 56])
    assert cd_offset < 0xFFFFFFFF
    assert _differences(ours, theirs) == [
        ("disk", end + 4, 0, 0xFFFF),
        ("cd_disk", end + 6, 0, 0xFFFF),
        ("cd_size", end + 12, cd_size, 0xFFFFFFFF),
        ("cd_offset", end + 16, cd_offset, 0xFFFFFFFF),
    ]


def test_closing_the_deflate_stream_early_closes_the_open_source() -> None:
    """The end-record wrapper must not delay closing stream-zip (and through it the source's body)."""
    closed: list[int] = []

    def open_member(index: int, _start: int) -> Iterator[bytes]:
        try:
            for _ in range(100):
                yield random.Random(index).randbytes(CHUNK_SIZE)
        finally:
            closed.append(index)

    stream = deflate_stream([Entry("a.bin", 100 * CHUNK_SIZE, WHEN)], open_member)
    next(stream)
    assert closed == []
    stream.close()  # type: ignore[attr-defined]
    assert closed == [0]


@pytest.mark.parametrize(("cd_size", "zip64"), [(0xFFFFFFFE, False), (0xFFFFFFFF, True), (0x100000000, True)])
def test_directory_size_sentinel_edge(cd_size: int, zip64: bool) -> None:
    """A 4 GiB central directory (65,000+ long names) is unreachable in a test; the rule is the same `>=`."""
    ends = _end_records(archive_module._end_records(3, 0, cd_size, False), cd_size)
    assert (ends["disk"], ends["cd_disk"], ends["entries"], ends["cd_offset"]) == (0, 0, 3, 0)
    assert ends["cd_size"] == min(cd_size, 0xFFFFFFFF)
    assert (ends["zip64"] is not None) == zip64
