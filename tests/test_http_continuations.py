"""Continuations and redirects as a browser does them (issue 13, points 2 and 7), against a real upstream.

Each test drives the app (POST /bundle, GET /:id, HEAD /:id, resumes with Range + If-Range) over an
upstream that behaves like a real server that browsers cope with: redirects to short-lived signed
URLs or to a mirror with its own ETag, 206s that start early, ranged requests that fail, Retry-After,
raw UTF-8 in Location, gzip/deflate bodies. Every zip is checked by the real readers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from zipstream import create_app
from zipstream.config import Config
from zipstream.errors import StreamAborted

from .support.upstream import UpstreamServer

KB = 1024


def _data(size: int, seed: int = 0) -> bytes:
    return bytes((index * 31 + seed) % 251 for index in range(size))


@pytest.fixture
def make_client(make_config: Callable[..., Config]) -> Callable[..., FlaskClient]:
    def make(**env: str) -> FlaskClient:
        return create_app(make_config(**env)).test_client()

    return make


@pytest.fixture
def client(make_client: Callable[..., FlaskClient]) -> FlaskClient:
    return make_client(HTTP_TIMEOUT="5")


def _create(client: FlaskClient, files: list[dict[str, str]]) -> str:
    response = client.post("/", json={"files": files})
    assert response.status_code == 201, response.get_data(as_text=True)
    return str(response.get_json()["id"])


def _check(tmp_path: Path, data: bytes, expected: dict[str, bytes], check_zip: Any, name: str = "b.zip") -> None:
    path = tmp_path / name
    path.write_bytes(data)
    check_zip(path, expected)


def _discarded() -> float:
    return REGISTRY.get_sample_value("zipstream_upstream_bytes_discarded_total", {"backend": "https"}) or 0.0


def _whole_and_resumed(client: FlaskClient, bundle_id: str, offsets: list[int],
                       before_each: Callable[[], None] = lambda: None) -> tuple[bytes, list[bytes]]:
    """The whole zip by GET, then each resume from `offset` (Range + If-Range with the zip's ETag)."""
    before_each()
    whole = client.get(f"/{bundle_id}")
    assert whole.status_code == 200, whole.get_data(as_text=True)
    data = whole.data  # read now: the test client streams lazily
    etag = whole.headers["ETag"]
    parts = []
    for offset in offsets:
        before_each()
        part = client.get(f"/{bundle_id}", headers={"Range": f"bytes={offset}-", "If-Range": etag})
        assert part.status_code == 206, part.get_data(as_text=True)
        parts.append(part.data)
    return data, parts


# -- point 7: Location as browsers read it --


@pytest.mark.parametrize(("location", "raw_utf8"), [
    ("/dir/für.txt", True),  # raw UTF-8 bytes: was followed to /dir/f%C3%83%C2%BCr.txt (422)
    ("für.txt", True),  # relative to /dir/dl
    ("//127.0.0.1:{port}/dir/für.txt", True),  # scheme-relative
    ("/dir/für.txt#section", True),  # a fragment is not sent
    ("/dir/f%C3%BCr.txt", False),  # already percent-encoded: encoded once, not twice
    ("/dir/für.txt", False),  # Latin-1 byte 0xFC: not UTF-8, read as Latin-1
])
def test_location_is_decoded_and_resolved_as_a_browser_does(
        client: FlaskClient, upstream: UpstreamServer, tmp_path: Path, zip_readers: Any,
        location: str, raw_utf8: bool) -> None:
    content = _data(3000)
    upstream.add("/dir/für.txt", content)
    upstream.set_behaviour("/dir/dl", redirect_to=location.format(port=upstream.port), redirect_utf8=raw_utf8)
    response = client.post("/bundle", json={"files": [{"src": upstream.url("/dir/dl"), "dst": "für.txt"}]})
    assert response.status_code == 200, response.get_data(as_text=True)
    _check(tmp_path, response.data, {"für.txt": content}, zip_readers)
    assert upstream.requests_for("/dir/für.txt"), [r.path for r in upstream.requests]


def test_a_utf8_location_to_a_host_not_allowed_is_still_refused(
        make_client: Callable[..., FlaskClient], upstream: UpstreamServer) -> None:
    """Decoding the Location changes nothing for the address rules: every hop is checked."""
    client = make_client(HTTP_HOSTS="127.0.0.1")
    upstream.add("/für.txt", b"x")
    upstream.set_behaviour("/dl", redirect_to=f"//localhost:{upstream.port}/für.txt", redirect_utf8=True)
    response = client.post("/bundle", json={"files": [{"src": upstream.url("/dl")}]})
    assert response.status_code == 403, response.get_data(as_text=True)  # source_refused
    assert "HTTP_HOSTS" in response.get_json()["error"]["sources"][0]["reason"]
    assert not upstream.requests_for("/für.txt")


@pytest.mark.parametrize("location", ["http://[::1", "http://[zz]/x"])
def test_a_malformed_location_is_a_json_502_naming_the_src(client: FlaskClient, upstream: UpstreamServer,
                                                           location: str) -> None:
    """urljoin raised "Invalid IPv6 URL" and the request answered 500 internal_error."""
    upstream.set_behaviour("/dl", redirect_to=location)
    response = client.post("/bundle", json={"files": [{"src": upstream.url("/dl")}]})
    assert response.status_code == 502, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "upstream_error"
    assert error["sources"][0]["src"] == upstream.url("/dl")
    assert "invalid URL" in error["sources"][0]["reason"]


# -- point 2: redirects to short-lived URLs --


@pytest.mark.parametrize("resume", [False, True])
def test_a_signed_redirect_target_that_expires_is_resolved_again(
        make_client: Callable[..., FlaskClient], upstream: UpstreamServer, tmp_path: Path, zip_readers: Any,
        resume: bool) -> None:
    """/asset -> 302 -> /signed.bin?expires=... valid 1 s; the member is asked for after a first member
    that takes 1.5 s: the saved target answers 403, so /asset is asked again (a fresh signature)."""
    client = make_client(HTTP_TIMEOUT="5", PREFETCH="0", PREFLIGHT_FETCH_BYTES="0")
    first, second = _data(20 * KB, 1), _data(50 * KB, 2)
    upstream.add("/first.bin", first)
    upstream.set_behaviour("/first.bin", stall_after=1000, stall_seconds=1.5)
    upstream.add("/signed.bin", second)
    upstream.set_behaviour("/asset", redirect_to="/signed.bin", redirect_expires=1.0)
    bundle_id = _create(client, [{"src": upstream.url("/first.bin")}, {"src": upstream.url("/asset")}])
    if resume:
        etag = client.head(f"/{bundle_id}").headers["ETag"]
        response = client.get(f"/{bundle_id}", headers={"Range": "bytes=500-", "If-Range": etag})
        assert response.status_code == 206
        whole = client.get(f"/{bundle_id}").data  # (itself a continuation after 1.5 s)
        assert response.data == whole[500:]
        data = whole
    else:
        response = client.get(f"/{bundle_id}")
        assert response.status_code == 200
        data = response.data
    _check(tmp_path, data, {"first.bin": first, "asset": second}, zip_readers)
    # The expired target answered 403 and the bundle's own URL was asked again.
    asked = [r.path for r in upstream.requests if r.method == "GET"]
    assert asked.count("/asset") >= 1 and asked.count("/signed.bin") >= 2


def test_a_redirect_to_a_mirror_that_appears_only_on_the_later_get(
        client: FlaskClient, upstream: UpstreamServer, tmp_path: Path, zip_readers: Any) -> None:
    """Pre-flight reads /asset's first 64 KiB directly; the continuation is redirected to a mirror
    serving the same bytes under its own ETag (and the same Last-Modified): the date vouches there."""
    content = _data(300 * KB, 3)
    modified = float(int(time.time()) - 3600)
    upstream.add("/asset", content, etag='"origin-1"', last_modified=modified)
    upstream.add("/mirror/asset", content, etag='"mirror-77"', last_modified=modified)
    bundle_id = _create(client, [{"src": upstream.url("/asset")}])

    def redirect_after_preflight() -> None:
        # The next request (pre-flight's) is answered by /asset itself; later ones go to the mirror.
        upstream.set_behaviour("/asset", redirect_to="/mirror/asset", redirect_after=1)

    whole, parts = _whole_and_resumed(client, bundle_id, [100 * KB], redirect_after_preflight)
    _check(tmp_path, whole, {"asset": content}, zip_readers)
    assert parts[0] == whole[100 * KB:]
    mirrored = upstream.requests_for("/mirror/asset", "GET")
    assert mirrored and all(r.headers.get("if-range", "").endswith("GMT") for r in mirrored)


def test_a_mirror_with_another_version_is_read_whole_never_spliced(
        make_client: Callable[..., FlaskClient], upstream: UpstreamServer, tmp_path: Path, zip_readers: Any) -> None:
    """Its ETag and its Last-Modified differ: nothing vouches for the bytes pre-flight held. None of the
    member was sent yet, so it is read whole again as the version the mirror serves (same size), never
    the held first bytes of one version followed by the rest of another. (The mirror answers the same
    validators again, so this is a file that changed, not an unstable one: later downloads get the new
    version with its own ETag.)"""
    client = make_client(HTTP_TIMEOUT="5")
    mirrored = _data(300 * KB, 4)
    upstream.add("/asset", _data(300 * KB, 3), etag='"origin-1"', last_modified=float(int(time.time()) - 3600))
    upstream.add("/mirror/asset", mirrored, etag='"mirror-77"', last_modified=float(int(time.time())))
    bundle_id = _create(client, [{"src": upstream.url("/asset"), "dst": "asset"}])
    upstream.set_behaviour("/asset", redirect_to="/mirror/asset", redirect_after=1)
    response = client.get(f"/{bundle_id}", buffered=False)
    assert response.status_code == 200
    first_etag = response.headers["ETag"]
    _check(tmp_path, b"".join(response.response), {"asset": mirrored}, zip_readers)
    later = client.get(f"/{bundle_id}")
    assert later.headers["ETag"] != first_etag  # the version the first answer's ETag named is gone
    _check(tmp_path, later.data, {"asset": mirrored}, zip_readers)


# -- point 2: ranged continuations --


def test_a_206_starting_earlier_than_asked_is_trimmed(
        client: FlaskClient, upstream: UpstreamServer, tmp_path: Path, zip_readers: Any) -> None:
    content = _data(300 * KB, 5)
    upstream.add("/a.bin", content)
    upstream.add("/b.bin", _data(1000, 6))
    upstream.set_behaviour("/a.bin", range_early=1000)
    bundle_id = _create(client, [{"src": upstream.url("/a.bin")}, {"src": upstream.url("/b.bin")}])
    before = _discarded()
    whole, parts = _whole_and_resumed(client, bundle_id, [200, 70 * KB, 250 * KB])
    _check(tmp_path, whole, {"a.bin": content, "b.bin": _data(1000, 6)}, zip_readers)
    for offset, part in zip([200, 70 * KB, 250 * KB], parts, strict=True):
        assert part == whole[offset:]
    assert _discarded() - before >= 1000  # the extra bytes were read, and counted


def test_a_server_failing_ranged_requests_is_read_whole(
        client: FlaskClient, upstream: UpstreamServer, tmp_path: Path, zip_readers: Any) -> None:
    """500 to every ranged request past byte 0, plain GET fine: the member is read from byte 0 with the
    bytes before the offset skipped, not retried and cut."""
    content = _data(300 * KB, 7)
    upstream.add("/a.bin", content)
    upstream.set_behaviour("/a.bin", range_status=500)
    bundle_id = _create(client, [{"src": upstream.url("/a.bin")}])
    before, sent_before = _discarded(), upstream.bytes_sent.get("/a.bin", 0)
    started = time.monotonic()
    whole, parts = _whole_and_resumed(client, bundle_id, [150 * KB])
    assert time.monotonic() - started < 5  # one short retry, not the whole back-off per continuation
    _check(tmp_path, whole, {"a.bin": content}, zip_readers)
    assert parts[0] == whole[150 * KB:]
    # GET: 64 KiB held from pre-flight + a whole re-read; the resume: a whole read. All counted.
    assert _discarded() - before >= 64 * KB + 100 * KB
    assert upstream.bytes_sent["/a.bin"] - sent_before >= 2 * len(content)
    assert (None in upstream.ranges_for("/a.bin"))


# -- point 2: Retry-After --


def test_retry_after_is_honoured_within_the_preflight_deadline(
        client: FlaskClient, upstream: UpstreamServer, tmp_path: Path, zip_readers: Any) -> None:
    """A rate limiter answering 503 + Retry-After: 3 to every request for 3 s (was: 4 tries in 2.3 s, 502)."""
    content = _data(5000, 8)
    upstream.add("/a.bin", content)
    upstream.set_behaviour("/a.bin", status=503, fail_times=1, retry_after=3, retry_after_enforced=True)
    started = time.monotonic()
    response = client.post("/bundle", json={"files": [{"src": upstream.url("/a.bin")}]})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert time.monotonic() - started >= 2.9
    _check(tmp_path, response.data, {"a.bin": content}, zip_readers)
    assert len(upstream.requests_for("/a.bin")) == 2  # no retry fired into the enforced window


def test_a_retry_after_beyond_the_preflight_deadline_fails_at_once(
        make_client: Callable[..., FlaskClient], upstream: UpstreamServer) -> None:
    client = make_client(PREFLIGHT_TIMEOUT="4")
    upstream.add("/a.bin", b"a")
    upstream.set_behaviour("/a.bin", status=429, retry_after=60)
    started = time.monotonic()
    response = client.post("/bundle", json={"files": [{"src": upstream.url("/a.bin")}]})
    assert time.monotonic() - started < 2
    assert response.status_code == 502
    reason = response.get_json()["error"]["sources"][0]["reason"]
    assert "HTTP 429" in reason and "Retry-After: 60" in reason
    assert len(upstream.requests_for("/a.bin")) == 1


def test_retry_after_is_honoured_while_streaming(
        make_client: Callable[..., FlaskClient], upstream: UpstreamServer, tmp_path: Path,
        zip_readers: Any) -> None:
    client = make_client(HTTP_TIMEOUT="5", PREFETCH="0", PREFLIGHT_FETCH_BYTES="0")
    first, second = _data(20 * KB, 9), _data(20 * KB, 10)
    upstream.add("/first.bin", first)
    upstream.add("/second.bin", second)
    bundle_id = _create(client, [{"src": upstream.url("/first.bin")}, {"src": upstream.url("/second.bin")}])
    response = client.get(f"/{bundle_id}", buffered=False)
    assert response.status_code == 200
    chunks = iter(response.response)
    data = next(chunks)  # pre-flight done (one byte of each source); the second member is opened later
    before = len(upstream.requests_for("/second.bin", "GET"))
    upstream.set_behaviour("/second.bin", status=503, fail_times=1, retry_after=3, retry_after_enforced=True)
    data += b"".join(chunks)
    _check(tmp_path, data, {"first.bin": first, "second.bin": second}, zip_readers)
    assert len(upstream.requests_for("/second.bin", "GET")) - before == 2  # the 503, then the retry


# -- point 7: encoded bodies --


@pytest.mark.parametrize("encoding", [{"gzip": True, "no_range": True}, {"gzip": True}, {"deflate": True}])
def test_an_encoded_source_is_decoded_and_streamed_without_a_length(
        client: FlaskClient, upstream: UpstreamServer, tmp_path: Path, zip_readers: Any,
        encoding: dict[str, bool]) -> None:
    """A CDN that gzips text although identity was asked for: the zip holds the decoded file, and as
    for any source of unknown size it streams without Content-Length, ranges or ETag."""
    text = b"hello, world\n" * 20000 + os.urandom(3000)
    upstream.add("/a.txt", text)
    upstream.add("/b.bin", _data(2000, 11))
    upstream.set_behaviour("/a.txt", **encoding)
    files = [{"src": upstream.url("/a.txt")}, {"src": upstream.url("/b.bin")}]
    one_off = client.post("/bundle", json={"files": files})
    assert one_off.status_code == 200, one_off.get_data(as_text=True)
    _check(tmp_path, one_off.data, {"a.txt": text, "b.bin": _data(2000, 11)}, zip_readers, "one-off.zip")
    bundle_id = _create(client, files)
    head, whole = client.head(f"/{bundle_id}"), client.get(f"/{bundle_id}")
    assert whole.status_code == 200
    assert "Content-Length" not in whole.headers
    for response in (head, whole):
        assert "ETag" not in response.headers and response.headers.get("Accept-Ranges") != "bytes"
    _check(tmp_path, whole.data, {"a.txt": text, "b.bin": _data(2000, 11)}, zip_readers)
    ranged = client.get(f"/{bundle_id}", headers={"Range": "bytes=100-"})
    assert ranged.status_code == 200 and ranged.data == whole.data  # no ranges: the whole zip


def test_max_bundle_bytes_counts_the_decoded_bytes(
        make_client: Callable[..., FlaskClient], upstream: UpstreamServer) -> None:
    client = make_client(MAX_BUNDLE_BYTES="100000")
    upstream.add("/a.txt", b"\0" * 2_000_000)  # 2 MB decoded, a few KB on the wire
    upstream.set_behaviour("/a.txt", gzip=True, no_range=True)
    response = client.post("/bundle", json={"files": [{"src": upstream.url("/a.txt")}]}, buffered=False)
    assert response.status_code == 200
    received: list[int] = []

    def read() -> None:
        for chunk in response.response:
            received.append(len(chunk))

    with pytest.raises(StreamAborted, match="MAX_BUNDLE_BYTES"):
        read()
    assert sum(received) < 200_000


# -- the same under the real server (gunicorn, gevent worker) --


def test_browser_habits_end_to_end_under_gunicorn(serve: Callable[..., Any], upstream: UpstreamServer,
                                                  tmp_path: Path, zip_readers: Any) -> None:
    """One bundle with every habit at once, fetched whole and resumed through the real service: an
    expiring signed redirect, a member asked for after a slow one, ranged requests failing, a 206 that
    starts early, a raw UTF-8 Location, a rate limiter's Retry-After."""
    import requests

    live = serve(HTTP_TIMEOUT="5", PREFETCH="0", PREFLIGHT_FETCH_BYTES="0")
    slow, signed, broken, early, named = (_data(150 * KB, seed) for seed in range(20, 25))
    upstream.add("/slow.bin", slow)
    upstream.set_behaviour("/slow.bin", stall_after=1000, stall_seconds=1.5)
    upstream.add("/signed.bin", signed)
    upstream.set_behaviour("/asset", redirect_to="/signed.bin", redirect_expires=1.0)
    upstream.add("/broken.bin", broken)
    upstream.set_behaviour("/broken.bin", range_status=500)
    upstream.add("/early.bin", early)
    upstream.set_behaviour("/early.bin", range_early=777)
    upstream.add("/für.bin", named)
    upstream.set_behaviour("/dl", redirect_to="/für.bin", redirect_utf8=True)
    files = [{"src": upstream.url(path)} for path in ("/slow.bin", "/asset", "/broken.bin", "/early.bin", "/dl")]
    created = requests.post(live.url("/"), json={"files": files}, timeout=10)
    assert created.status_code == 201, created.text
    url = live.url(f"/{created.json()['id']}")
    upstream.set_behaviour("/early.bin", status=503, fail_times=1, retry_after=2, retry_after_enforced=True)
    whole = requests.get(url, timeout=60)
    assert whole.status_code == 200, whole.text
    assert len(whole.content) == int(whole.headers["Content-Length"])
    expected = {"slow.bin": slow, "asset": signed, "broken.bin": broken, "early.bin": early, "dl": named}
    _check(tmp_path, whole.content, expected, zip_readers)
    for offset in (1000, 200 * KB, 400 * KB, len(whole.content) - 100 * KB):
        part = requests.get(url, headers={"Range": f"bytes={offset}-", "If-Range": whole.headers["ETag"]},
                            timeout=60)
        assert part.status_code == 206, part.text
        assert part.content == whole.content[offset:]


# -- the helpers on their own --


@pytest.mark.parametrize(("base", "location", "expected"), [
    ("http://h/a/dl", "/f\u00c3\u00bcr.txt", "http://h/f%C3%BCr.txt"),  # raw UTF-8 as http.client reads it
    ("http://h/a/dl", "/f\u00fcr.txt", "http://h/f%C3%BCr.txt"),  # raw Latin-1 0xFC
    ("http://h/a/dl", "/f%C3%BCr.txt", "http://h/f%C3%BCr.txt"),  # encoded once, not twice
    ("http://h/a/dl", "../b c.txt", "http://h/b%20c.txt"),
    ("https://h/a/dl", "//m.example/x?y=1#frag", "https://m.example/x?y=1"),
])
def test_redirect_target(base: str, location: str, expected: str) -> None:
    from zipstream.sources.http_transport import redirect_target

    assert redirect_target(base, location) == expected


@pytest.mark.parametrize("wbits", [15, -15, 31])  # zlib-wrapped and raw "deflate", gzip
def test_decoded_reads_every_deflate_flavour_in_bounded_pieces(wbits: int) -> None:
    import zlib

    from zipstream.chunks import CHUNK_SIZE
    from zipstream.sources.http import _decoded

    data = b"\0" * (5 * CHUNK_SIZE) + os.urandom(1000)
    compressor = zlib.compressobj(wbits=wbits)
    body = compressor.compress(data) + compressor.flush()
    pieces = list(_decoded("src", iter([body[:100], body[100:]]), "gzip" if wbits == 31 else "deflate"))
    assert b"".join(pieces) == data
    assert max(len(piece) for piece in pieces) <= CHUNK_SIZE


def test_retry_after_as_an_http_date(upstream: UpstreamServer) -> None:
    import email.utils

    import requests

    from zipstream.sources.http_transport import retry_after

    upstream.set_behaviour("/a", status=503)
    response = requests.get(upstream.url("/a"), timeout=5)
    response.headers["Retry-After"] = email.utils.formatdate(time.time() + 30, usegmt=True)
    wait = retry_after(response)
    assert wait is not None and 28 <= wait <= 30
    response.headers["Retry-After"] = "soon"
    assert retry_after(response) is None
