"""Downloads through the real service (gunicorn, gevent worker) from a real upstream, checked by real readers."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from .support.live import LiveServer
from .support.readers import CheckZip, expect_truncated
from .support.upstream import UpstreamServer

Serve = Callable[..., LiveServer]


def _create(server: LiveServer, files: list[dict[str, object]], **extra: object) -> dict[str, str]:
    response = requests.post(server.url("/"), json={"files": files, **extra}, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _sparse(path: Path, size: int, marker: bytes = b"") -> Path:
    with path.open("wb") as handle:
        handle.truncate(size)
        if marker:  # some real bytes at both ends, so a misplaced offset shows up in the CRC
            handle.write(marker)
            handle.seek(size - len(marker))
            handle.write(marker)
    return path


def test_bundle_download_passes_every_reader(serve: Serve, upstream: UpstreamServer, tmp_path: Path,
                                             zip_readers: CheckZip) -> None:
    rng = random.Random(5)
    expected: dict[str, bytes] = {}
    files = []
    for i, size in enumerate([0, 1, 65535, 65536, 65537, 1_000_000]):
        data = rng.randbytes(size)
        upstream.add(f"/data/f{i}.bin", data)
        name = f"dossier/fichier-{i}-é.bin"
        files.append({"src": upstream.url(f"/data/f{i}.bin"), "dst": name})
        expected[name] = data
    server = serve()
    bundle = _create(server, files, filename="ünï.zip")
    response = requests.get(server.url(f"/{bundle['id']}"), timeout=60)
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content)
    path = tmp_path / "bundle.zip"
    path.write_bytes(response.content)
    zip_readers(path, expected)
    # Same bundle, same sources: the same bytes, also on another worker process.
    again = requests.get(server.url(f"/{bundle['id']}"), timeout=60)
    assert again.content == response.content
    assert again.headers["ETag"] == response.headers["ETag"]


@pytest.mark.parametrize("compression", ["stored", "deflate"])
def test_upstream_dying_mid_file_cuts_the_download(serve: Serve, upstream: UpstreamServer, tmp_path: Path,
                                                   compression: str) -> None:
    upstream.add("/a.bin", os.urandom(300_000))
    upstream.add("/b.bin", os.urandom(2_000_000))
    # Every response for b.bin dies after 100 kB: the few resume attempts (each continuing where the
    # last stopped) can't cover 2 MB, so the zip must be cut.
    upstream.set_behaviour("/b.bin", reset_after=100_000)
    server = serve()
    body = {"compression": compression, "files": [{"src": upstream.url("/a.bin")}, {"src": upstream.url("/b.bin")}]}
    got = bytearray()
    with (  # noqa: PT012 - reading the body is what must fail
        pytest.raises(requests.exceptions.ChunkedEncodingError),
        requests.post(server.url("/bundle"), json=body, stream=True, timeout=60) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_content(65536):
            got.extend(chunk)
    if compression == "stored":
        assert len(got) < int(response.headers["Content-Length"])
    path = tmp_path / "cut.zip"
    path.write_bytes(bytes(got))
    expect_truncated(path)


def test_cut_upstream_is_resumed_transparently(serve: Serve, upstream: UpstreamServer, tmp_path: Path,
                                               zip_readers: CheckZip) -> None:
    data = os.urandom(3_000_000)
    upstream.add("/big.bin", data)
    upstream.set_behaviour("/big.bin", reset_after=1_000_000, fail_times=2)
    server = serve()
    response = requests.post(server.url("/bundle"), json={"files": [{"src": upstream.url("/big.bin")}]}, timeout=60)
    assert response.status_code == 200
    path = tmp_path / "resumed.zip"
    path.write_bytes(response.content)
    zip_readers(path, {"big.bin": data})
    ranges = [r for r in upstream.ranges_for("/big.bin") if r]
    assert ranges, "the cut body should have been continued with a Range request"


def _cut_download(url: str, output: Path, rate: str, seconds: float) -> int:
    """A slow curl download killed part-way (the file then ends at an arbitrary byte); its size."""
    process = _curl(url, output, "--limit-rate", rate)
    time.sleep(seconds)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return output.stat().st_size


def _member_data_ranges(path: Path) -> list[tuple[int, int]]:
    """(offset of the data, size) of every member of a stored zip, from its local headers."""
    import struct
    import zipfile

    ranges = []
    with zipfile.ZipFile(path) as archive, path.open("rb") as raw:
        for info in archive.infolist():
            raw.seek(info.header_offset + 26)
            name_length, extra_length = struct.unpack("<HH", raw.read(4))
            ranges.append((info.header_offset + 30 + name_length + extra_length, info.file_size))
    return ranges


def _curl(url: str, output: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["curl", "-sS", "--fail", "-o", str(output), *extra, url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_curl_resume_is_byte_identical(serve: Serve, upstream: UpstreamServer, tmp_path: Path,
                                       zip_readers: CheckZip) -> None:
    sizes = [40_000_000, 0, 70_000_000, 12345, 90_000_000]  # ~200 MB
    expected = {}
    for i, size in enumerate(sizes):
        path = _sparse(tmp_path / f"src{i}.bin", size, marker=os.urandom(64) if size > 1000 else b"")
        upstream.add_file(f"/s/{i}.bin", path)
        expected[f"s/{i}.bin"] = path.read_bytes()
    server = serve()
    bundle = _create(server, [{"src": upstream.url(f"/s/{i}.bin")} for i in range(len(sizes))])
    url = server.url(f"/{bundle['id']}")
    partial = tmp_path / "partial.zip"
    cut_at = _cut_download(url, partial, rate="20M", seconds=2.5)
    assert 0 < cut_at < 200_000_000
    upstream.clear_log()
    resumed = _curl(url, partial, "-C", "-")
    assert resumed.wait(timeout=120) == 0
    resume_read = sum(upstream.bytes_sent.values())
    clean = tmp_path / "clean.zip"
    assert _curl(url, clean).wait(timeout=120) == 0
    assert partial.read_bytes() == clean.read_bytes()
    zip_readers(clean, expected)
    # The resume read what lies after the cut, plus at most the start of the member it was cut
    # inside (read again for its CRC-32); members before it were not read again (CRCs learned).
    # That start is read alongside the rest by its own open-ended request, stopped at the cut: what
    # the upstream had already put in flight then (socket buffers) is read too, hence the margin.
    in_flight = 8 << 20
    # Pre-flight's ranged GET reads one byte of each source (`bytes=0-0`).
    preflight = len(sizes)
    data_after_cut = 0
    cut_member_head = 0
    for data_start, size in _member_data_ranges(clean):
        data_after_cut += max(0, data_start + size - max(cut_at, data_start))
        if data_start <= cut_at < data_start + size:
            cut_member_head = cut_at - data_start
    assert resume_read <= data_after_cut + cut_member_head + in_flight + preflight, (
        resume_read, data_after_cut, cut_member_head)


def test_resume_after_source_changed_restarts_not_splices(serve: Serve, upstream: UpstreamServer,
                                                          tmp_path: Path) -> None:
    upstream.add("/a.bin", os.urandom(5_000_000))
    server = serve()
    bundle = _create(server, [{"src": upstream.url("/a.bin")}])
    url = server.url(f"/{bundle['id']}")
    first = requests.get(url, headers={"Range": "bytes=0-999999"}, timeout=30)
    etag = first.headers["ETag"]
    upstream.add("/a.bin", os.urandom(5_000_000))  # the source changes between the two requests
    second = requests.get(url, headers={"Range": "bytes=1000000-", "If-Range": etag}, timeout=30)
    assert second.status_code == 200  # the whole new zip, not a splice of two versions
    assert second.headers["ETag"] != etag


def test_one_gib_member_streams_with_flat_memory(serve: Serve, upstream: UpstreamServer, tmp_path: Path) -> None:
    size = 1 << 30
    path = _sparse(tmp_path / "gib.bin", size, marker=b"ends")
    upstream.add_file("/gib.bin", path)
    server = serve()
    bundle = _create(server, [{"src": upstream.url("/gib.bin")}])
    worker = server.worker_pids()[0]
    requests.get(server.url("/health-check"), timeout=10)
    before = _rss_kib(worker)
    peak = before
    crc = 0
    received = 0
    with requests.get(server.url(f"/{bundle['id']}"), stream=True, timeout=120) as response:
        for count, chunk in enumerate(response.iter_content(1 << 20)):
            received += len(chunk)
            crc = zlib.crc32(chunk, crc)
            if count % 64 == 0:
                peak = max(peak, _rss_kib(worker))
    assert received == int(response.headers["Content-Length"])
    growth_mib = (peak - before) / 1024
    print(f"worker RSS before {before / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, growth {growth_mib:.1f} MiB")
    assert growth_mib < 32, f"streaming 1 GiB grew the worker by {growth_mib:.1f} MiB"


def test_five_gib_member_is_zip64_and_verifies(serve: Serve, upstream: UpstreamServer, tmp_path: Path,
                                               zip_readers: CheckZip) -> None:
    """A member over 4 GiB (and one after it, at an offset over 4 GiB) needs ZIP64 records."""
    size = 5 << 30
    big = _sparse(tmp_path / "five.bin", size, marker=os.urandom(4096))
    upstream.add_file("/five.bin", big)
    upstream.add("/after.txt", b"after the big one\n")
    server = serve()
    bundle = _create(server, [{"src": upstream.url("/five.bin")}, {"src": upstream.url("/after.txt")}])
    worker = server.worker_pids()[0]
    before = peak = _rss_kib(worker)
    out = tmp_path / "five.zip"
    with requests.get(server.url(f"/{bundle['id']}"), stream=True, timeout=300) as response, out.open("wb") as sink:
        assert response.status_code == 200
        length = int(response.headers["Content-Length"])
        for count, chunk in enumerate(response.iter_content(1 << 20)):
            sink.write(chunk)
            if count % 256 == 0:
                peak = max(peak, _rss_kib(worker))
    assert out.stat().st_size == length
    print(f"5 GiB member: worker RSS growth {(peak - before) / 1024:.1f} MiB")
    assert (peak - before) / 1024 < 50
    # Too big to hold in memory for a byte comparison: the CRC checks of zipfile and unzip -t
    # read every byte of the member instead.
    zip_readers(out, None, readers=("zipfile", "unzip"))
    import zipfile

    with zipfile.ZipFile(out) as archive:
        infos = archive.infolist()
        assert [info.filename for info in infos] == ["five.bin", "after.txt"]
        assert infos[0].file_size == size
        assert infos[1].header_offset > 0xFFFFFFFF
        assert archive.read("after.txt") == b"after the big one\n"
    out.unlink()


def test_curl_resume_after_source_changed_never_splices(serve: Serve, upstream: UpstreamServer,
                                                        tmp_path: Path) -> None:
    """`curl -C -` sends no If-Range: a version never served must not be resumed into old bytes."""
    upstream.add("/a.bin", os.urandom(20_000_000))
    server = serve()
    bundle = _create(server, [{"src": upstream.url("/a.bin")}])
    url = server.url(f"/{bundle['id']}")
    partial = tmp_path / "partial.zip"
    assert 0 < _cut_download(url, partial, rate="4M", seconds=1.5) < 20_000_000
    upstream.add("/a.bin", os.urandom(20_000_000))  # same size, new content and ETag
    held = partial.read_bytes()
    resumed = subprocess.run(["curl", "-sS", "--fail", "-C", "-", "-o", str(partial), url],
                             capture_output=True, check=False, timeout=120)
    # The new version never sent those bytes: 428, curl --fail exits 22 and the file is untouched;
    # the user starts again. What it must never do is exit 0 with a file made of two versions.
    assert resumed.returncode == 22, resumed.stderr
    assert b"428" in resumed.stderr
    assert partial.read_bytes() == held
    # Once the new version has been served, resuming it works as usual.
    fresh = tmp_path / "fresh.zip"
    _cut_download(url, fresh, rate="4M", seconds=1.5)
    assert subprocess.run(["curl", "-sS", "--fail", "-C", "-", "-o", str(fresh), url],
                          check=False, timeout=120).returncode == 0
    import zipfile

    with zipfile.ZipFile(fresh) as archive:
        assert archive.testzip() is None
