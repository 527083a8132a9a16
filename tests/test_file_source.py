"""file:// sources: confinement to FILE_ROOT, metadata, version checks, directory expansion, the API."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from zipstream import create_app
from zipstream.config import Config
from zipstream.errors import SourceChanged, SourceNotFound, SourceRefused
from zipstream.sources import CHUNK_SIZE, Sources
from zipstream.sources.file import FileSource


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
    return FileSource(make_config(FS_INTERFACES="file", FILE_ROOT=str(root)))


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


def test_reads_whole_file_and_from_an_offset(source: FileSource, root: Path) -> None:
    data = (root / "big.bin").read_bytes()
    assert read(source, "file:///big.bin") == data
    assert read(source, "file:///big.bin", CHUNK_SIZE + 7) == data[CHUNK_SIZE + 7:]
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


def test_missing_files_and_directories_without_slash(source: FileSource) -> None:
    with pytest.raises(SourceNotFound):
        source.stat("file:///nope.txt")
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


def test_changed_file_is_detected(source: FileSource, root: Path) -> None:
    path = root / "reports" / "a.csv"
    (info,) = source.stat("file:///reports/a.csv")
    path.write_bytes(b"a,b\n1,2\n3,4\n")
    with pytest.raises(SourceChanged):
        b"".join(source.open(info))
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
