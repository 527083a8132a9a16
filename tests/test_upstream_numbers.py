"""Numbers and dates in upstream answers (HTTP and S3) are read strictly: a bad one is a 502 naming the
src or a field ignored, as RFC 9110/9112 say for each, never a 500."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
from flask.testing import FlaskClient
from hypothesis import example, given
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from zipstream import create_app
from zipstream.config import Config
from zipstream.errors import SourceChanged
from zipstream.numbers import MAX_BYTES, NotANumber
from zipstream.sources.http import _content_range
from zipstream.sources.http_transport import content_length
from zipstream.sources.s3 import S3Source

from .support.moto import REGION
from .support.readers import CheckZip
from .support.upstream import UpstreamServer

BIG = 200_000  # more than pre-flight's first bytes (64 KiB): the stream asks upstream again


@pytest.fixture
def client(make_config: Callable[..., Config]) -> FlaskClient:
    return create_app(make_config(HTTP_TIMEOUT="5")).test_client()


def _zip(client: FlaskClient, upstream: UpstreamServer, *paths: str) -> Any:
    return client.post("/bundle", json={"files": [{"src": upstream.url(path)} for path in paths]})


def _check(tmp_path: Path, data: bytes, expected: dict[str, bytes], zip_readers: CheckZip) -> None:
    path = tmp_path / "got.zip"
    path.write_bytes(data)
    zip_readers(path, expected)


# -- Content-Length: RFC 9112 §6.3: an invalid one is an unrecoverable error (502), never a 500 --

# ("5, 6" is refused by urllib3 itself, InvalidHeader -> 502, leaving its socket to the collector.)
@pytest.mark.parametrize("value", ["1²", "²", "+5", "1_0", "0x10", "-1", "", ",", "5, x", "9" * 30])
@pytest.mark.parametrize("ranges", [True, False])
def test_an_invalid_content_length_is_a_502_naming_the_src(client: FlaskClient, upstream: UpstreamServer,
                                                           value: str, ranges: bool) -> None:
    """Refused at pre-flight, whether it came with the 206 of the first bytes or with a 200 of all."""
    upstream.add("/a.bin", os.urandom(BIG))
    upstream.set_behaviour("/a.bin", header_values=(("Content-Length", value),), no_range=not ranges)
    response = _zip(client, upstream, "/a.bin")
    assert response.status_code == 502, response.get_data(as_text=True)[:500]
    error = response.get_json()["error"]
    assert [source["src"] for source in error["sources"]] == [upstream.url("/a.bin")]
    assert "invalid Content-Length" in error["sources"][0]["reason"]


def test_a_list_of_equal_lengths_is_that_length(client: FlaskClient, upstream: UpstreamServer, tmp_path: Path,
                                                zip_readers: CheckZip) -> None:
    data = os.urandom(BIG)
    upstream.add("/a.bin", data)
    upstream.set_behaviour("/a.bin", header_values=(("Content-Length", f"{BIG}, {BIG},"),), no_range=True)
    response = _zip(client, upstream, "/a.bin")
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(response.data))  # the size was learned
    _check(tmp_path, response.data, {"a.bin": data}, zip_readers)


# -- Content-Range: malformed -> no size learned from it (a HEAD tells), never a 500 --

@pytest.mark.parametrize("value", ["bytes 0-0/1²", "bytes 0-²/9", "bytes ¹-0/9", "bytes 0-0/+9", "bytes 0-0/9_9"])
def test_a_malformed_content_range_teaches_nothing(client: FlaskClient, upstream: UpstreamServer, tmp_path: Path,
                                                   zip_readers: CheckZip, value: str) -> None:
    data = os.urandom(BIG)
    upstream.add("/a.bin", data)
    upstream.set_behaviour("/a.bin", header_values=(("Content-Range", value),))
    response = _zip(client, upstream, "/a.bin")
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.headers["Content-Length"] == str(len(response.data))  # size from the HEAD
    _check(tmp_path, response.data, {"a.bin": data}, zip_readers)


# -- Retry-After: delay-seconds is 1*DIGIT (RFC 9110 §10.2.3); else an HTTP-date; else the fixed back-off --

@pytest.mark.parametrize("value", ["²", "1²", "+1", "1_0", "Sat, 01 Jan 2000 00:00:00 +9999999999999"])
def test_a_malformed_retry_after_falls_back_to_the_fixed_back_off(client: FlaskClient, upstream: UpstreamServer,
                                                                  value: str) -> None:
    upstream.add("/a.bin", b"x" * 100)
    upstream.set_behaviour("/a.bin", status=503, fail_times=1, retry_after=value)
    response = _zip(client, upstream, "/a.bin")
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert len(upstream.requests_for("/a.bin", "GET")) == 2  # the 503, then the retry


def test_a_retry_after_of_any_length_is_read(client: FlaskClient, upstream: UpstreamServer) -> None:
    upstream.add("/a.bin", b"x" * 100)
    upstream.set_behaviour("/a.bin", status=503, fail_times=1, retry_after="9" * 5000)  # int() refuses it
    response = _zip(client, upstream, "/a.bin")
    assert response.status_code == 502  # a wait longer than any deadline: no retry
    assert "no retry fitted" in response.get_json()["error"]["sources"][0]["reason"]
    assert len(upstream.requests_for("/a.bin", "GET")) == 1


# -- Last-Modified: not a date -> absent; a date without a zone is UTC (and can be sent back) --

@pytest.mark.parametrize("value", ["Sat, 01 Jan 2000 00:00:00 +9999999999999", "Fri, 31 Dec 9999 23:59:59 -2359",
                                   "Sat, 01 Jan 99999999 00:00:00 GMT"])
def test_a_last_modified_that_is_no_date_counts_as_absent(client: FlaskClient, upstream: UpstreamServer,
                                                         value: str) -> None:
    upstream.add("/a.bin", b"x" * 100)
    upstream.set_behaviour("/a.bin", header_values=(("Last-Modified", value),))
    response = _zip(client, upstream, "/a.bin")
    assert response.status_code == 200, response.get_data(as_text=True)[:500]


def test_a_date_without_a_zone_is_utc_and_a_cut_member_resumes_with_it(
        client: FlaskClient, upstream: UpstreamServer, tmp_path: Path, zip_readers: CheckZip) -> None:
    """`-0000` (RFC 5322: no zone information) parsed to a naive datetime, which If-Range could not be
    written from (format_datetime(usegmt=True) needs UTC): the continuation of a cut body failed."""
    data = os.urandom(BIG)
    upstream.add("/a.bin", data, last_modified=946684800.0)  # 2000-01-01T00:00:00Z
    upstream.set_behaviour("/a.bin", no_validators=("ETag",), reset_after=120_000,
                           header_values=(("Last-Modified", "Sat, 01 Jan 2000 00:00:00 -0000"),))
    response = _zip(client, upstream, "/a.bin")
    assert response.status_code == 200
    _check(tmp_path, response.data, {"a.bin": data}, zip_readers)
    assert upstream.ranges_for("/a.bin")[-1] == "bytes=120000-"
    resumed = upstream.requests_for("/a.bin", "GET")[-1]
    assert resumed.headers["if-range"] == "Sat, 01 Jan 2000 00:00:00 GMT"


# -- S3: botocore reads a store's numbers with int(): a bad one was a ValueError, a 500 --

class _MalformedS3(BaseHTTPRequestHandler):
    """An S3-compatible endpoint whose HEAD answers carry the headers `FIELDS` says."""

    FIELDS: ClassVar[dict[str, str]] = {}

    def do_HEAD(self) -> None:
        self.send_response(200)
        fields = {"Content-Length": "5", "ETag": '"abc"', "Last-Modified": "Sat, 01 Jan 2000 00:00:00 GMT",
                  **self.FIELDS}
        for name, value in fields.items():
            self.send_header(name, value)
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(200)
        fields = {"Content-Length": "5", "ETag": '"abc"', "Last-Modified": "Sat, 01 Jan 2000 00:00:00 GMT",
                  **self.FIELDS}
        for name, value in fields.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def malformed_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_MalformedS3]]:
    handler = type("Handler", (_MalformedS3,), {"FIELDS": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("name", "value"), [
    ("Content-Length", "1²"), ("Content-Length", "x"), ("Last-Modified", "Sat, 01 Jan 2000 00:00:00 +9999999999999"),
    ("x-amz-mp-parts-count", "²"), ("Content-Length", "-5"), ("Content-Length", "9" * 23),  # botocore: int()
])
def test_a_malformed_s3_answer_is_a_502_naming_the_src(malformed_s3: type[_MalformedS3],
                                                       make_config: Callable[..., Config], name: str,
                                                       value: str) -> None:
    malformed_s3.FIELDS = {name: value}
    client = create_app(make_config(FS_INTERFACES="s3", AWS_REGION=REGION, S3_PATH_STYLE="true",
                                    S3_TIMEOUT="2")).test_client()
    response = client.post("/bundle", json={"files": [{"src": "s3://bucket/key.bin"}]})
    assert response.status_code == 502, response.get_data(as_text=True)[:500]
    error = response.get_json()["error"]
    assert [source["src"] for source in error["sources"]] == ["s3://bucket/key.bin"]


# -- sizes no zip can hold: 413 before the first byte, never a 500 from the layout --

@pytest.mark.parametrize("compression", ["stored", "deflate"])
def test_sizes_adding_up_past_what_a_zip_holds_are_a_413(client: FlaskClient, upstream: UpstreamServer,
                                                         compression: str) -> None:
    """Two sources claiming 9 EB each: each is a valid Content-Length, their sum is past ZIP64's
    64-bit offsets (the layout raised struct.error: a 500)."""
    for path in ("/a.bin", "/b.bin"):
        upstream.add(path, b"x" * 100)
        upstream.set_behaviour(path, no_range=True, header_values=(("Content-Length", str(9 * 10**18)),))
    response = client.post("/bundle", json={"files": [{"src": upstream.url("/a.bin")}, {"src": upstream.url("/b.bin")}],
                                            "compression": compression})
    assert response.status_code == 413, response.get_data(as_text=True)[:500]
    assert response.get_json()["error"]["limit"] == "ZIP64"


# -- properties over any text --

@given(st.text())
@example("bytes 0-0/1²")
@example(f"bytes 0-{'9' * 5000}/*")
def test_content_range_is_a_consistent_triple_or_none(value: str) -> None:
    got = _content_range(value)
    if got is not None:
        first, last, total = got
        assert 0 <= first <= last <= MAX_BYTES and (total is None or last < total <= MAX_BYTES)


@given(st.text(alphabet=st.characters(codec="latin-1")))  # what http.client can hand on
@example("1²")
@example("5, 5")
def test_content_length_is_a_length_or_not_a_number(value: str) -> None:
    response = requests.Response()
    response.headers = CaseInsensitiveDict({"Content-Length": value})
    try:
        length = content_length(response)
    except NotANumber:
        return
    assert length is not None and 0 <= length <= MAX_BYTES
    digits = [part.strip(" \t") for part in value.split(",") if part.strip(" \t")]
    assert digits and all(part.isascii() and (part.lstrip("0") or "0") == str(length) for part in digits)


def test_an_s3_content_range_of_any_length_is_no_size(malformed_s3: type[_MalformedS3]) -> None:
    """GetObject's Content-Range is compared with pre-flight's size; 5,000 digits made int() raise a
    ValueError out of the source (not a SourceError)."""
    source = S3Source(Config.from_env({"FS_INTERFACES": "s3", "AWS_REGION": REGION, "S3_PATH_STYLE": "true"}))
    (info,) = source.stat("s3://bucket/key.bin")
    assert info.size == 5
    malformed_s3.FIELDS = {"Content-Range": f"bytes 0-4/{'9' * 5000}"}
    with pytest.raises(SourceChanged, match="Content-Range"):
        b"".join(source.open(info))
    malformed_s3.FIELDS = {"Content-Range": "bytes 0-4/5"}
    assert b"".join(source.open(info)) == b"hello"
