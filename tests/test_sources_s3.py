"""The S3 source against hostile srcs and careless stores (issue 14): moto over HTTP, with a fault proxy
(tests/support/faultproxy.py) in front of it playing the S3-compatible store that resolves `..` in
paths, ignores conditional requests, or answers as AWS does for customer-key (SSE-C) objects."""

from __future__ import annotations

import http.client
import io
import os
import threading
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from flask import Flask

from zipstream import create_app
from zipstream.config import Config
from zipstream.deadline import Deadline
from zipstream.download import prepare
from zipstream.errors import (
    ClientGone,
    LimitExceeded,
    SourceChanged,
    SourceError,
    SourceNotFound,
    SourceRefused,
    SourcesFailed,
    StreamAborted,
)
from zipstream.models import Bundle, FileRef
from zipstream.repositories import get_repository
from zipstream.sources import HoldScope, SourceInfo, Sources, build_sources
from zipstream.sources.s3 import S3Source

from .support.faultproxy import CONDITIONAL_HEADERS, FaultProxy, Reply, Request
from .support.moto import REGION, MotoServer
from .support.waiting import wait_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SECRET = b"the other bucket's payroll"


class Buckets:
    """Three buckets on moto: the one srcs may name, another one, and one with dots in its name."""

    def __init__(self, client: S3Client) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.client = client
        self.public = f"zs-public-{suffix}"
        self.private = f"zs-private-{suffix}"
        self.dotted = f"zs.dotted.{suffix}"
        for bucket in (self.public, self.private, self.dotted):
            client.create_bucket(Bucket=bucket)

    def put(self, key: str, data: bytes, bucket: str | None = None, **extra: Any) -> None:
        self.client.put_object(Bucket=bucket or self.public, Key=key, Body=data, **extra)

    def src(self, key: str, bucket: str | None = None) -> str:
        return f"s3://{bucket or self.public}/{key}"


@pytest.fixture(scope="module")
def buckets(moto_server: MotoServer) -> Buckets:
    # No checksum on upload: a member's CRC-32 is then unknown to pre-flight, so a version swapped
    # under it can only be caught by comparing validators (not by the zip writer's CRC check).
    client = boto3.client("s3", region_name=REGION, endpoint_url=moto_server.endpoint,
                          config=BotoConfig(request_checksum_calculation="when_required"))
    found = Buckets(client)
    found.put("secret.txt", SECRET, bucket=found.private)
    found.put("hello.txt", b"hello")
    return found


@pytest.fixture
def s3_proxy(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., FaultProxy]]:
    """`s3_proxy(strip=..., resolve_dots=...)`: a FaultProxy in front of moto, made the service's S3 endpoint."""
    with ExitStack() as stack:

        def start(**options: Any) -> FaultProxy:
            proxy = stack.enter_context(FaultProxy(("127.0.0.1", moto_server.port), **options))
            monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
            return proxy

        yield start


def _app(make_config: Callable[..., Config], buckets: Buckets, **env: str) -> Flask:
    return create_app(make_config(**{"FS_INTERFACES": "s3", "AWS_REGION": REGION,
                                     "S3_BUCKETS": buckets.public, **env}))


def _stored(app: Flask, *srcs: str) -> Bundle:
    """A bundle written straight to the repository, as one stored before a validation existed."""
    bundle = Bundle.new("old.zip", tuple(FileRef(src) for src in srcs), 60)
    with app.app_context():
        get_repository().create(bundle)
    return bundle


def _fetches(proxy: FaultProxy) -> list[Request]:
    return [request for request in proxy.requests if request.method in ("GET", "HEAD")]


# -- 1. keys that a store could resolve into another bucket --------------------------------------

DOT_SEGMENT_KEYS = [
    "../{private}/secret.txt",
    "docs/../../{private}/secret.txt",
    "./secret.txt",
    "docs/./hello.txt",
    "docs/..",
    "..",
    "%2e%2e/{private}/secret.txt",  # a store or proxy that percent-decodes before resolving
    "%2E./{private}/secret.txt",
    "%252e%252e/{private}/secret.txt",  # ... or decodes twice
    "..%2f{private}%2fsecret.txt",  # the '/' itself percent-encoded
    "..\\{private}\\secret.txt",  # a store that takes '\' for '/'
    "..;/{private}/secret.txt",  # a proxy that drops ';' path parameters (Tomcat, Spring)
    "\u2025/{private}/secret.txt",  # TWO DOT LEADER, '..' under NFKC
    "\uff0e\uff0e/{private}/secret.txt",  # FULLWIDTH FULL STOPs
    ".. /{private}/secret.txt",  # trailing space, dropped by Windows-backed stores
]
LITERAL_KEYS = [".hidden", "docs/..bashrc", "v1.2/notes..txt", "a/b./c", "100%.txt", "%2e%2e.txt", "a//b"]


def test_the_resolving_store_does_lead_into_the_other_bucket(buckets: Buckets,
                                                            s3_proxy: Callable[..., FaultProxy]) -> None:
    """What the refusals below prevent: through a store that resolves dot-segments, a plain boto3 client
    asking the allowed bucket for `../<private>/secret.txt` gets the private bucket's object."""
    proxy = s3_proxy(resolve_dots=True)
    client = boto3.client("s3", region_name=REGION, endpoint_url=proxy.endpoint)
    leaked = client.get_object(Bucket=buckets.public, Key=f"../{buckets.private}/secret.txt")["Body"].read()
    assert leaked == SECRET
    assert proxy.requests[0].target == f"/{buckets.public}/../{buckets.private}/secret.txt"  # '.' sent as is


@pytest.mark.parametrize("key", DOT_SEGMENT_KEYS)
def test_dot_segment_keys_are_refused_at_creation(key: str, buckets: Buckets, s3_proxy: Callable[..., FaultProxy],
                                                  make_config: Callable[..., Config]) -> None:
    proxy = s3_proxy(resolve_dots=True)
    client = _app(make_config, buckets).test_client()
    src = buckets.src(key.format(private=buckets.private))
    for path in ("/", "/bundle"):
        response = client.post(path, json={"files": [{"src": buckets.src("hello.txt")}, {"src": src}]})
        assert response.status_code == 422, (path, response.get_data(as_text=True))
        error = response.get_json()["error"]
        assert error["code"] == "invalid"
        assert "segment" in str(error["fields"]["files"]["1"]["src"])
        assert SECRET not in response.get_data()
    with pytest.raises(SourceRefused, match="segment"):
        S3Source(Config.from_env({"FS_INTERFACES": "s3"})).check(src)
    assert proxy.requests == []


@pytest.mark.parametrize("key", LITERAL_KEYS)
def test_keys_with_dots_inside_a_segment_are_accepted(key: str, buckets: Buckets,
                                                      make_config: Callable[..., Config]) -> None:
    client = _app(make_config, buckets).test_client()
    response = client.post("/", json={"files": [{"src": buckets.src(key)}]})
    assert response.status_code == 201, response.get_data(as_text=True)


def test_a_stored_dot_segment_src_is_refused_at_download_not_fetched(
        buckets: Buckets, s3_proxy: Callable[..., FaultProxy], make_config: Callable[..., Config]) -> None:
    proxy = s3_proxy(resolve_dots=True)  # the store resolves '..': public/../private is private
    app = _app(make_config, buckets)
    src = buckets.src(f"../{buckets.private}/secret.txt")
    bundle = _stored(app, buckets.src("hello.txt"), src)
    for method in ("get", "head"):
        response = getattr(app.test_client(), method)(f"/{bundle.id}")
        assert response.status_code == 403, response.get_data()[:300]
        assert SECRET not in response.get_data()
        if method == "get":
            error = response.get_json()["error"]
            assert error["code"] == "source_refused"
            assert [item["src"] for item in error["sources"]] == [src]
            assert "segment" in error["sources"][0]["reason"]
    assert not [request for request in _fetches(proxy) if buckets.private in request.target]


def test_a_listed_key_with_dot_segments_is_refused_not_fetched(
        buckets: Buckets, s3_proxy: Callable[..., FaultProxy], make_config: Callable[..., Config]) -> None:
    # Whoever may write to the allowed bucket can plant such a key for a prefix download to follow.
    planted = f"walk/../../{buckets.private}/secret.txt"
    buckets.put(planted, b"planted")
    buckets.put("walk/fine.txt", b"fine")
    proxy = s3_proxy(resolve_dots=True)
    client = _app(make_config, buckets).test_client()
    response = client.post("/bundle", json={"files": [{"src": buckets.src("walk/")}]})
    assert response.status_code == 403, response.get_data()[:300]
    assert SECRET not in response.get_data()
    error = response.get_json()["error"]
    assert [item["src"] for item in error["sources"]] == [buckets.src(planted)]
    assert [request.method for request in _fetches(proxy)] == ["GET"]  # the listing, nothing else
    assert "list-type=2" in proxy.requests[0].target


# -- 1b. bucket names ----------------------------------------------------------------------------

# S3's naming rules for general purpose buckets:
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
INVALID_BUCKETS = [
    "a:b", "ab", "a" * 64, "My-Bucket", "under_score", "-leading", "trailing-", "trailing.", "a..b",
    "192.168.5.4", "xn--bucket", "sthree-bucket", "amzn-s3-demo-bucket", "name.mrap", "café", "a%2fb",
]
# Access point aliases ('-s3alias', '--ol-s3') and directory buckets ('--x-s3') stand where a bucket name
# does in GetObject, so they are accepted even though no bucket may be created with those suffixes.
VALID_BUCKETS = ["abc", "a" * 63, "my.bucket-1", "1-2.3", "192.168.5",
                 "my-ap-hrzrlukc5m36ft7okagglf3gmwluquse1b-s3alias", "my-olap-7g0hc3ro1blofbqcjwcd5syk2f--ol-s3",
                 "my-base--usw2-az1--x-s3"]


@pytest.mark.parametrize("bucket", INVALID_BUCKETS)
def test_invalid_bucket_names_are_refused_at_creation(bucket: str, make_config: Callable[..., Config]) -> None:
    client = create_app(make_config(FS_INTERFACES="s3", AWS_REGION=REGION)).test_client()
    response = client.post("/", json={"files": [{"src": f"s3://{bucket}/x.txt"}]})
    assert response.status_code == 422, response.get_data(as_text=True)
    assert "bucket" in str(response.get_json()["error"]["fields"]["files"]["0"]["src"])


@pytest.mark.parametrize("bucket", VALID_BUCKETS)
def test_valid_bucket_names_and_aliases_are_accepted(bucket: str, make_config: Callable[..., Config]) -> None:
    client = create_app(make_config(FS_INTERFACES="s3", AWS_REGION=REGION)).test_client()
    response = client.post("/", json={"files": [{"src": f"s3://{bucket}/x.txt"}]})
    assert response.status_code == 201, response.get_data(as_text=True)


def test_a_legacy_bucket_name_is_accepted_when_s3_buckets_lists_it(make_config: Callable[..., Config]) -> None:
    """us-east-1 buckets made before March 2018 may have upper case and '_'; the operator vouches for them."""
    src = {"files": [{"src": "s3://Legacy_Bucket/x.txt"}]}
    anywhere = create_app(make_config(FS_INTERFACES="s3", AWS_REGION=REGION)).test_client()
    assert anywhere.post("/", json=src).status_code == 422
    listed = create_app(make_config(FS_INTERFACES="s3", AWS_REGION=REGION, S3_BUCKETS="Legacy_Bucket")).test_client()
    assert listed.post("/", json=src).status_code == 201


def test_a_stored_invalid_bucket_is_refused_at_download_not_a_502(
        buckets: Buckets, s3_proxy: Callable[..., FaultProxy], make_config: Callable[..., Config]) -> None:
    proxy = s3_proxy()
    app = create_app(make_config(FS_INTERFACES="s3", AWS_REGION=REGION))
    bundle = _stored(app, "s3://a:b/x.txt")
    response = app.test_client().get(f"/{bundle.id}")
    assert response.status_code == 403, response.get_data()[:300]
    error = response.get_json()["error"]
    assert error["code"] == "source_refused" and "bucket" in error["sources"][0]["reason"]
    assert proxy.requests == []


# -- 2. a store that ignores If-Match ------------------------------------------------------------


class Overwrite:
    """A proxy hook: the first request matching `when` finds the object overwritten with `data`."""

    def __init__(self, buckets: Buckets, key: str, data: bytes, when: Callable[[Request], bool]) -> None:
        self.buckets, self.key, self.data, self.when = buckets, key, data, when
        self.done: Request | None = None

    def __call__(self, request: Request) -> Reply | None:
        if self.done is None and request.target.split("?")[0].endswith("/" + self.key) and self.when(request):
            self.buckets.put(self.key, self.data)
            self.done = request
        return None


def _is_get(request: Request) -> bool:
    return request.method == "GET"


def _is_ranged_get(request: Request) -> bool:
    return request.method == "GET" and "range" in request.headers


def _is_continuation(request: Request) -> bool:
    """The GET of a member's bytes after those pre-flight held (`Range: bytes=65536-`)."""
    return _is_ranged_get(request) and request.headers["range"] != "bytes=0-"


def test_object_swapped_before_the_get_is_refused_when_the_store_ignores_if_match(
        buckets: Buckets, s3_proxy: Callable[..., FaultProxy]) -> None:
    proxy = s3_proxy(strip=CONDITIONAL_HEADERS)
    key = f"swap/fresh-{uuid.uuid4().hex[:6]}.bin"
    old, new = os.urandom(100_000), os.urandom(100_000)  # same length: only the validators tell
    buckets.put(key, old)
    sources = build_sources(Config.from_env({"FS_INTERFACES": "s3", "AWS_REGION": REGION}))
    (info,) = sources.stat(buckets.src(key))
    proxy.hook = overwrite = Overwrite(buckets, key, new, _is_get)
    with pytest.raises(SourceChanged, match="ETag"):
        b"".join(sources.open(info))
    assert overwrite.done is not None and "if-match" in overwrite.done.headers  # sent, and ignored


def test_a_cut_member_is_not_resumed_from_a_new_version_when_the_store_ignores_if_match(
        buckets: Buckets, s3_proxy: Callable[..., FaultProxy]) -> None:
    proxy = s3_proxy(strip=CONDITIONAL_HEADERS)
    key = f"swap/cut-{uuid.uuid4().hex[:6]}.bin"
    old, new = os.urandom(2 * 1024 * 1024), os.urandom(2 * 1024 * 1024)
    buckets.put(key, old)
    sources = build_sources(Config.from_env({"FS_INTERFACES": "s3", "AWS_REGION": REGION}))
    (info,) = sources.stat(buckets.src(key))
    proxy.hook = overwrite = Overwrite(buckets, key, new, _is_ranged_get)
    proxy.cut_after(700_000)
    received = bytearray()

    def read() -> None:
        for chunk in sources.open(info):
            received.extend(chunk)

    with pytest.raises(SourceChanged):
        read()
    assert proxy.cuts == 1
    assert overwrite.done is not None and overwrite.done.headers["range"] == f"bytes={len(received)}-"
    assert "if-match" in overwrite.done.headers
    assert bytes(received) == old[: len(received)]  # nothing of the new version was used


def test_a_resumed_zip_download_is_refused_when_the_member_changed_under_an_ignored_if_match(
        buckets: Buckets, s3_proxy: Callable[..., FaultProxy], make_config: Callable[..., Config]) -> None:
    proxy = s3_proxy(strip=CONDITIONAL_HEADERS)
    key = f"swap/zip-{uuid.uuid4().hex[:6]}.bin"
    old, new = os.urandom(300_000), os.urandom(300_000)
    buckets.put(key, old)
    client = _app(make_config, buckets).test_client()
    bundle = client.post("/", json={"files": [{"src": buckets.src(key), "dst": "member.bin"}]}).get_json()
    full = client.get(f"/{bundle['id']}")
    assert full.status_code == 200
    assert zipfile.ZipFile(io.BytesIO(full.data)).read("member.bin") == old
    start = len(full.data) // 2  # inside the member's data
    # Pre-flight's HEAD still sees the old version; the member's GET finds the new one.
    proxy.hook = Overwrite(buckets, key, new, _is_get)
    part = client.get(f"/{bundle['id']}", headers={"Range": f"bytes={start}-", "If-Range": full.headers["ETag"]})
    assert part.status_code == 502, (part.status_code, part.data[:200])
    assert part.get_json()["error"]["code"] == "source_changed"


def test_a_fresh_zip_download_is_refused_when_the_member_changed_under_an_ignored_if_match(
        buckets: Buckets, s3_proxy: Callable[..., FaultProxy], make_config: Callable[..., Config]) -> None:
    proxy = s3_proxy(strip=CONDITIONAL_HEADERS)
    key = f"swap/whole-{uuid.uuid4().hex[:6]}.bin"
    buckets.put(key, os.urandom(300_000))
    client = _app(make_config, buckets).test_client()
    # Pre-flight's GET holds the first 64 KiB; the member's GET for the rest finds the new version.
    proxy.hook = overwrite = Overwrite(buckets, key, os.urandom(300_000), _is_continuation)
    # The member's local header went out before its GET answered: the stream is cut (gunicorn closes
    # the connection), never completed with the other version's bytes.
    with pytest.raises(StreamAborted, match="ETag"):
        client.post("/bundle", json={"files": [{"src": buckets.src(key)}]}).get_data()
    assert overwrite.done is not None and "if-match" in overwrite.done.headers


def test_an_answer_for_another_range_is_refused(buckets: Buckets, s3_proxy: Callable[..., FaultProxy]) -> None:
    """A store (or cache) answering a ranged GET with bytes from elsewhere in the object."""
    proxy = s3_proxy()
    key = f"swap/range-{uuid.uuid4().hex[:6]}.bin"
    data = os.urandom(10_000)
    buckets.put(key, data)
    source = S3Source(Config.from_env({"FS_INTERFACES": "s3", "AWS_REGION": REGION}))
    (info,) = source.stat(buckets.src(key))

    head = buckets.client.head_object(Bucket=buckets.public, Key=key)
    modified = format_datetime(head["LastModified"].astimezone(UTC), usegmt=True)
    validators = {"ETag": head["ETag"], "Last-Modified": modified}

    def elsewhere(request: Request) -> Reply | None:
        if request.method != "GET":
            return None
        return Reply(206, {**validators, "Content-Range": f"bytes 0-4999/{len(data)}"}, data[:5000])

    proxy.hook = elsewhere
    with pytest.raises(SourceChanged, match="Content-Range"):
        b"".join(source.open(info, 5000))


# -- 3. customer-key (SSE-C) objects -------------------------------------------------------------

SSE_C_GET = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidRequest</Code><Message>The object was '
             b"stored using a form of Server Side Encryption. The correct parameters must be provided to retrieve "
             b"the object.</Message><RequestId>X</RequestId></Error>")


def _answers_like_aws_for_sse_c(key: str) -> Callable[[Request], Reply | None]:
    """moto stores an SSE-C object but serves it without the key; AWS answers HeadObject with a bare
    `400 Bad Request` (a HEAD has no body, botocore sees code "400") and GetObject with `400
    InvalidRequest` "The object was stored using a form of Server Side Encryption..." (MinIO alike)."""

    def answer(request: Request) -> Reply | None:
        if not request.target.split("?")[0].endswith("/" + key):
            return None
        if request.method == "HEAD":
            return Reply(400, {"Content-Type": "application/xml"})
        return Reply(400, {"Content-Type": "application/xml"}, SSE_C_GET)

    return answer


def test_a_customer_key_object_is_a_422_naming_the_src(
        buckets: Buckets, s3_proxy: Callable[..., FaultProxy], make_config: Callable[..., Config]) -> None:
    key = "sse-c/locked.bin"
    buckets.put(key, b"locked", SSECustomerAlgorithm="AES256", SSECustomerKey=os.urandom(32))
    proxy = s3_proxy()
    proxy.hook = _answers_like_aws_for_sse_c(key)
    client = _app(make_config, buckets).test_client()
    response = client.post("/bundle", json={"files": [{"src": buckets.src("hello.txt")}, {"src": buckets.src(key)}]})
    assert response.status_code == 422, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert [item["src"] for item in error["sources"]] == [buckets.src(key)]
    assert "SSE-C" in error["sources"][0]["reason"]
    # From a prefix listing (no HEAD per object), the GET says the same.
    source = S3Source(Config.from_env({"FS_INTERFACES": "s3", "AWS_REGION": REGION}))
    (info,) = source.stat(buckets.src("sse-c/"))
    with pytest.raises(SourceNotFound, match="SSE-C"):
        b"".join(source.open(info))


def test_another_bad_request_is_not_mistaken_for_sse_c(buckets: Buckets, s3_proxy: Callable[..., FaultProxy]) -> None:
    proxy = s3_proxy()
    body = b"<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region is wrong</Message></Error>"
    proxy.hook = lambda request: Reply(400, {"Content-Type": "application/xml"},
                                       b"" if request.method == "HEAD" else body)
    source = S3Source(Config.from_env({"FS_INTERFACES": "s3", "AWS_REGION": REGION}))
    with pytest.raises(SourceError, match="AuthorizationHeaderMalformed") as failed:
        source.stat(buckets.src("hello.txt"))
    assert failed.value.status == 502 and "SSE-C" not in failed.value.reason


# -- 4. folder markers ---------------------------------------------------------------------------


def test_folder_markers_with_content_are_bundled_empty_ones_skipped(
        buckets: Buckets, s3_proxy: Callable[..., FaultProxy], make_config: Callable[..., Config]) -> None:
    s3_proxy()
    for key, data in (("markers/", b"top marker"), ("markers/a.txt", b"a"), ("markers/empty/", b""),
                      ("markers/sub/", b"sub marker"), ("markers/sub/file.txt", b"file")):
        buckets.put(key, data)
    source = S3Source(Config.from_env({"FS_INTERFACES": "s3", "AWS_REGION": REGION}))
    infos = source.stat(buckets.src("markers/"))
    assert [(info.name, info.location[1]) for info in infos] == [
        ("a.txt", "markers/a.txt"), ("sub/file.txt", "markers/sub/file.txt"),
        ("markers", "markers/"), ("sub", "markers/sub/")]
    client = _app(make_config, buckets).test_client()
    response = client.post("/bundle", json={"files": [{"src": buckets.src("markers/")}]})
    assert response.status_code == 200, response.get_data()[:300]
    archive = zipfile.ZipFile(io.BytesIO(response.data))
    assert {name: archive.read(name) for name in archive.namelist()} == {
        "a.txt": b"a", "sub/file.txt": b"file", "markers": b"top marker", "sub (1)": b"sub marker"}


# -- 5. S3_PATH_STYLE ----------------------------------------------------------------------------


@pytest.fixture
def forward_proxy(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """A FaultProxy as every client's HTTP_PROXY: botocore sends it `GET http://bucket.localhost:port/key`
    and never resolves `bucket.localhost` itself (no DNS query can leave the machine); it goes to moto."""
    with FaultProxy(("127.0.0.1", moto_server.port)) as proxy:
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, proxy.endpoint)
        yield proxy


# Each case its own S3_TIMEOUT, so its own client (aws.py keeps one per settings), built under this HTTP_PROXY.
@pytest.mark.parametrize(("setting", "virtual", "timeout"), [("false", True, "7.1"), ("true", False, "7.2"),
                                                             ("", False, "7.3")])
def test_s3_path_style_chooses_the_addressing(setting: str, virtual: bool, timeout: str, buckets: Buckets,
                                              forward_proxy: FaultProxy, moto_server: MotoServer,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """false: virtual-hosted even with a custom endpoint; true: path; unset: botocore's choice (path
    for a custom endpoint)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://localhost:{moto_server.port}")
    source = S3Source(Config.from_env({"FS_INTERFACES": "s3", "AWS_REGION": REGION, "S3_PATH_STYLE": setting,
                                       "S3_TIMEOUT": timeout}))
    (info,) = source.stat(buckets.src("hello.txt"))
    assert b"".join(source.open(info)) == b"hello"
    seen = [(request.host, request.target) for request in _fetches(forward_proxy)]
    if virtual:
        expected = [(f"{buckets.public}.localhost:{moto_server.port}", "/hello.txt")] * 2
    else:
        expected = [(f"localhost:{moto_server.port}", f"/{buckets.public}/hello.txt")] * 2
    assert seen == expected


def test_virtual_hosting_is_not_attempted_on_an_ip_endpoint(buckets: Buckets, forward_proxy: FaultProxy,
                                                            moto_server: MotoServer,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An IP literal can't carry a bucket label: botocore would ask for `zs.dotted.x.127.0.0.1`."""
    buckets.put("hello.txt", b"dotted", bucket=buckets.dotted)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{moto_server.port}")
    source = S3Source(Config.from_env({"FS_INTERFACES": "s3", "AWS_REGION": REGION, "S3_PATH_STYLE": "false",
                                       "S3_TIMEOUT": "8"}))
    (info,) = source.stat(buckets.src("hello.txt", bucket=buckets.dotted))
    assert b"".join(source.open(info)) == b"dotted"
    assert {(request.host, request.target) for request in _fetches(forward_proxy)} == {
        (f"127.0.0.1:{moto_server.port}", f"/{buckets.dotted}/hello.txt")}


# -- 6. one request per small object (issue 16) --------------------------------------------------
# A whole-zip GET's pre-flight asks GetObject for the bytes from 0 and keeps the first 64 KiB
# (sources/held.py): a small object is then read once, a bigger one continues from there with IfMatch.

FETCH = 64 * 1024


def _sources(**env: str) -> Sources:
    return build_sources(Config.from_env({"FS_INTERFACES": "s3", "AWS_REGION": REGION, **env}))


def _s3(sources: Sources) -> S3Source:
    source = sources.backend("s3://bucket/key")
    assert isinstance(source, S3Source)
    return source


def _held_stat(sources: Sources, src: str) -> SourceInfo:
    """`sources.stat(src)` as the pre-flight of a download that may hold runs it."""
    with HoldScope().applying():
        (info,) = sources.stat(src)
    return info


def _asked(proxy: FaultProxy, key: str | None = None) -> list[tuple[str, str]]:
    """(method, Range) of every fetch the store was sent (of `key` only, if given)."""
    return [(request.method, request.headers.get("range", "")) for request in _fetches(proxy)
            if key is None or request.target.split("?")[0].endswith("/" + key)]


def _zip(sources: Sources, files: list[FileRef], hold: bool) -> tuple[bytes, str | None]:
    config = Config.from_env({"FS_INTERFACES": "s3", "AWS_REGION": REGION})
    prepared = prepare(files, "x.zip", "stored", 0, sources, None, config, hold=hold)
    return b"".join(prepared.stream()), prepared.etag


def _put_all(buckets: Buckets, folder: str, sizes: list[int], **extra: Any) -> dict[str, bytes]:
    objects = {f"{folder}/{index}-{size}.bin": os.urandom(size) for index, size in enumerate(sizes)}
    for key, data in objects.items():
        buckets.put(key, data, **extra)
    return objects


def _changing_ranged_answers(moto_port: int, change: Callable[[Reply], Reply]) -> Callable[[Request], Reply | None]:
    """A proxy hook: every ranged GetObject is forwarded to moto, and its answer `change`d on the way back."""

    def answer(request: Request) -> Reply | None:
        if request.method != "GET" or "range" not in request.headers:
            return None
        connection = http.client.HTTPConnection("127.0.0.1", moto_port, timeout=30)
        try:
            connection.request("GET", request.target, headers={
                name: value for name, value in request.headers.items() if name not in ("connection", "keep-alive")})
            got = connection.getresponse()
            body = got.read()
            headers = {name: value for name, value in got.getheaders() if name.lower() != "connection"}
            return change(Reply(got.status, headers, body))
        finally:
            connection.close()

    return answer


def _without_range_checksums(moto_port: int) -> Callable[[Request], Reply | None]:
    """A proxy hook playing MinIO or Ceph: a ranged GetObject's answer never carries a checksum,
    even when its range is the whole object (HeadObject's does)."""
    return _changing_ranged_answers(moto_port, lambda reply: Reply(reply.status, {
        name: value for name, value in reply.headers.items() if not name.lower().startswith("x-amz-checksum")},
        reply.body))


def test_a_small_object_costs_one_request_a_bigger_one_two_and_the_zip_is_the_same(
        buckets: Buckets, s3_proxy: Callable[..., FaultProxy]) -> None:
    proxy = s3_proxy()
    folder = f"hold-{uuid.uuid4().hex[:6]}"
    sizes = [1, 1000, FETCH - 1, FETCH, FETCH + 1, 300_000]
    objects = _put_all(buckets, folder, sizes, ChecksumAlgorithm="CRC32")
    files = [FileRef(buckets.src(key)) for key in objects]
    sources = _sources()
    held, held_etag = _zip(sources, files, hold=True)
    assert _s3(sources).budget.used == 0
    assert sorted(_asked(proxy)) == sorted([("GET", "bytes=0-")] * len(sizes) + [("GET", f"bytes={FETCH}-")] * 2)
    continuations = [request for request in _fetches(proxy) if request.headers.get("range") == f"bytes={FETCH}-"]
    assert all(request.headers["if-match"] for request in continuations)
    # What HeadObject then GetObject (a HEAD or a range of the zip, or PREFLIGHT_FETCH_BYTES=0) make of it.
    proxy.requests.clear()
    not_held, not_held_etag = _zip(sources, files, hold=False)
    assert sorted(_asked(proxy)) == sorted([("HEAD", "")] * len(sizes) + [("GET", "")] * len(sizes))
    assert held == not_held and held_etag == not_held_etag
    archive = zipfile.ZipFile(io.BytesIO(held))
    for entry, (key, data) in zip(archive.infolist(), objects.items(), strict=True):
        assert archive.read(entry) == data, key
        # The stored CRC-32 came with the open-ended range as with HeadObject: no data descriptor.
        assert zlib.crc32(data) == entry.CRC and not entry.flag_bits & 0x08


def test_an_empty_object_has_no_byte_0_headobject_tells(buckets: Buckets, s3_proxy: Callable[..., FaultProxy]) -> None:
    proxy = s3_proxy()
    key = f"hold/empty-{uuid.uuid4().hex[:6]}.bin"
    buckets.put(key, b"")
    sources = _sources()
    info = _held_stat(sources, buckets.src(key))
    assert (info.size, info.head, info.etag) == (0, None, buckets.client.head_object(Bucket=buckets.public,
                                                                                      Key=key)["ETag"])
    assert b"".join(sources.open(info)) == b""
    assert _asked(proxy) == [("GET", "bytes=0-"), ("HEAD", "")]  # 416 InvalidRange, then HeadObject
    assert _s3(sources).budget.used == 0


def test_objects_without_a_checksum_ask_headobject_until_the_store_shows_it_sends_them(
        buckets: Buckets, s3_proxy: Callable[..., FaultProxy]) -> None:
    proxy = s3_proxy()
    folder = f"plain-{uuid.uuid4().hex[:6]}"
    plain = _put_all(buckets, folder, [10, 2000])  # no checksum stored (the fixture's client sends none)
    checked = _put_all(buckets, folder + "/crc", [20], ChecksumAlgorithm="CRC32")
    sources = _sources()
    first, second = (buckets.src(key) for key in plain)
    info = _held_stat(sources, first)
    # A ranged answer without a checksum: none stored, or a store that sends none with a range.
    assert info.crc32 is None and _asked(proxy) == [("GET", "bytes=0-"), ("HEAD", "")]
    assert _s3(sources).range_checksums is None
    _held_stat(sources, buckets.src(next(iter(checked))))
    assert _s3(sources).range_checksums is True  # this store sends them: no checksum means none stored
    proxy.requests.clear()
    info = _held_stat(sources, second)
    assert info.crc32 is None and info.head is not None and _asked(proxy) == [("GET", "bytes=0-")]
    assert b"".join(sources.open(info)) == plain[folder + "/1-2000.bin"]
    assert len(_asked(proxy)) == 1
    files = [FileRef(buckets.src(key)) for key in [*plain, *checked]]
    assert _zip(sources, files, hold=True) == _zip(sources, files, hold=False)


def test_a_store_that_sends_no_checksum_with_a_range_goes_back_to_headobject(
        buckets: Buckets, s3_proxy: Callable[..., FaultProxy], moto_server: MotoServer) -> None:
    proxy = s3_proxy()
    proxy.hook = _without_range_checksums(moto_server.port)
    folder = f"minio-{uuid.uuid4().hex[:6]}"
    objects = _put_all(buckets, folder, [10, 2000, 100_000], ChecksumAlgorithm="CRC32")
    sources = _sources()
    first, *others = (buckets.src(key) for key in objects)
    info = _held_stat(sources, first)
    assert info.crc32 == zlib.crc32(objects[folder + "/0-10.bin"])  # HeadObject's, as before
    assert _asked(proxy) == [("GET", "bytes=0-"), ("HEAD", "")]
    assert _s3(sources).range_checksums is False
    proxy.requests.clear()
    files = [FileRef(src) for src in [first, *others]]
    held, held_etag = _zip(sources, files, hold=True)
    assert sorted(_asked(proxy)) == sorted([("HEAD", "")] * 3 + [("GET", "")] * 3)  # as before issue 16
    assert (held, held_etag) == _zip(sources, files, hold=False)


@pytest.mark.parametrize("strip", [(), CONDITIONAL_HEADERS], ids=["if-match-honoured", "if-match-ignored"])
def test_a_bigger_object_overwritten_after_preflight_is_refused_not_spliced(
        strip: tuple[str, ...], buckets: Buckets, s3_proxy: Callable[..., FaultProxy]) -> None:
    proxy = s3_proxy(strip=strip)
    key = f"hold/swap-{uuid.uuid4().hex[:6]}.bin"
    buckets.put(key, os.urandom(200_000))
    sources = _sources()
    info = _held_stat(sources, buckets.src(key))
    assert info.head is not None and info.head.size == FETCH
    buckets.put(key, os.urandom(200_000))  # same size: only the validators tell
    received = bytearray()

    def read() -> None:
        for chunk in sources.open(info):
            received.extend(chunk)

    with pytest.raises(SourceChanged):
        read()
    assert received == b""  # the held first part goes out only once the rest is seen to be its version
    continuation = _fetches(proxy)[-1]
    assert continuation.headers["range"] == f"bytes={FETCH}-" and continuation.headers["if-match"] == info.etag
    assert _s3(sources).budget.used == 0


def test_a_small_object_overwritten_after_preflight_is_streamed_as_preflight_read_it(
        buckets: Buckets, s3_proxy: Callable[..., FaultProxy]) -> None:
    proxy = s3_proxy()
    key = f"hold/small-{uuid.uuid4().hex[:6]}.bin"
    old = os.urandom(5000)
    buckets.put(key, old)
    sources = _sources()
    info = _held_stat(sources, buckets.src(key))
    buckets.put(key, os.urandom(5000))
    assert b"".join(sources.open(info)) == old  # the bytes and the validators come from one answer
    assert _asked(proxy) == [("GET", "bytes=0-"), ("HEAD", "")]


def test_head_and_range_requests_of_the_zip_still_use_headobject(
        buckets: Buckets, s3_proxy: Callable[..., FaultProxy], make_config: Callable[..., Config]) -> None:
    proxy = s3_proxy()
    folder = f"routes-{uuid.uuid4().hex[:6]}"
    objects = _put_all(buckets, folder, [100, 3000, 100_000], ChecksumAlgorithm="CRC32")
    client = _app(make_config, buckets).test_client()
    bundle = client.post("/", json={"files": [{"src": buckets.src(key)} for key in objects]}).get_json()
    whole = client.get(f"/{bundle['id']}")
    assert whole.status_code == 200 and zipfile.ZipFile(io.BytesIO(whole.data)).testzip() is None
    assert sorted(_asked(proxy)) == [("GET", "bytes=0-")] * 3 + [("GET", f"bytes={FETCH}-")]
    proxy.requests.clear()
    head = client.head(f"/{bundle['id']}")
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(whole.data))
    assert head.headers["ETag"] == whole.headers["ETag"]
    assert _asked(proxy) == [("HEAD", "")] * 3
    proxy.requests.clear()
    tail = client.get(f"/{bundle['id']}", headers={"Range": "bytes=-100", "If-Range": whole.headers["ETag"]})
    assert tail.status_code == 206 and tail.data == whole.data[-100:]
    assert [asked for asked in _asked(proxy) if asked[0] == "HEAD"] == [("HEAD", "")] * 3
    assert ("GET", "bytes=0-") not in _asked(proxy)


def test_a_spent_budget_falls_back_to_headobject(buckets: Buckets, s3_proxy: Callable[..., FaultProxy]) -> None:
    proxy = s3_proxy()
    folder = f"budget-{uuid.uuid4().hex[:6]}"
    objects = _put_all(buckets, folder, [1000, 2000, 3000, 4000], ChecksumAlgorithm="CRC32")
    files = [FileRef(buckets.src(key)) for key in objects]
    sources = _sources(PREFLIGHT_HOLD_BYTES=str(2 * FETCH))  # one download's share: one object's 64 KiB
    held, held_etag = _zip(sources, files, hold=True)
    asked = _asked(proxy)
    assert (asked.count(("GET", "bytes=0-")), asked.count(("HEAD", "")), asked.count(("GET", ""))) == (1, 3, 3)
    assert _s3(sources).budget.used == 0
    assert (held, held_etag) == _zip(sources, files, hold=False)
    proxy.requests.clear()
    _zip(_sources(PREFLIGHT_FETCH_BYTES="0"), files, hold=True)  # holding turned off: HeadObject, as before
    assert sorted(_asked(proxy)) == sorted([("HEAD", "")] * 4 + [("GET", "")] * 4)


def test_failed_or_abandoned_downloads_give_the_held_bytes_back(buckets: Buckets,
                                                                s3_proxy: Callable[..., FaultProxy]) -> None:
    s3_proxy()
    folder = f"giveback-{uuid.uuid4().hex[:6]}"
    objects = _put_all(buckets, folder, [30_000] * 5 + [200_000], ChecksumAlgorithm="CRC32")
    files = [FileRef(buckets.src(key)) for key in objects]
    config = Config.from_env({"FS_INTERFACES": "s3", "AWS_REGION": REGION})
    sources = build_sources(config)
    budget = _s3(sources).budget
    with pytest.raises(SourcesFailed):
        prepare([*files, FileRef(buckets.src(folder + "/missing.bin"))], "x.zip", "stored", 0, sources, None,
                config, hold=True)
    assert budget.used == 0
    prepared = prepare(files, "x.zip", "stored", 0, sources, None, config, hold=True)
    assert budget.used == 5 * 30_000 + FETCH
    stream = prepared.stream()
    next(stream)
    stream.close()  # the client went away after the first chunk
    assert budget.used == 0
    prepared = prepare(files, "x.zip", "stored", 0, sources, None, config, hold=True)
    del prepared  # a prepared zip never streamed (HEAD, 304)
    assert budget.used == 0
    with pytest.raises(LimitExceeded):  # refused after pre-flight
        prepare(files, "x.zip", "stored", 0, sources, None, config.replace(max_bundle_bytes=1000), hold=True)
    assert budget.used == 0


def test_a_store_that_ignores_range_holds_only_whole_objects(buckets: Buckets,
                                                             s3_proxy: Callable[..., FaultProxy]) -> None:
    proxy = s3_proxy(strip=("Range",))  # every answer is the whole object (200), as from a store without ranges
    small, big = os.urandom(5000), os.urandom(200_000)
    folder = f"norange-{uuid.uuid4().hex[:6]}"
    buckets.put(folder + "/small.bin", small)
    buckets.put(folder + "/big.bin", big)
    sources = _sources()
    info = _held_stat(sources, buckets.src(folder + "/small.bin"))
    assert info.head is not None and b"".join(sources.open(info)) == small
    info = _held_stat(sources, buckets.src(folder + "/big.bin"))
    assert info.head is None  # its rest could not be asked for: read whole while streaming
    assert b"".join(sources.open(info)) == big
    assert _s3(sources).budget.used == 0
    assert [asked for asked in _asked(proxy) if asked[0] == "GET"] == [("GET", "bytes=0-")] * 2 + [("GET", "")]


def test_an_archived_object_is_refused_before_the_zip_starts_on_every_route(
        buckets: Buckets, s3_proxy: Callable[..., FaultProxy], make_config: Callable[..., Config]) -> None:
    s3_proxy()
    key = f"archive/{uuid.uuid4().hex[:6]}.bin"
    buckets.put(key, b"frozen", StorageClass="GLACIER")
    client = _app(make_config, buckets).test_client()
    files = [{"src": buckets.src("hello.txt")}, {"src": buckets.src(key)}]
    response = client.post("/bundle", json={"files": files})  # pre-flight by GetObject: 403 InvalidObjectState
    assert response.status_code == 422, response.get_data()[:300]
    assert [(item["src"], item["reason"]) for item in response.get_json()["error"]["sources"]] == [
        (buckets.src(key), "archived (GLACIER storage class): restore it before it can be bundled")]
    bundle = client.post("/", json={"files": files}).get_json()
    assert client.head(f"/{bundle['id']}").status_code == 422  # pre-flight by HeadObject: the same answer
    buckets.client.restore_object(Bucket=buckets.public, Key=key, RestoreRequest={"Days": 1})
    assert client.head(f"/{bundle['id']}").status_code == 200
    whole = client.get(f"/{bundle['id']}")
    assert whole.status_code == 200 and zipfile.ZipFile(io.BytesIO(whole.data)).read(key) == b"frozen"


def test_held_bytes_that_differ_from_the_stored_crc_are_refused_before_the_zip_starts(
        buckets: Buckets, s3_proxy: Callable[..., FaultProxy], moto_server: MotoServer) -> None:
    proxy = s3_proxy()
    key = f"hold/corrupt-{uuid.uuid4().hex[:6]}.bin"
    buckets.put(key, os.urandom(3000), ChecksumAlgorithm="CRC32")
    flipped = _changing_ranged_answers(moto_server.port, lambda reply: Reply(
        reply.status, reply.headers, bytes([reply.body[0] ^ 1]) + reply.body[1:]))
    proxy.hook = flipped
    sources = _sources()
    with pytest.raises(SourceError, match="CRC-32 differs"):
        _held_stat(sources, buckets.src(key))
    assert _s3(sources).budget.used == 0


def test_aws_itself_is_taken_to_send_checksums_with_a_whole_object_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS answers `Range: bytes=0-` with the stored checksum (as moto does): no HeadObject to ask whether
    an object without one really has none. A custom endpoint has to show it first."""
    source = S3Source(Config.from_env({"FS_INTERFACES": "s3", "AWS_REGION": REGION}))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    assert source.range_checksums is None
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    assert source.range_checksums is True


def test_a_client_gone_during_preflight_gives_the_held_bytes_back(buckets: Buckets,
                                                                  s3_proxy: Callable[..., FaultProxy]) -> None:
    proxy = s3_proxy()
    folder = f"gone-{uuid.uuid4().hex[:6]}"
    objects = _put_all(buckets, folder, [3000] * 4, ChecksumAlgorithm="CRC32")
    slow = buckets.src(next(iter(objects)))
    answered = threading.Event()

    def stall(request: Request) -> Reply | None:
        if request.target.split("?")[0].endswith("/" + next(iter(objects))):
            answered.wait(10)  # this one answers only after the client has gone
        return None

    proxy.hook = stall
    config = Config.from_env({"FS_INTERFACES": "s3", "AWS_REGION": REGION})
    sources = build_sources(config)
    deadline = Deadline(30)

    def hang_up() -> None:  # once the other three are held, the stalled one's 64 KiB reserved
        wait_for(lambda: _s3(sources).budget.used == FETCH + 3 * 3000, "three held")
        deadline.cancel()

    threading.Thread(target=hang_up, daemon=True).start()
    with pytest.raises(ClientGone):
        prepare([FileRef(buckets.src(key)) for key in objects], "x.zip", "stored", 0, sources, None, config,
                hold=True, deadline=deadline)
    # The three that answered were held and given back at once; the stalled one's reservation stands
    # until its answer comes, and is given back then.
    assert _s3(sources).budget.used == FETCH, slow
    answered.set()
    wait_for(lambda: len(_fetches(proxy)) == 4 and _s3(sources).budget.used == 0, "the budget given back")
