"""file:// sources: confinement to FILE_ROOT, metadata, version checks, directory expansion, the API."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import stat
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from zipstream import create_app
from zipstream.chunks import CHUNK_SIZE
from zipstream.config import Config
from zipstream.errors import SourceChanged, SourceError, SourceNotFound, SourceRefused
from zipstream.sources import Sources
from zipstream.sources.file import FileSource

from .support import ci
from .support.upstream import UpstreamServer


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "root"
    (base / "reports" / "2024").mkdir(parents=True)
    (base / "reports" / "a.csv").write_bytes(b"a,b\n1,2\n")
    (base / "reports" / "2024" / "z.txt").write_bytes(b"zed")
    (base / "reports" / "2024" / "b.txt").write_bytes(b"bee")
    (base / "big.bin").write_bytes(os.urandom(CHUNK_SIZE * 2 + 123))
    (base / "sp ace é.txt").write_bytes(b"spaced")
    (tmp_path / "secret.txt").write_bytes(b"outside")
    return base


@pytest.fixture
def source(root: Path, make_config: Callable[..., Config]) -> FileSource:
    return FileSource.from_config(make_config(FS_INTERFACES="file", FILE_ROOT=str(root)))


def read(source: FileSource, src: str, start: int = 0) -> bytes:
    (info,) = source.stat(src)
    return b"".join(source.open(info, start))


def test_stat_gives_size_mtime_etag_and_relative_name(source: FileSource, root: Path) -> None:
    (info,) = source.stat("file:///reports/a.csv")
    status = (root / "reports" / "a.csv").stat()
    assert info.size == 8
    assert info.name == "reports/a.csv"
    assert info.etag == f'"{status.st_ino}-{status.st_size}-{status.st_mtime_ns}"'
    assert info.last_modified is not None
    assert info.last_modified.utcoffset() is not None
    assert int(info.last_modified.timestamp()) == int(status.st_mtime)
    assert info.validated


def test_reads_in_whole_chunks(source: FileSource) -> None:
    (info,) = source.stat("file:///big.bin")
    assert [len(chunk) for chunk in source.open(info)] == [CHUNK_SIZE, CHUNK_SIZE, 123]


def test_percent_encoded_and_localhost_srcs(source: FileSource) -> None:
    assert read(source, "file:///sp%20ace%20%C3%A9.txt") == b"spaced"
    assert read(source, "file://localhost/reports/a.csv") == b"a,b\n1,2\n"


@pytest.mark.parametrize("src", [
    "file:///../secret.txt",
    "file:///reports/../../secret.txt",
    "file:///reports/%2E%2E/%2e%2e/secret.txt",
    "file://otherhost/reports/a.csv",
    "file:///reports/a.csv?x=1",
    "file:///reports/a%00.csv",
    "https://example.com/a",
])
def test_check_refuses_paths_outside_or_malformed(source: FileSource, src: str) -> None:
    with pytest.raises(SourceRefused):
        source.check(src)
    with pytest.raises(SourceRefused):
        source.stat(src)


def test_symlink_escaping_the_root_is_refused(source: FileSource, root: Path, tmp_path: Path) -> None:
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    (root / "escape-dir").symlink_to(tmp_path)
    source.check("file:///escape.txt")  # looks harmless until resolved
    with pytest.raises(SourceRefused):
        source.stat("file:///escape.txt")
    with pytest.raises(SourceRefused):
        source.stat("file:///escape-dir/secret.txt")


def test_symlink_inside_the_root_is_followed(source: FileSource, root: Path) -> None:
    (root / "alias.csv").symlink_to(root / "reports" / "a.csv")
    (info,) = source.stat("file:///alias.csv")
    assert info.name == "alias.csv"
    assert b"".join(source.open(info)) == b"a,b\n1,2\n"


def test_directories_without_slash_and_files_with_one(source: FileSource) -> None:
    with pytest.raises(SourceNotFound, match="directory"):
        source.stat("file:///reports")
    with pytest.raises(SourceNotFound):
        source.stat("file:///reports/a.csv/")


def test_directory_expansion_is_recursive_and_sorted(source: FileSource, root: Path, tmp_path: Path) -> None:
    (root / "reports" / "2024" / "out.txt").symlink_to(root / "big.bin")  # inside: kept
    os.mkfifo(root / "reports" / "pipe")  # not a regular file: skipped
    infos = source.stat("file:///reports/")
    assert [info.name for info in infos] == [
        "reports/2024/b.txt", "reports/2024/out.txt", "reports/2024/z.txt", "reports/a.csv",
    ]
    assert infos[0].src == "file:///reports/2024/b.txt"
    (root / "reports" / "leak").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(SourceRefused):
        source.stat("file:///reports/")


def test_a_file_removed_after_preflight_has_changed(source: FileSource, root: Path) -> None:
    path = root / "reports" / "a.csv"
    (info,) = source.stat("file:///reports/a.csv")
    path.unlink()
    with pytest.raises(SourceChanged):
        b"".join(source.open(info))


def test_file_changed_while_reading_is_detected(source: FileSource, root: Path) -> None:
    (info,) = source.stat("file:///big.bin")
    chunks = source.open(info)
    next(chunks)
    with (root / "big.bin").open("r+b") as handle:
        handle.truncate(10)
    with pytest.raises(SourceChanged):
        list(chunks)


def test_sources_registry_reads_file_srcs(source: FileSource) -> None:
    sources = Sources([source])
    (info,) = sources.stat("file:///reports/2024/z.txt")
    assert b"".join(sources.open(info)) == b"zed"


def test_config_requires_an_existing_file_root(tmp_path: Path) -> None:
    from zipstream.config import ConfigError

    with pytest.raises(ConfigError, match="FILE_ROOT"):
        Config.from_env({"FS_INTERFACES": "file"})
    with pytest.raises(ConfigError, match="FILE_ROOT"):
        Config.from_env({"FS_INTERFACES": "file", "FILE_ROOT": str(tmp_path / "missing")})


def test_api_zips_file_srcs(root: Path, make_config: Callable[..., Config]) -> None:
    client = create_app(make_config(FS_INTERFACES="file,https", FILE_ROOT=str(root))).test_client()
    response = client.post("/bundle", json={"files": [
        {"src": "file:///reports/"},
        {"src": "file:///big.bin", "dst": "data/big.bin"},
    ]})
    assert response.status_code == 200, response.get_data(as_text=True)
    with zipfile.ZipFile(io.BytesIO(response.get_data())) as archive:
        names = ["reports/2024/b.txt", "reports/2024/z.txt", "reports/a.csv", "data/big.bin"]
        assert archive.namelist() == names
        assert archive.read("data/big.bin") == (root / "big.bin").read_bytes()
    refused = client.post("/bundle", json={"files": [{"src": "file:///../secret.txt"}]})
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "source_refused"
    missing = client.post("/bundle", json={"files": [{"src": "file:///nope"}]})
    assert missing.status_code == 422


# -- anything but a regular file (issue 14): refused at pre-flight, and never blocks when swapped in later --


def _make(kind: str, path: Path, tmp_path: Path) -> None:
    """Put a `kind` of file system object at `path` (a symlink to /dev/zero leads outside FILE_ROOT)."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
        listener.close()  # the socket file stays
    elif kind == "device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # what /dev/zero is: endless zeros
        except PermissionError:
            ci.missing("creating a device node needs CAP_MKNOD (root)")
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
    else:
        raise AssertionError(kind)


KINDS = {"fifo": "a FIFO", "socket": "a socket", "device": "a character device", "directory": "a directory",
         "symlink to /dev/zero": "outside FILE_ROOT"}


@pytest.mark.parametrize("kind", list(KINDS))
def test_preflight_refuses_anything_but_a_regular_file_with_a_4xx(
        root: Path, tmp_path: Path, make_config: Callable[..., Config], kind: str) -> None:
    client = create_app(make_config(FS_INTERFACES="file", FILE_ROOT=str(root))).test_client()
    _make(kind, root / "odd", tmp_path)
    response = client.post("/bundle", json={"files": [{"src": "file:///odd"}]})
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)
    [failure] = response.get_json()["error"]["sources"]
    assert failure["src"] == "file:///odd"
    assert KINDS[kind] in failure["reason"]


def _read_in_thread(open_chunks: Callable[[], Iterator[bytes]], fifo: Path) -> BaseException | bytes:
    """What opening and reading gives; a reader blocked in open() (a FIFO without a writer) is released
    by opening the FIFO for writing once a generous guard has passed, and that counts as a failure."""
    outcome: list[BaseException | bytes] = []

    def read() -> None:
        try:
            outcome.append(b"".join(open_chunks()))
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(timeout=20)  # the refusal is immediate; only a blocked open() waits this long
    blocked = thread.is_alive()
    if blocked:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a writer appears: open() returns
        thread.join(timeout=10)
    assert not blocked, "the reader blocked opening what was swapped in"
    return outcome[0]


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "directory"])
def test_a_file_swapped_after_preflight_is_refused_without_blocking(
        source: FileSource, root: Path, tmp_path: Path, kind: str) -> None:
    """On main a FIFO blocked os.open() until a writer appeared: the gevent worker froze until gunicorn
    killed it. Now it is opened without blocking and refused once fstat says what it is."""
    path = root / "reports" / "a.csv"
    (info,) = source.stat("file:///reports/a.csv")
    path.unlink()
    _make(kind, path, tmp_path)
    outcome = _read_in_thread(lambda: source.open(info), path)
    assert isinstance(outcome, SourceChanged), outcome
    assert "regular file" in outcome.reason


def test_a_file_swapped_for_a_fifo_while_streaming_cuts_only_that_download(
        serve: Callable[..., Any], upstream: UpstreamServer, root: Path, tmp_path: Path) -> None:
    """Under gunicorn (one gevent worker): the zip's first member comes from a slow upstream; while it
    stalls, the second (a file) is swapped for a FIFO. The download is cut when it gets there, and the
    worker goes on serving: another request is answered meanwhile. On main the worker blocked in
    open() (its heartbeat too) until gunicorn's WORKER_TIMEOUT killed it, cutting every download."""
    first = os.urandom(2_000_000)
    upstream.add("/first.bin", first)
    # Pre-flight reads its first 64 KiB; the stream's continuation stalls after 1 MB more.
    upstream.set_behaviour("/first.bin", stall_after=1_000_000, stall_seconds=3)
    server = serve(FS_INTERFACES="https,file", FILE_ROOT=str(root), PREFETCH="0", WORKER_TIMEOUT="120")
    files = [{"src": upstream.url("/first.bin")}, {"src": "file:///big.bin"}]
    created = requests.post(server.url("/"), json={"files": files}, timeout=30)
    assert created.status_code == 201, created.text
    url = server.url(f"/{created.json()['id']}")
    got: list[int] = []
    ended: list[BaseException | None] = []

    def download() -> None:
        try:
            with requests.get(url, stream=True, timeout=60) as response:
                assert response.status_code == 200
                for chunk in response.iter_content(65536):
                    got.append(len(chunk))
            ended.append(None)
        except requests.RequestException as error:
            ended.append(error)

    thread = threading.Thread(target=download, daemon=True)
    thread.start()
    fifo = root / "big.bin"
    try:
        deadline = time.monotonic() + 30
        while upstream.bytes_sent.get("/first.bin", 0) < 65536 + 1_000_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert upstream.bytes_sent.get("/first.bin", 0) >= 65536 + 1_000_000, "the first member never stalled"
        fifo.unlink()
        os.mkfifo(fifo)  # while the first member stalls: after pre-flight, before the stream opens it
        thread.join(timeout=30)
        # The worker still answers (on main it was stuck in open() of the FIFO).
        health = requests.get(server.url("/health-check"), timeout=10)
        assert health.status_code == 200
        assert not thread.is_alive(), "the download neither ended nor was cut"
    finally:
        if thread.is_alive():  # main: release the worker blocked in open()
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(timeout=10)
    assert ended and ended[0] is not None, "the download completed although its file became a FIFO"
    assert sum(got) < 2_000_000 + (root / "reports" / "a.csv").stat().st_size + CHUNK_SIZE * 2
    assert "regular file" in server.log_text()


# -- a folder swapped for a symlink between resolving a path and opening it ----------------------


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """FILE_ROOT with `up/d/s.txt` (a decoy anyone who may write below FILE_ROOT could make), and a
    folder outside it holding `s.txt`."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "up" / "d").mkdir(parents=True)
    (root / "up" / "d" / "s.txt").write_bytes(b"decoy")
    outside.mkdir()
    (outside / "s.txt").write_bytes(b"SECRET-OUTSIDE")
    return root, outside


def _swap_for_symlink(folder: Path, target: Path) -> None:
    folder.rename(folder.with_name(folder.name + "-was"))
    folder.symlink_to(target)


def test_folder_swapped_for_a_symlink_after_resolution_is_not_followed_at_preflight(
        planted: tuple[Path, Path], make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    """The swap lands right after the path was resolved (what a tight loop of renames does now and
    then: 36 of 1,500 downloads through gunicorn held the outside file). Before, the open followed the
    new symlink in the folder part of the path (O_NOFOLLOW covers only the last segment)."""
    root, outside = planted
    source = FileSource.from_config(make_config(FS_INTERFACES="file", FILE_ROOT=str(root)))
    resolve = os.path.realpath

    def resolve_then_swap(path: str, *args: Any, **kwargs: Any) -> str:  # the attacker's moment
        resolved = resolve(path, *args, **kwargs)
        folder = root / "up" / "d"
        if str(path).endswith("s.txt") and not folder.is_symlink():
            _swap_for_symlink(folder, outside)
        return resolved

    monkeypatch.setattr(os.path, "realpath", resolve_then_swap)
    with pytest.raises((SourceNotFound, SourceRefused)):
        source.stat("file:///up/d/s.txt")  # was a SourceInfo of the outside file (14 bytes)


def test_folder_swapped_for_a_symlink_after_preflight_is_not_followed_when_streaming(
        planted: tuple[Path, Path], make_config: Callable[..., Config]) -> None:
    root, outside = planted
    source = FileSource.from_config(make_config(FS_INTERFACES="file", FILE_ROOT=str(root)))
    (info,) = source.stat("file:///up/d/s.txt")
    _swap_for_symlink(root / "up" / "d", outside)
    with pytest.raises(SourceError):
        b"".join(source.open(info))
