"""One contract suite that every Source backend must pass (zipstream/sources/contract.py), each against
a real store: http(s) against a local HTTP server, s3 against moto over HTTP, file against a directory.

Each backend is built the way the app builds it: by its FS_INTERFACES name from the registry
(`BACKENDS`), with `from_config`. What a backend holds open (connections, descriptors) is counted in
this process's descriptor table (tests/support/descriptors.py), so a body that is not given back shows
whoever forgot it. Backend-specific behaviour is tested in tests/test_sources_<backend>.py.
"""

from __future__ import annotations

import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest

from zipstream.config import Config
from zipstream.errors import SourceChanged, SourceNotFound, SourceRefused
from zipstream.sources import BACKENDS, CHUNK_SIZE, Source, build_sources

from .support.descriptors import files_under, sockets_to
from .support.moto import REGION, MotoServer
from .support.upstream import UpstreamServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class Store(ABC):
    """A backend under test (`source`, built from `config`) and the store it reads."""

    def __init__(self, name: str, config: Config) -> None:
        self.config = config
        self.source: Source = BACKENDS[name]().from_config(config)

    @abstractmethod
    def src(self, path: str) -> str:
        """The src naming `path` ('a/b.bin') in this store."""

    @abstractmethod
    def put(self, path: str, data: bytes) -> str:
        """Store `data` at `path` (a new version if there was one); its src."""

    @abstractmethod
    def held(self) -> int:
        """Connections or descriptors this process holds open to the store."""


class HttpStore(Store):
    def __init__(self, upstream: UpstreamServer, config: Config) -> None:
        super().__init__("https", config)
        self.upstream = upstream

    def src(self, path: str) -> str:
        return self.upstream.url(f"/{path}")

    def put(self, path: str, data: bytes) -> str:
        self.upstream.add(f"/{path}", data)  # a new ETag for new bytes
        return self.src(path)

    def held(self) -> int:
        return sockets_to(self.upstream.port)


class S3Store(Store):
    def __init__(self, client: S3Client, bucket: str, port: int, config: Config) -> None:
        super().__init__("s3", config)
        self.client, self.bucket, self.port = client, bucket, port

    def src(self, path: str) -> str:
        return f"s3://{self.bucket}/{path}"

    def put(self, path: str, data: bytes) -> str:
        self.client.put_object(Bucket=self.bucket, Key=path, Body=data)  # a new ETag for new bytes
        return self.src(path)

    def held(self) -> int:
        return sockets_to(self.port)  # the test's own client's pooled connections too: counts compare


class FileStore(Store):
    def __init__(self, root: Path, config: Config) -> None:
        super().__init__("file", config)
        self.root = root

    def src(self, path: str) -> str:
        return f"file:///{path}"

    def put(self, path: str, data: bytes) -> str:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        before = target.stat().st_mtime_ns if target.exists() else None
        target.write_bytes(data)
        if before is not None:  # a new version: a later mtime, even within the clock's resolution
            os.utime(target, ns=(before + 10**9, before + 10**9))
        return self.src(path)

    def held(self) -> int:
        return files_under(self.root)


def _http(request: pytest.FixtureRequest, make_config: Callable[..., Config]) -> Store:
    upstream = request.getfixturevalue("upstream")
    return HttpStore(upstream, make_config(FS_INTERFACES="https"))


def _s3(request: pytest.FixtureRequest, make_config: Callable[..., Config]) -> Store:
    moto: MotoServer = request.getfixturevalue("moto_server")
    client = boto3.client("s3", region_name=REGION)
    bucket = "zs-contract-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=bucket)
    return S3Store(client, bucket, moto.port, make_config(FS_INTERFACES="s3", AWS_REGION=REGION, S3_BUCKETS=bucket))


def _file(request: pytest.FixtureRequest, make_config: Callable[..., Config]) -> Store:
    root = request.getfixturevalue("tmp_path") / "root"
    root.mkdir()
    return FileStore(root, make_config(FS_INTERFACES="file", FILE_ROOT=str(root)))


# Each backend by its FS_INTERFACES name: request -> its store (fresh and empty).
STORES: dict[str, Callable[[pytest.FixtureRequest, Callable[..., Config]], Store]] = {
    "https": _http, "s3": _s3, "file": _file}


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, make_config: Callable[..., Config]) -> Store:
    return STORES[request.param](request, make_config)


@pytest.fixture(params=["file", "s3"])
def folder_store(request: pytest.FixtureRequest, make_config: Callable[..., Config]) -> Store:
    """A store with folders (an S3 prefix, a directory); an http(s) URL names one file."""
    return STORES[request.param](request, make_config)


def test_every_backend_is_registered_and_tested() -> None:
    assert set(STORES) == set(BACKENDS)


# -- construction and check --------------------------------------------------------------------


def test_the_app_builds_it_from_fs_interfaces(store: Store) -> None:
    sources = build_sources(store.config)
    src = store.src("a.bin")
    assert type(sources.backend(src)) is type(store.source)
    assert src.split("://", 1)[0] in store.source.schemes


def test_check_takes_its_own_srcs_and_refuses_another_scheme(store: Store) -> None:
    store.source.check(store.src("docs/a.bin"))  # never stored: check does no I/O
    for other in ("gopher://example.com/a.bin", "a.bin", ""):
        with pytest.raises(SourceRefused):
            store.source.check(other)
        with pytest.raises(SourceRefused):
            store.source.stat(other)


# -- stat ----------------------------------------------------------------------------------------


def test_stat_gives_the_name_size_and_validators(store: Store) -> None:
    src = store.put("docs/a.bin", os.urandom(5000))
    [info] = store.source.stat(src)
    assert info.src == src
    assert info.name.rsplit("/", 1)[-1] == "a.bin"
    assert info.size == 5000
    assert info.etag
    assert info.last_modified is not None and info.last_modified.utcoffset() is not None
    assert info.validated
    assert info.head is None  # nothing held outside a download's pre-flight
    [again] = store.source.stat(src)
    assert again == info and again.identity() == info.identity()


def test_a_new_version_is_another_identity(store: Store) -> None:
    src = store.put("a.bin", b"version one")
    [before] = store.source.stat(src)
    store.put("a.bin", b"version two")
    [after] = store.source.stat(src)
    assert after.size == before.size
    assert after.identity() != before.identity()


def test_a_missing_file_is_not_found(store: Store) -> None:
    store.put("present.bin", b"here")
    src = store.src("absent.bin")
    with pytest.raises(SourceNotFound) as missing:
        store.source.stat(src)
    assert missing.value.src == src


def test_a_folder_lists_its_files_in_order(folder_store: Store) -> None:
    contents = {"dir/b.txt": b"bee", "dir/a.txt": b"a", "dir/sub/c.txt": b"sea", "other.txt": b"not in dir"}
    for path, data in contents.items():
        folder_store.put(path, data)
    infos = folder_store.source.stat(folder_store.src("dir/"))
    paths = ["dir/a.txt", "dir/b.txt", "dir/sub/c.txt"]
    assert [info.src for info in infos] == [folder_store.src(path) for path in paths]
    # The name is the path below the folder (S3), or below FILE_ROOT (file): it ends the same way.
    assert [info.name.removeprefix("dir/") for info in infos] == ["a.txt", "b.txt", "sub/c.txt"]
    assert [b"".join(folder_store.source.open(info)) for info in infos] == [contents[path] for path in paths]


# -- open ----------------------------------------------------------------------------------------


def test_reads_the_whole_file_and_from_any_offset(store: Store) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 123)
    [info] = store.source.stat(store.put("big.bin", data))
    chunks = list(store.source.open(info))
    assert b"".join(chunks) == data
    assert max(len(chunk) for chunk in chunks) <= CHUNK_SIZE
    for start in (1, CHUNK_SIZE + 7, len(data) - 1, len(data)):
        assert b"".join(store.source.open(info, start)) == data[start:], start


def test_an_empty_file(store: Store) -> None:
    [info] = store.source.stat(store.put("empty.bin", b""))
    assert info.size == 0
    assert b"".join(store.source.open(info)) == b""


@pytest.mark.parametrize("start", [0, 3])
def test_a_changed_file_is_refused_before_any_byte(store: Store, start: int) -> None:
    [info] = store.source.stat(store.put("a.bin", b"version one"))
    store.put("a.bin", b"version two")  # the same length: only the validators tell
    got: list[bytes] = []
    with pytest.raises(SourceChanged) as changed:
        got.extend(store.source.open(info, start))
    assert got == []
    assert changed.value.src == info.src


# -- the body is given back ------------------------------------------------------------------------


def test_closing_the_iterator_part_way_gives_the_body_back(store: Store) -> None:
    [info] = store.source.stat(store.put("big.bin", os.urandom(3 * CHUNK_SIZE)))
    chunks = store.source.open(info)
    next(chunks)
    reading = store.held()
    assert reading >= 1
    chunks.close()
    assert store.held() == reading - 1  # closed: not kept, not pooled with a body half read


def test_closing_the_iterator_before_its_first_chunk_gives_the_body_back(store: Store) -> None:
    [info] = store.source.stat(store.put("a.bin", os.urandom(1000)))
    before = store.held()
    chunks = store.source.open(info)
    chunks.close()
    assert store.held() == before


def test_an_iterator_that_raises_gives_the_body_back(store: Store) -> None:
    [info] = store.source.stat(store.put("a.bin", os.urandom(3 * CHUNK_SIZE)))
    store.put("a.bin", os.urandom(3 * CHUNK_SIZE))
    before = store.held()
    chunks = store.source.open(info)
    with pytest.raises(SourceChanged):
        next(chunks)
    assert store.held() <= before


def _exhausted(chunks: Iterator[bytes]) -> int:
    return sum(len(chunk) for chunk in chunks)


def test_an_exhausted_iterator_holds_nothing_more_than_before(store: Store) -> None:
    [info] = store.source.stat(store.put("a.bin", os.urandom(CHUNK_SIZE + 1)))
    before = store.held()
    assert _exhausted(store.source.open(info)) == CHUNK_SIZE + 1
    assert store.held() <= max(before, 1)  # at most the one connection kept alive for the next request
