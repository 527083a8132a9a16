"""The zip writer: layout maths vs real bytes, byte identity with stream-zip, ranges, integrity checks."""

from __future__ import annotations

import io
import os
import random
import zipfile
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from stream_zip import NO_COMPRESSION_32, NO_COMPRESSION_64, ZIP_32, ZIP_64, stream_zip

from zipstream.archive import CHUNK_SIZE, FILE_MODE, ArchiveError, Entry, ZipPlan, clamp_time, deflate_stream

from .support import ci, readers
from .support import zip_shapes as zip_shapes_module
from .support.readers import CheckZip
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


def test_unsized_members_stream_as_zip64_descriptors() -> None:
    datas = _datas([70_000, 0, 5])
    entries = [Entry(f"u{i}", None, WHEN) for i in range(len(datas))]
    plan = ZipPlan(entries)
    assert plan.length is None
    _, open_member = _opener(datas)
    archive = zipfile.ZipFile(io.BytesIO(b"".join(plan.stream(open_member))))  # type: ignore[arg-type]
    assert archive.testzip() is None
    assert [archive.read(n) for n in archive.namelist()] == datas


def test_short_source_aborts() -> None:
    plan = ZipPlan([Entry("a", 10, WHEN)])

    def short(_index: int, _start: int) -> Iterator[bytes]:
        yield b"12345"

    with pytest.raises(ArchiveError, match="ended after 5 of 10"):
        b"".join(plan.stream(short))


def test_long_source_aborts() -> None:
    plan = ZipPlan([Entry("a", 3, WHEN)])

    def long(_index: int, _start: int) -> Iterator[bytes]:
        yield b"12345"

    with pytest.raises(ArchiveError, match="more than"):
        b"".join(plan.stream(long))


def test_wrong_given_crc_aborts() -> None:
    plan = ZipPlan([Entry("a", 3, WHEN, crc32=1234)])

    def data(_index: int, _start: int) -> Iterator[bytes]:
        yield b"abc"

    with pytest.raises(ArchiveError, match="CRC-32"):
        b"".join(plan.stream(data))


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
    """The multi-GB shapes with every member's data read and CRC-checked (the sparse zip's real bytes)."""
    readers.require_readers([reader])
    built = zip_shapes[shape]
    readers.check_zip(built.path, built.expected, readers=[reader], listing=False)
