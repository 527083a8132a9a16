"""Prove the test-support helpers themselves: real zip readers and the local upstream server."""

from __future__ import annotations

import email.utils
import gzip
import http.client
import io
import shutil
import socket
import sys
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support import ci, netns, readers
from tests.support.readers import check_zip, expect_truncated, missing_readers, require_readers
from tests.support.readers import zip_readers as zip_readers
from tests.support.upstream import UpstreamServer, parse_range
from tests.support.upstream import upstream as upstream
from tests.support.upstream import upstream_factory as upstream_factory

CheckZip = Callable[..., None]

MEMBERS: dict[str, bytes] = {
    "readme.txt": b"hello zip\n" * 500,
    "data/random.bin": bytes((i * 7919) % 251 for i in range(100_000)),
    "data/": b"",
    "naïve résumé 漢字.txt": "unicode name ✓\n".encode(),
    "empty.txt": b"",
}


def _write_zip(path: Path, members: dict[str, bytes], *, stream: bool = False) -> Path:
    """Write members with Python's zipfile; stream=True forces data descriptors (unseekable output)."""
    buffer = io.BytesIO()
    sink: io.RawIOBase | io.BytesIO = _Unseekable(buffer) if stream else buffer
    with zipfile.ZipFile(sink, "w") as zf:
        for i, (name, data) in enumerate(members.items()):
            method = zipfile.ZIP_DEFLATED if i % 2 == 0 else zipfile.ZIP_STORED
            zf.writestr(zipfile.ZipInfo(name, (2024, 1, 2, 3, 4, 6)), data, compress_type=method)
    path.write_bytes(buffer.getvalue())
    return path


class _Unseekable(io.RawIOBase):
    """A write-only stream zipfile cannot seek in, like an HTTP response body."""

    def __init__(self, target: io.BytesIO) -> None:
        self._target = target

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return self._target.write(data)

    def tell(self) -> int:
        raise OSError("unseekable")


# --------------------------------------------------------------------------- readers


def test_python_zip_passes_every_reader(tmp_path: Path, zip_readers: CheckZip) -> None:
    zip_readers(_write_zip(tmp_path / "a.zip", MEMBERS), MEMBERS)


def test_streamed_zip_with_data_descriptors(tmp_path: Path, zip_readers: CheckZip) -> None:
    archive = _write_zip(tmp_path / "s.zip", MEMBERS, stream=True)
    with zipfile.ZipFile(archive) as zf:
        assert all(info.flag_bits & 0x08 for info in zf.infolist()), "expected data descriptors"
    zip_readers(archive, MEMBERS)
    # The documented ZipInputStream limitation, which is why java-stream is opt-in.
    with pytest.raises(AssertionError, match=r"(?s)\[java-stream\].*only DEFLATED entries can have EXT"):
        check_zip(archive, MEMBERS, readers=["java-stream"])


def test_java_stream_reads_deflated_zip(tmp_path: Path, zip_readers: CheckZip) -> None:
    deflated = {"a.txt": b"a" * 1000, "b/c.txt": b"c" * 10}
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in deflated.items():
            zf.writestr(name, data)
    zip_readers(archive, deflated, readers=readers.KNOWN)


def test_empty_zip_passes(tmp_path: Path, zip_readers: CheckZip) -> None:
    archive = tmp_path / "empty.zip"
    zipfile.ZipFile(archive, "w").close()
    zip_readers(archive, {}, readers=readers.KNOWN)


def test_wrong_content_is_reported_by_each_reader(tmp_path: Path, zip_readers: CheckZip) -> None:
    archive = _write_zip(tmp_path / "a.zip", MEMBERS)
    wrong = {**MEMBERS, "readme.txt": b"HELLO zip\n" * 500}
    with pytest.raises(AssertionError) as info:
        zip_readers(archive, wrong)
    message = str(info.value)
    for reader in ("zipfile", "7z", "bsdtar", "java"):
        assert f"[{reader}]" in message
    assert "'readme.txt': CRC32" in message


def test_wrong_order_and_names_are_reported(tmp_path: Path, zip_readers: CheckZip) -> None:
    archive = _write_zip(tmp_path / "a.zip", MEMBERS)
    reordered = dict(reversed(list(MEMBERS.items())))
    with pytest.raises(AssertionError, match=r"\[unzip\] entries out of order"):
        zip_readers(archive, reordered)
    with pytest.raises(AssertionError, match=r"missing \['extra.txt'\]"):
        zip_readers(archive, {**MEMBERS, "extra.txt": b"x"})


def test_trailing_garbage_is_flagged(tmp_path: Path, zip_readers: CheckZip) -> None:
    archive = _write_zip(tmp_path / "a.zip", MEMBERS)
    archive.write_bytes(archive.read_bytes() + b"junk after the end")
    with pytest.raises(AssertionError, match=r"\[7z\] warnings"):
        zip_readers(archive)


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9, -22, -1], ids=["empty", "30%", "90%", "no-eocd", "minus-1"])
def test_truncated_zip_is_rejected(tmp_path: Path, zip_readers: CheckZip, keep: float) -> None:
    data = _write_zip(tmp_path / "a.zip", MEMBERS).read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else len(data) + int(keep)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(data[:cut])
    expect_truncated(broken)
    with pytest.raises(AssertionError, match="zip check failed"):
        zip_readers(broken)


def test_expect_truncated_fails_on_a_good_zip(tmp_path: Path, zip_readers: CheckZip) -> None:
    archive = _write_zip(tmp_path / "a.zip", MEMBERS)
    with pytest.raises(AssertionError, match="was accepted by: zipfile, unzip, 7z, java"):
        expect_truncated(archive)


def test_missing_readers_skip_locally_and_fail_on_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing installed here
    assert missing_readers() == ["unzip", "7z", "bsdtar", "java", "node", "go"]
    assert missing_readers(["zipfile"]) == []
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="p7zip-full"):
        require_readers()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="zip readers not installed: unzip, 7z, bsdtar, java, node, go"):
        require_readers()
    with pytest.raises(ValueError, match="unknown zip readers"):
        missing_readers(["winzip"])


def test_loopback_only_tests_skip_locally_and_fail_on_ci_without_a_namespace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no unshare, no ip
    assert "unshare not installed" in str(netns.unavailable())
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="unshare not installed"):
        netns.require()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"unshare not installed.*util-linux"):
        netns.require()


def test_a_namespace_command_has_only_loopback() -> None:
    netns.require()
    probe = netns.run([sys.executable, "-c", "import socket; print([n for _, n in socket.if_nameindex()])"],
                      capture_output=True, timeout=60)
    assert probe.stdout.strip() == "['lo']", probe.stderr


def test_yauzl_missing_from_the_test_cache_is_a_missing_reader(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("node") is None:
        ci.missing("node not installed (apt-get install -y nodejs)", "CI must run tests/support/system_deps.py")
    monkeypatch.setenv("ZIPSTREAM_TEST_CACHE", str(tmp_path))  # an empty cache: npm never ran here
    assert missing_readers(["yauzl2", "yauzl3"]) == ["yauzl"]
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"yauzl .*system_deps\.py"):
        require_readers(["yauzl2"])


# --------------------------------------------------------------------------- upstream

DATA = bytes(range(256)) * 1024  # 256 KiB, every byte value at a known offset
NAME = "/dir with space/ünïcode file.bin"


@pytest.fixture
def up(upstream: UpstreamServer) -> UpstreamServer:
    upstream.add(NAME, DATA, last_modified=1_700_000_000.0)
    return upstream


def test_get_and_head_headers(up: UpstreamServer) -> None:
    url = up.url(NAME)
    assert url.endswith("/dir%20with%20space/%C3%BCn%C3%AFcode%20file.bin")
    with requests.get(url, timeout=5) as r:
        assert r.status_code == 200
        assert r.content == DATA
    with requests.head(url, timeout=5) as h:
        assert h.status_code == 200
        assert h.content == b""
    for resp in (r, h):
        assert resp.headers["Content-Length"] == str(len(DATA))
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert resp.headers["ETag"].startswith('"')
        assert resp.headers["ETag"].endswith('"')
        assert resp.headers["Last-Modified"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert [(m, p) for m, p, _, _ in up.requests] == [("GET", NAME), ("HEAD", NAME)]
    assert up.bytes_sent == {NAME: len(DATA)}


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-9", 0, 10),
        ("bytes=1000-", 1000, len(DATA)),
        ("bytes=-5", len(DATA) - 5, len(DATA)),
        ("bytes=100-99999999", 100, len(DATA)),
        ("bytes=-99999999", 0, len(DATA)),
    ],
)
def test_range_requests(up: UpstreamServer, header: str, start: int, end: int) -> None:
    with requests.get(up.url(NAME), headers={"Range": header}, timeout=5) as r:
        assert r.status_code == 206
        assert r.content == DATA[start:end]
        assert r.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(DATA)}"
        assert r.headers["Content-Length"] == str(end - start)
    assert up.ranges_for(NAME) == [header]


@pytest.mark.parametrize("header", ["bytes=999999-", "bytes=-0"])
def test_unsatisfiable_range(up: UpstreamServer, header: str) -> None:
    with requests.get(up.url(NAME), headers={"Range": header}, timeout=5) as r:
        assert r.status_code == 416
        assert r.headers["Content-Range"] == f"bytes */{len(DATA)}"


def test_parse_range_ignores_what_it_cannot_serve() -> None:
    assert parse_range("bytes=0-1,5-6", 10) is None  # multi-range: 200 full is allowed
    assert parse_range("bytes=5-2", 10) is None
    assert parse_range("items=0-1", 10) is None
    assert parse_range(None, 10) is None


def test_if_range(up: UpstreamServer) -> None:
    url = up.url(NAME)
    etag = requests.head(url, timeout=5).headers["ETag"]
    old_date = email.utils.formatdate(1_600_000_000, usegmt=True)
    same_date = email.utils.formatdate(1_700_000_000, usegmt=True)
    cases = [(etag, 206), ('"stale"', 200), (f"W/{etag}", 200), (same_date, 206), (old_date, 200)]
    for if_range, status in cases:
        with requests.get(url, headers={"Range": "bytes=0-3", "If-Range": if_range}, timeout=5) as r:
            assert r.status_code == status, if_range
            assert r.content == (DATA[:4] if status == 206 else DATA)


def test_if_match(up: UpstreamServer) -> None:
    url = up.url(NAME)
    etag = requests.head(url, timeout=5).headers["ETag"]
    assert requests.get(url, headers={"If-Match": '"other"'}, timeout=5).status_code == 412
    assert requests.get(url, headers={"If-Match": f'"other", {etag}'}, timeout=5).status_code == 200
    assert requests.get(url, headers={"If-Match": "*"}, timeout=5).status_code == 200


def test_changed_content_gets_new_etag(up: UpstreamServer) -> None:
    before = requests.head(up.url(NAME), timeout=5).headers["ETag"]
    up.add(NAME, DATA + b"!")
    after = requests.head(up.url(NAME), timeout=5).headers["ETag"]
    assert before != after
    with requests.get(up.url(NAME), headers={"Range": "bytes=0-0", "If-Range": before}, timeout=5) as r:
        assert r.status_code == 200
        assert len(r.content) == len(DATA) + 1


def test_not_found_and_query_string(up: UpstreamServer) -> None:
    assert requests.get(up.url("/missing"), timeout=5).status_code == 404
    assert requests.get(up.url(NAME) + "?x-signature=abc", timeout=5).status_code == 200
    assert up.requests[-1].path == NAME


def test_forced_status_with_fail_times(up: UpstreamServer) -> None:
    up.set_behaviour(NAME, status=503, fail_times=2, retry_after=0)
    statuses = [requests.get(up.url(NAME), timeout=5).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    up.set_behaviour(None, status=403)  # server-wide, but the per-path plan is used up
    assert requests.get(up.url(NAME), timeout=5).status_code == 200
    assert requests.get(up.url("/other"), timeout=5).status_code == 403
    up.clear_behaviour()
    assert requests.get(up.url("/other"), timeout=5).status_code == 404
    with pytest.raises(TypeError, match="unknown behaviour options"):
        up.set_behaviour(NAME, explode=True)


def _raw_get(up: UpstreamServer, path: str) -> tuple[bytes, bytes, OSError | None]:
    """GET over a bare socket and return (head, body, error) exactly as received."""
    received = b""
    error: OSError | None = None
    with socket.create_connection(("127.0.0.1", up.port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError as exc:
            error = exc
    head, _, body = received.partition(b"\r\n\r\n")
    return head, body, error


def test_reset_after_sends_n_bytes_then_rst(up: UpstreamServer) -> None:
    up.set_behaviour(NAME, reset_after=100_000)
    head, body, error = _raw_get(up, up.url(NAME).removeprefix(up.base_url))
    assert f"Content-Length: {len(DATA)}".encode() in head
    assert body == DATA[:100_000]
    assert isinstance(error, ConnectionResetError)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(up.url(NAME), timeout=5).close()


def test_stall_after_times_out_client(up: UpstreamServer) -> None:
    up.set_behaviour(NAME, stall_after=1000, stall_seconds=3)
    started = time.monotonic()
    received = 0
    with requests.get(up.url(NAME), stream=True, timeout=(2, 0.3)) as r:
        chunks = r.iter_content(100)
        while received < 1000:
            received += len(next(chunks))
        with pytest.raises(requests.exceptions.ConnectionError, match="timed out"):
            next(chunks)
    assert received == 1000
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("delta", [10, -10])
def test_wrong_length(up: UpstreamServer, delta: int) -> None:
    up.set_behaviour(NAME, wrong_length=delta)
    if delta > 0:
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.get(up.url(NAME), timeout=5).close()
    else:
        with requests.get(up.url(NAME), timeout=5) as r:
            assert r.content == DATA[:delta]  # the client stops at the announced length


def test_gzip_no_length_redirect_head_range_switches(up: UpstreamServer) -> None:
    url = up.url(NAME)
    up.set_behaviour(NAME, gzip=True)
    with requests.get(url, headers={"Accept-Encoding": "identity"}, stream=True, timeout=5) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(r.raw.read(decode_content=False)) == DATA
    up.set_behaviour(NAME, gzip=False, no_length=True)
    with requests.get(url, timeout=5) as r:
        assert "Content-Length" not in r.headers
        assert r.content == DATA
    up.clear_behaviour(NAME)
    up.set_behaviour("/old", redirect_to=url)
    with requests.get(up.url("/old"), timeout=5) as r:
        assert [h.status_code for h in r.history] == [302]
        assert r.content == DATA
    up.set_behaviour(NAME, no_head=True, no_range=True)
    assert requests.head(url, timeout=5).status_code == 405
    with requests.get(url, headers={"Range": "bytes=0-9"}, timeout=5) as r:
        assert r.status_code == 200
        assert r.headers["Accept-Ranges"] == "none"
        assert r.content == DATA


def test_latency(up: UpstreamServer) -> None:
    up.set_behaviour(None, latency=0.2)
    started = time.monotonic()
    requests.head(up.url(NAME), timeout=5).close()
    assert time.monotonic() - started >= 0.2


def test_sparse_disk_file_streams_ranges(upstream: UpstreamServer, tmp_path: Path) -> None:
    big = tmp_path / "sparse.bin"
    with big.open("wb") as fh:
        fh.truncate(4 * 1024**3)  # 4 GiB of holes: never read whole
        fh.seek(4 * 1024**3 - 5)
        fh.write(b"tail!")
    upstream.add_file("big.bin", big)
    with requests.get(upstream.url("big.bin"), headers={"Range": "bytes=-5"}, timeout=5) as r:
        assert r.status_code == 206
        assert r.content == b"tail!"
        assert r.headers["Content-Range"] == f"bytes {4 * 1024**3 - 5}-{4 * 1024**3 - 1}/{4 * 1024**3}"
        stat = big.stat()
        assert r.headers["ETag"] == f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
    with requests.get(upstream.url("big.bin"), headers={"Range": "bytes=1000-"}, stream=True, timeout=5) as r:
        first = next(r.iter_content(1024 * 1024))
        assert first == bytes(len(first))
    assert upstream.errors == []


def test_keep_alive_and_concurrency(up: UpstreamServer) -> None:
    target = up.url(NAME).removeprefix(up.base_url)
    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=5)
    try:
        sockets = []
        for _ in range(3):
            conn.request("GET", target, headers={"Range": "bytes=0-0"})
            assert conn.getresponse().read() == DATA[:1]
            sockets.append(conn.sock)
        assert sockets[0] is not None
        assert all(s is sockets[0] for s in sockets)  # one connection served every request
    finally:
        conn.close()

    def fetch(i: int) -> bytes:
        with requests.get(up.url(NAME), headers={"Range": f"bytes={i}-{i + 99}"}, timeout=10) as r:
            return r.content

    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(fetch, range(200)))
    assert results == [DATA[i : i + 100] for i in range(200)]
    assert len(up.requests_for(NAME, "GET")) == 203
    assert up.errors == []


def test_stop_is_prompt_with_stalled_clients(upstream_factory: Callable[..., UpstreamServer]) -> None:
    server = upstream_factory({"/x": DATA})
    server.set_behaviour("/x", stall_after=10, stall_seconds=60)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.recv(100)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2


def test_upstream_head_status_and_head_without_length(upstream: UpstreamServer) -> None:
    upstream.add("/a.bin", b"x" * 500)
    upstream.set_behaviour("/a.bin", head_status=403)
    assert requests.head(upstream.url("/a.bin"), timeout=5).status_code == 403
    assert requests.get(upstream.url("/a.bin"), timeout=5).content == b"x" * 500
    upstream.set_behaviour("/a.bin", head_status=None, head_no_length=True)
    connection = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    try:
        connection.request("HEAD", "/a.bin")
        response = connection.getresponse()
        assert response.version == 10  # HTTP/1.0: the close ends the (empty) body
        assert response.getheader("Content-Length") is None
        assert response.getheader("ETag")
    finally:
        connection.close()
    ranged = requests.get(upstream.url("/a.bin"), headers={"Range": "bytes=0-9"}, timeout=5)
    assert ranged.status_code == 206
    assert ranged.headers["Content-Range"] == "bytes 0-9/500"


def test_upstream_validator_hosts_take_turns(upstream: UpstreamServer) -> None:
    upstream.add("/a.bin", b"x" * 500)
    upstream.set_behaviour("/a.bin", validator_hosts=2)
    answers = [requests.get(upstream.url("/a.bin"), timeout=5) for _ in range(3)]
    etags = [answer.headers["ETag"] for answer in answers]
    assert etags[0] == etags[2] != etags[1]
    assert answers[0].headers["Last-Modified"] != answers[1].headers["Last-Modified"]
    # If-Range names the host that answered before: the next host's answer is the whole file.
    resumed = requests.get(upstream.url("/a.bin"), headers={"Range": "bytes=10-", "If-Range": etags[2]}, timeout=5)
    assert resumed.status_code == 200
    assert resumed.headers["ETag"] == etags[1]


def test_upstream_chunked_and_header_values(upstream: UpstreamServer) -> None:
    data = bytes(range(256)) * 4000
    upstream.add("/a.bin", data)
    upstream.set_behaviour("/a.bin", chunked=True)
    connection = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    try:
        connection.request("GET", "/a.bin")
        response = connection.getresponse()
        assert response.getheader("Transfer-Encoding") == "chunked" and response.getheader("Content-Length") is None
        assert response.read() == data  # http.client decodes the chunks: a well-formed chunked body
        connection.request("GET", "/a.bin", headers={"Range": "bytes=10-19"})  # the connection is kept
        ranged = connection.getresponse()
        assert ranged.status == 206 and ranged.read() == data[10:20]
    finally:
        connection.close()
    upstream.set_behaviour("/a.bin", chunked=False, header_values=(("Content-Length", "1²"), ("X-Extra", "y")))
    answer = requests.get(upstream.url("/a.bin"), timeout=5)
    assert answer.headers["Content-Length"] == "1²" and answer.headers["X-Extra"] == "y"
    assert answer.headers["Connection"] == "close" and answer.content == data
    upstream.set_behaviour("/b.bin", header_values=(("Content-Length", "1²"),))
    missing = requests.get(upstream.url("/b.bin"), timeout=5)  # answers of its own keep their fields
    assert missing.status_code == 404 and missing.headers["Content-Length"] == str(len(missing.content))
