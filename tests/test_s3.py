"""The S3 source against a real endpoint (moto over HTTP); zips checked by real readers."""

from __future__ import annotations

import logging
import re
import socket
import sqlite3
import threading
import uuid
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from zipstream import create_app
from zipstream.config import Config
from zipstream.errors import ServiceUnavailable, SourceError, SourceNotFound, SourceRefused
from zipstream.models import Bundle, FileRef
from zipstream.sources import build_sources
from zipstream.sources.s3 import S3Source

from .support.dynamo import dynamodb_repository
from .support.live import LiveServer
from .support.moto import REGION, CuttingProxy, MotoServer
from .support.readers import CheckZip
from .support.s3 import MANY, UTF8_KEY, Store, expected_bundle

Serve = Callable[..., LiveServer]


@pytest.fixture
def source(store: Store) -> S3Source:
    return S3Source(Config.from_env({"FS_INTERFACES": "s3", "AWS_REGION": REGION, "S3_BUCKETS": store.bucket}))


# -- the source ---------------------------------------------------------------------------------


def test_check_takes_the_key_literally_and_enforces_the_allowlist(source: S3Source, store: Store) -> None:
    source.check(store.src("a b/+%20/é.txt"))
    source.check(store.src("photos/"))
    for bad in ("s3://", "s3://bucket-only", "s3:///key", "https://x/y"):
        with pytest.raises(SourceRefused):
            source.check(bad)
    with pytest.raises(SourceRefused, match="S3_BUCKETS"):
        source.check("s3://someone-elses-bucket/secret.txt")


def test_full_object_crc_is_used_composite_is_not(source: S3Source, store: Store) -> None:
    (single,) = source.stat(store.src("crc.bin"))
    assert single.crc32 == zlib.crc32(store.data["crc.bin"])
    (multipart,) = source.stat(store.src("big.bin"))
    assert multipart.etag is not None and multipart.etag.endswith('-2"')
    head = store.client.head_object(Bucket=store.bucket, Key="big.bin", ChecksumMode="ENABLED")
    assert head.get("ChecksumCRC32")  # moto does answer with a (composite) checksum...
    assert multipart.crc32 is None  # ...which is not the file's CRC-32
    assert multipart.size == len(store.data["big.bin"])
    assert multipart.last_modified is not None and multipart.last_modified.utcoffset() is not None


def test_utf8_key_with_spaces_plus_and_percent(source: S3Source, store: Store) -> None:
    (info,) = source.stat(store.src(UTF8_KEY))
    assert info.name == UTF8_KEY
    assert b"".join(source.open(info)) == store.data[UTF8_KEY]


def test_a_missing_bucket_is_not_found(source: S3Source, store: Store) -> None:
    anywhere = S3Source(Config.from_env({"FS_INTERFACES": "s3", "AWS_REGION": REGION}))
    with pytest.raises(SourceNotFound):
        anywhere.stat("s3://zs-no-such-bucket-here/x.bin")


def test_prefix_lists_every_object_in_key_order(source: S3Source, store: Store) -> None:
    infos = source.stat(store.src("many/"))
    names = [info.name for info in infos]
    assert names == [f"{i:04d}.txt" for i in range(MANY)] + ["sub/deep é.txt"]  # marker skipped, > 1 page
    assert infos[7].src == store.src("many/0007.txt")
    assert b"".join(source.open(infos[7])) == b"file 7\n"
    with pytest.raises(SourceNotFound, match="no objects under prefix"):
        source.stat(store.src("nothing-here/"))


# -- through the API ----------------------------------------------------------------------------


@pytest.fixture
def s3_client_app(make_config: Callable[..., Config], store: Store) -> FlaskClient:
    return create_app(make_config(FS_INTERFACES="s3,https", S3_BUCKETS=store.bucket, AWS_REGION=REGION)).test_client()


def test_missing_key_is_422_naming_the_src(s3_client_app: FlaskClient, store: Store) -> None:
    response = s3_client_app.post("/bundle", json={"files": [{"src": store.src("crc.bin")},
                                                             {"src": store.src("nope/missing.bin")}]})
    assert response.status_code == 422
    assert response.mimetype == "application/json"
    assert response.json is not None
    assert [s["src"] for s in response.json["error"]["sources"]] == [store.src("nope/missing.bin")]


def test_bucket_not_allowed_is_403_and_nothing_is_stored(s3_client_app: FlaskClient, store: Store,
                                                         tmp_path: Path) -> None:
    for method, path in (("post", "/"), ("post", "/bundle")):
        response = getattr(s3_client_app, method)(path, json={"files": [
            {"src": store.src("crc.bin")}, {"src": "s3://not-our-bucket/payroll.csv"}]})
        assert response.status_code == 403, response.get_data(as_text=True)
        assert response.json["error"]["code"] == "source_refused"
    with sqlite3.connect(tmp_path / "zipstream.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM bundles").fetchone() == (0,)


# -- through the real service (gunicorn + gevent) -----------------------------------------------


def _readme_pipe_example() -> str:
    """The Python block of the README's "Piping a bundle straight into S3" section."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("<!-- section:s3 -->", 1)[1].split("<!-- /section:s3 -->", 1)[0]
    example = section.split("### Piping a bundle straight into S3", 1)[1]
    return example.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_example_pipes_a_bundle_into_s3(serve: Serve, store: Store, tmp_path: Path,
                                               zip_readers: CheckZip) -> None:
    files, expected = expected_bundle(store)
    server = serve(FS_INTERFACES="s3,https", S3_BUCKETS=store.bucket, AWS_REGION=REGION)
    code = _readme_pipe_example()
    assert "upload_fileobj(response.raw" in code and "stream=True" in code
    # Run the README's code as written, pointed at this service, this bucket and these files.
    code = code.replace("https://zipstream.example.com", server.base_url).replace('"my-exports"', repr(store.bucket))
    code = re.sub(r"^files = .*$", "files = FILES", code, count=1, flags=re.MULTILINE)
    exec(compile(code, "README.md", "exec"), {"FILES": files})  # noqa: S102 - our own README's example
    archive = tmp_path / "piped.zip"
    store.client.download_file(store.bucket, "exports/summer.zip", str(archive))
    zip_readers(archive, expected)


def test_unreachable_or_missing_backends_never_leak_botocore(moto_server: MotoServer,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    missing_table = dynamodb_repository()  # never migrated
    with pytest.raises(ServiceUnavailable, match="run `zipstream migrate`"):
        missing_table.get(str(uuid.uuid4()))
    missing_table.close()
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dead)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", dead)
    unreachable = dynamodb_repository()
    with pytest.raises(ServiceUnavailable):
        unreachable.ping()
    with pytest.raises(ServiceUnavailable):
        unreachable.create(Bundle.new("x.zip", (FileRef("s3://b/k"),), 60))
    unreachable.close()
    source = S3Source(Config.from_env({"FS_INTERFACES": "s3", "AWS_REGION": REGION, "S3_TIMEOUT": "2"}))
    with pytest.raises(SourceError) as failed:
        source.stat("s3://bucket/key.bin")
    assert failed.value.status == 502 and failed.value.src == "s3://bucket/key.bin"


def test_body_cut_part_way_is_resumed_where_it_stopped(moto_server: MotoServer, store: Store,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    proxy = CuttingProxy(moto_server.port)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
    try:
        config = Config.from_env({"FS_INTERFACES": "s3", "AWS_REGION": REGION, "S3_BUCKETS": store.bucket})
        sources = build_sources(config)
        (info,) = sources.stat(store.src("big.bin"))
        proxy.cut_after(3 * 1024 * 1024)
        with caplog.at_level(logging.WARNING, logger="zipstream.sources"):
            data = b"".join(sources.open(info))
        assert proxy.cuts == 1
        assert data == store.data["big.bin"]
        assert any("re-opening" in record.getMessage() for record in caplog.records)
    finally:
        proxy.close()


class _DenyingS3(BaseHTTPRequestHandler):
    """An S3 endpoint whose credentials may read nothing: what AWS answers for a missing permission
    (moto does not enforce IAM, so the denial comes from this real HTTP server instead)."""

    BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
            b"<Message>Access Denied</Message><RequestId>X</RequestId></Error>")

    def _deny(self, body: bool) -> None:
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        if body:
            self.wfile.write(self.BODY)

    def do_HEAD(self) -> None:
        self._deny(body=False)  # a HEAD has no body: botocore sees only the status

    def do_GET(self) -> None:
        self._deny(body=True)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_access_denied_is_a_422_naming_each_src(monkeypatch: pytest.MonkeyPatch,
                                                 make_config: Callable[..., Config]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DenyingS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        client = create_app(make_config(FS_INTERFACES="s3", AWS_REGION=REGION, S3_PATH_STYLE="true")).test_client()
        srcs = ["s3://private-bucket/report.pdf", "s3://private-bucket/folder/"]
        response = client.post("/bundle", json={"files": [{"src": src} for src in srcs]})
        assert response.status_code == 422
        error = response.get_json()["error"]
        assert error["code"] == "source_unavailable"
        assert [(item["src"], item["reason"]) for item in error["sources"]] == [
            (src, "access denied") for src in srcs]
    finally:
        server.shutdown()
        server.server_close()
