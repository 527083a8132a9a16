"""zipstream.response: a download's headers, conditional requests and ranges, and what it does
before and after its first byte, through the app and through gunicorn.

Errors stay JSON until the first byte, resumes included (issue 13, point 5): a resume inside a member
starts with that member's bytes, so the first upstream read happens before anything is sent, and its
failure must be the JSON 502 naming the src, never gunicorn's HTML 500 page. After the first byte, a
failure cuts the connection. The resume-without-If-Range rule, with real download clients:
tests/test_resume_guard.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import zipfile
from collections.abc import Callable

import requests
import urllib3
from flask.testing import FlaskClient

from .support.live import LiveServer
from .support.upstream import UpstreamServer

Serve = Callable[..., LiveServer]


def _create(target: FlaskClient | LiveServer, files: list[dict[str, object]], **extra: object) -> dict[str, str]:
    """A stored bundle (through the test client or a live server): its JSON."""
    if isinstance(target, LiveServer):
        response = requests.post(target.url("/"), json={"files": files, **extra}, timeout=30)
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]
    created = target.post("/", json={"files": files, **extra})
    assert created.status_code == 201, created.data
    return created.json  # type: ignore[no-any-return]


def _zip(data: bytes) -> zipfile.ZipFile:
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    return archive


# -- headers, HEAD, conditionals, ranges ----------------------------------------------------------


def test_head_gives_download_headers_without_reading_whole_bodies(serve: Serve, upstream: UpstreamServer) -> None:
    upstream.add("/a.bin", b"a" * 100_000)
    server = serve()
    bundle = _create(server, [{"src": upstream.url("/a.bin")}])
    upstream.clear_log()
    head = requests.head(server.url(f"/{bundle['id']}"), timeout=30)
    assert head.status_code == 200
    get = requests.get(server.url(f"/{bundle['id']}"), timeout=30)
    for header in ("Content-Length", "ETag", "Last-Modified", "Accept-Ranges", "Content-Disposition"):
        assert head.headers[header] == get.headers[header]
    assert head.headers["Accept-Ranges"] == "bytes"
    assert int(head.headers["Content-Length"]) == len(get.content)
    # HEAD of the zip: pre-flight's ranged GET of one byte (read like a GET's, so the same zip).
    # GET: a ranged GET of the first 64 KiB, held for the stream, then the rest of the file.
    assert [(r.method, r.range) for r in upstream.requests_for("/a.bin")] == [
        ("GET", "bytes=0-0"), ("GET", "bytes=0-65535"), ("GET", "bytes=65536-")]


def test_ranges_conditionals_and_etag_changes(serve: Serve, upstream: UpstreamServer) -> None:
    upstream.add("/a.bin", os.urandom(200_000))
    upstream.add("/b.bin", os.urandom(50_000))
    server = serve()
    bundle = _create(server, [{"src": upstream.url("/a.bin")}, {"src": upstream.url("/b.bin")}])
    url = server.url(f"/{bundle['id']}")
    full = requests.get(url, timeout=30)
    etag, length = full.headers["ETag"], len(full.content)
    rng = random.Random(1)
    for _ in range(25):
        start = rng.randrange(length)
        stop = rng.randrange(start, length)
        part = requests.get(url, headers={"Range": f"bytes={start}-{stop}"}, timeout=30)
        assert part.status_code == 206
        assert part.headers["Content-Range"] == f"bytes {start}-{stop}/{length}"
        assert part.content == full.content[start : stop + 1]
    suffix = requests.get(url, headers={"Range": "bytes=-100"}, timeout=30)
    assert suffix.content == full.content[-100:]
    assert requests.get(url, headers={"Range": f"bytes={length}-"}, timeout=30).status_code == 416
    assert requests.get(url, headers={"Range": "bytes=0-1,5-6"}, timeout=30).status_code == 200
    assert requests.get(url, headers={"If-None-Match": etag}, timeout=30).status_code == 304
    assert requests.get(url, headers={"Range": "bytes=10-", "If-Range": etag}, timeout=30).status_code == 206
    assert requests.get(url, headers={"Range": "bytes=10-", "If-Range": '"stale"'}, timeout=30).status_code == 200
    # Changing anything the bytes depend on changes the ETag: an appended file, a changed source.
    requests.put(server.url(f"/{bundle['id']}/{bundle['secret']}"),
                 json={"files": [{"src": upstream.url("/b.bin")}]}, timeout=30).raise_for_status()
    appended = requests.head(url, timeout=30).headers["ETag"]
    assert appended != etag
    upstream.add("/b.bin", os.urandom(50_000))
    assert requests.head(url, timeout=30).headers["ETag"] not in (etag, appended)


def test_head_of_unknown_length_has_no_content_length(client: FlaskClient, upstream: UpstreamServer) -> None:
    upstream.add("/a.txt", b"a" * 1000)
    bundle = _create(client, [{"src": upstream.url("/a.txt")}], compression="deflate")
    head = client.head(f"/{bundle['id']}")
    assert head.status_code == 200
    assert "Content-Length" not in head.headers
    get = client.get(f"/{bundle['id']}")
    assert "Content-Length" not in get.headers
    assert zipfile.ZipFile(io.BytesIO(get.data)).read("a.txt") == b"a" * 1000


def test_if_range_with_a_date_never_splices(client: FlaskClient, upstream: UpstreamServer) -> None:
    """Appending an older file keeps Last-Modified, so only the ETag may authorise a range."""
    upstream.add("/new.txt", b"n" * 5000, last_modified=1_700_000_000)
    upstream.add("/old.txt", b"o" * 5000, last_modified=1_500_000_000)
    bundle = _create(client, [{"src": upstream.url("/new.txt")}])
    first = client.get(f"/{bundle['id']}")
    date = first.headers["Last-Modified"]
    client.put(f"/{bundle['id']}/{bundle['secret']}", json={"files": [{"src": upstream.url("/old.txt")}]})
    again = client.get(f"/{bundle['id']}", headers={"Range": "bytes=100-", "If-Range": date})
    assert again.headers["Last-Modified"] == date  # unchanged, although the zip changed
    assert again.status_code == 200
    assert zipfile.ZipFile(io.BytesIO(again.data)).testzip() is None
    etag = again.headers["ETag"]
    assert client.get(f"/{bundle['id']}", headers={"Range": "bytes=100-", "If-Range": etag}).status_code == 206


def test_source_without_size_streams_without_length_or_ranges(client: FlaskClient, upstream: UpstreamServer) -> None:
    upstream.add("/unsized.bin", b"u" * 100_000)
    upstream.add("/sized.bin", b"s" * 1000)
    upstream.set_behaviour("/unsized.bin", no_length=True, no_head=True, no_range=True)
    bundle = _create(client, [{"src": upstream.url("/sized.bin")}, {"src": upstream.url("/unsized.bin")}])
    response = client.get(f"/{bundle['id']}", headers={"Range": "bytes=10-"})
    assert response.status_code == 200  # no ranges without a known length
    assert "Content-Length" not in response.headers
    assert response.headers["Accept-Ranges"] == "none"
    assert "ETag" not in response.headers
    archive = _zip(response.data)
    assert archive.read("unsized.bin") == b"u" * 100_000


# -- before and after the first byte ---------------------------------------------------------


def _bundle(server: LiveServer, upstream: UpstreamServer) -> tuple[str, str, int]:
    """A one-member bundle downloaded once in full (so resumes of it are vouched): url, ETag, length."""
    upstream.add("/a.bin", os.urandom(300_000))
    created = requests.post(server.url("/"), json={"files": [{"src": upstream.url("/a.bin")}]}, timeout=30)
    assert created.status_code == 201, created.text
    url = server.url(f"/{created.json()['id']}")
    whole = requests.get(url, timeout=30)
    assert whole.status_code == 200
    return url, whole.headers["ETag"], len(whole.content)


def test_a_resume_whose_first_read_fails_is_a_json_502_naming_the_src(serve: Serve,
                                                                     upstream: UpstreamServer) -> None:
    server = serve()
    url, etag, _ = _bundle(server, upstream)
    upstream.set_behaviour("/a.bin", read_status=501)  # HEAD (pre-flight) answers; reading fails
    for headers in ({"Range": "bytes=150000-", "If-Range": etag}, {"Range": "bytes=150000-"},
                    {"Range": "bytes=100-199"}):
        response = requests.get(url, headers=headers, timeout=30)
        assert response.status_code == 502, (headers, response.status_code, response.text[:300])
        assert response.headers["Content-Type"] == "application/json"
        error = response.json()["error"]
        assert error["code"] == "upstream_error"
        assert error["sources"][0]["src"] == upstream.url("/a.bin")
    assert "Traceback" not in server.log_text()


def test_after_the_first_byte_a_failure_still_cuts_the_connection(serve: Serve, upstream: UpstreamServer) -> None:
    """A resume that starts at the member's local header sends that header first: the read failing
    after it cannot become an error page, so the response is cut short of its Content-Length."""
    server = serve()
    url, etag, length = _bundle(server, upstream)
    upstream.set_behaviour("/a.bin", read_status=501)
    with requests.get(url, headers={"Range": "bytes=1-", "If-Range": etag}, stream=True, timeout=30) as response:
        assert response.status_code == 206
        received = b""
        with contextlib.suppress(urllib3.exceptions.HTTPError):  # "connection broken": the expected cut
            for chunk in response.raw.stream(65536, decode_content=False):
                received += chunk
    assert 0 < len(received) < length - 1
