"""Archive shapes every zip reader must open (issue 12), each built once per test session.

A shape is a zip written by ZipStream (the stored writer, the deflate path, or the whole service
through the ``file://`` source) plus what a reader must see in it: names, sizes and CRC-32s in
order. Built lazily: a test run that selects no big shape never writes one.

The multi-GB shapes are streamed through the service from sparse source files; the zip is written
sparsely too (runs of zero bytes become holes), so it costs a few MB of disk while every byte a
reader reads, data included, is the archive's real byte.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from zlib_ng import zlib_ng

from zipstream import create_app
from zipstream.archive import Entry, ZipPlan, deflate_stream
from zipstream.config import Config

from .readers import Entry as Seen

WHEN: Final = datetime(2024, 2, 29, 13, 37, 42, tzinfo=UTC)
LIMIT_32: Final = 0xFFFFFFFF
_ZEROS: Final = bytes(1 << 20)


@dataclass(frozen=True)
class Shape:
    """A built archive and the entries (name, size, CRC-32) every reader must list, in order."""

    name: str
    path: Path
    expected: list[Seen]
    # Central-directory-only checks by default: the point of the shape is its directory and end
    # records (65,535 empty members), or its data is multi-GB (full reads are a `slow` test).
    listing: bool = False


# Small and count shapes (seconds in all) and the multi-GB ones (sparse, ~3 s of streaming each).
SMALL: Final[tuple[str, ...]] = (
    "empty", "one-entry", "unknown-size", "deflate", "deflate-unknown-size", "utf8-names",
    "empty-files", "prefix-expansion",
)
COUNTS: Final[tuple[str, ...]] = (
    "entries-65534", "entries-65535", "entries-65536", "deflate-entries-65535", "deflate-entries-65536",
)
BIG: Final[tuple[str, ...]] = ("member-crossing-4gib", "cd-crossing-4gib", "cd-at-0xffffffff")


def _seen(names: Iterable[str], datas: Iterable[bytes]) -> list[Seen]:
    return [Seen(name, len(data), zlib.crc32(data)) for name, data in zip(names, datas, strict=True)]


def _opener(datas: list[bytes]) -> Callable[[int, int], Iterator[bytes]]:
    def open_member(index: int, start: int) -> Iterator[bytes]:
        data = datas[index]
        for offset in range(start, len(data), 65536):
            yield data[offset : offset + 65536]

    return open_member


def write_sparse(path: Path, chunks: Iterable[bytes]) -> int:
    """Write `chunks` to `path`, leaving holes for all-zero chunks; returns the length written."""
    length = 0
    with path.open("wb") as out:
        for chunk in chunks:
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
            length += len(chunk)
        out.truncate(length)
    return length


class Shapes:
    """Builds each shape on first request into `directory`; session-scoped through a fixture."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._built: dict[str, Shape] = {}

    def __getitem__(self, name: str) -> Shape:
        if name not in self._built:
            self._built[name] = getattr(self, "_" + name.replace("-", "_"))(self.directory / f"{name}.zip")
        return self._built[name]

    # -- archive-level shapes (the two writers) ------------------------------------------------

    def _stored(self, path: Path, name: str, names: list[str], datas: list[bytes], *, sized: bool = True,
                listing: bool = False) -> Shape:
        entries = [Entry(n, len(d) if sized else None, WHEN) for n, d in zip(names, datas, strict=True)]
        path.write_bytes(b"".join(ZipPlan(entries).stream(_opener(datas))))
        return Shape(name, path, _seen(names, datas), listing)

    def _deflated(self, path: Path, name: str, names: list[str], datas: list[bytes], *, sized: bool = True,
                  listing: bool = False) -> Shape:
        entries = [Entry(n, len(d) if sized else None, WHEN) for n, d in zip(names, datas, strict=True)]
        path.write_bytes(b"".join(deflate_stream(entries, _opener(datas))))
        return Shape(name, path, _seen(names, datas), listing)

    def _empty(self, path: Path) -> Shape:
        return self._stored(path, "empty", [], [])

    def _one_entry(self, path: Path) -> Shape:
        return self._stored(path, "one-entry", ["hello.txt"], [b"hello, zip\n" * 100])

    def _unknown_size(self, path: Path) -> Shape:
        # A source that sends no Content-Length: ZIP64 member with a data descriptor, ZIP64 end records.
        return self._stored(path, "unknown-size", ["stream.bin", "small.txt"],
                            [os.urandom(70_000), b"abc"], sized=False)

    def _deflate(self, path: Path) -> Shape:
        return self._deflated(path, "deflate", ["text.txt", "random.bin", "empty.txt"],
                              [b"compress me " * 20_000, os.urandom(100_000), b""])

    def _deflate_unknown_size(self, path: Path) -> Shape:
        return self._deflated(path, "deflate-unknown-size", ["stream.txt"], [b"no length " * 10_000],
                              sized=False)

    def _utf8_names(self, path: Path) -> Shape:
        names = ["dossier/été.txt", "漢字/ファイル.txt", "emoji 🦀 ✓.txt", "Ελληνικά/αρχείο.bin"]
        return self._stored(path, "utf8-names", names, [n.encode() * 3 for n in names])

    def _empty_files(self, path: Path) -> Shape:
        return self._stored(path, "empty-files", ["a.txt", "dir/b.txt", "dir/sub/c.txt", "d.txt"],
                            [b"", b"", b"not empty", b""])

    def _count(self, path: Path, count: int, *, deflate: bool = False) -> Shape:
        names = [f"many/{index:05d}.txt" for index in range(count)]
        datas = [b""] * count
        build = self._deflated if deflate else self._stored
        return build(path, path.stem, names, datas, listing=True)

    def _entries_65534(self, path: Path) -> Shape:
        return self._count(path, 65_534)

    def _entries_65535(self, path: Path) -> Shape:
        return self._count(path, 65_535)

    def _entries_65536(self, path: Path) -> Shape:
        return self._count(path, 65_536)

    def _deflate_entries_65535(self, path: Path) -> Shape:
        return self._count(path, 65_535, deflate=True)

    def _deflate_entries_65536(self, path: Path) -> Shape:
        return self._count(path, 65_536, deflate=True)

    # -- through the service and the file:// source --------------------------------------------

    def _service(self, root: Path, files: list[dict[str, str]], path: Path) -> int:
        """POST /bundle with `files` (file:// srcs below `root`); the zip streamed sparsely to `path`."""
        config = Config.from_env({
            "SQLITE_PATH": str(self.directory / "zipstream.sqlite3"),
            "FS_INTERFACES": "file",
            "FILE_ROOT": str(root),
        })
        client = create_app(config).test_client()
        response = client.post("/bundle", json={"files": files}, buffered=False)
        try:
            assert response.status_code == 200, response.get_data(as_text=True)
            length = write_sparse(path, response.response)
        finally:
            response.close()
        if response.content_length is not None:
            assert length == response.content_length
        return length

    def _prefix_expansion(self, path: Path) -> Shape:
        root = self.directory / "prefix-root"
        files = {
            "tree/a.txt": b"top level\n",
            "tree/sub/b.txt": b"one down\n" * 50,
            "tree/sub/deeper/c.bin": os.urandom(5000),
            "tree/sub/empty.txt": b"",
            "tree/été/ü.txt": b"unicode dir\n",
        }
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        self._service(root, [{"src": "file:///tree/", "dst": "bundle"}], path)
        ordered = sorted(files)  # the file source lists a directory in one global path order
        return Shape("prefix-expansion", path, _seen([f"bundle/{n}" for n in ordered], [files[n] for n in ordered]))

    def _big(self, path: Path, name: str, sizes: dict[str, int]) -> Shape:
        """Sparse files of `sizes` (random bytes at start, middle and end) zipped through the service."""
        root = self.directory / f"{name}-root"
        expected: list[Seen] = []
        for relative, size in sizes.items():
            file = root / name / relative
            file.parent.mkdir(parents=True, exist_ok=True)
            expected.append(Seen(f"{name}/{relative}", size, _write_sparse_source(file, size)))
        self._service(root, [{"src": f"file:///{name}/"}], path)
        return Shape(name, path, expected, listing=True)

    def _member_crossing_4gib(self, path: Path) -> Shape:
        # b-mid.bin's data starts below 0xFFFFFFFF and ends above it; its size still fits 32 bits, so
        # it is a classic member; c-tail.txt's local header lies beyond (ZIP64 offset), as does the
        # central directory (ZIP64 end records; the classic record keeps count and size).
        return self._big(path, "member-crossing-4gib", {"a-head.txt": 1000, "b-mid.bin": LIMIT_32 - 50,
                                                        "c-tail.txt": 1000})

    def _cd_crossing_4gib(self, path: Path) -> Shape:
        # The central directory starts 40 bytes below 0xFFFFFFFF and ends above it: every field of
        # every record fits 32 bits, so a classic archive whose end record lies past 4 GiB.
        return self._big(path, "cd-crossing-4gib", self._sizes_for_directory_at("cd-crossing-4gib", LIMIT_32 - 40))

    def _cd_at_0xffffffff(self, path: Path) -> Shape:
        # The central directory starts at exactly 0xFFFFFFFF: the classic field holds the sentinel,
        # so ZIP64 end records must follow (`>=`, the edge of issue 12).
        return self._big(path, "cd-at-0xffffffff", self._sizes_for_directory_at("cd-at-0xffffffff", LIMIT_32))

    @staticmethod
    def _sizes_for_directory_at(name: str, offset: int) -> dict[str, int]:
        """Sizes of a-big.bin plus three small files such that the central directory starts at `offset`."""
        small = {"b1.txt": 100, "b2.txt": 100, "b3.txt": 100}
        names = [f"{name}/a-big.bin", *(f"{name}/{n}" for n in small)]
        probe = ZipPlan([Entry(n, 0, WHEN) for n in names])  # headers only: sizes move nothing else
        assert probe.central_offset + 300 < offset and not any(m.zip64 for m in probe.members)
        big = offset - probe.central_offset - 300
        plan = ZipPlan([Entry(names[0], big, WHEN), *(Entry(n, 100, WHEN) for n in names[1:])])
        assert plan.central_offset == offset, (plan.central_offset, offset)
        return {"a-big.bin": big, **small}


def _write_sparse_source(path: Path, size: int) -> int:
    """A sparse file of `size` bytes: random 64 KiB pieces at start, middle and end; returns its CRC-32."""
    piece = 65536
    pieces = sorted({0, max(0, size // 2 - piece // 2), max(0, size - piece)}) if size > 3 * piece else [0]
    crc = 0
    position = 0
    with path.open("wb") as out:
        for start in pieces:
            crc = _crc_of_zeros(start - position, crc)
            data = os.urandom(min(piece, size - start))
            out.seek(start)
            out.write(data)
            crc = zlib.crc32(data, crc)
            position = start + len(data)
        crc = _crc_of_zeros(size - position, crc)
        out.truncate(size)
    return crc


def _crc_of_zeros(count: int, crc: int) -> int:
    view = memoryview(_ZEROS)
    while count > 0:
        step = min(count, len(_ZEROS))
        crc = zlib_ng.crc32(view[:step], crc)  # SIMD: 4 GiB of zeros in well under a second
        count -= step
    return crc
