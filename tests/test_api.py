"""Every route with good and bad input, through the WSGI app and a real local upstream."""

from __future__ import annotations

import io
import json
import socket
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from zipstream import create_app
from zipstream.config import Config
from zipstream.repositories import get_repository

from .support.live import LiveServer
from .support.upstream import UpstreamServer


def _zip(data: bytes) -> zipfile.ZipFile:
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    return archive


def _error(response: object, status: int, code: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.get_data(as_text=True)  # type: ignore[attr-defined]
    assert response.mimetype == "application/json"  # type: ignore[attr-defined]
    body = response.json["error"]  # type: ignore[attr-defined]
    assert isinstance(body["message"], str) and body["message"]
    if code:
        assert body["code"] == code
    return body  # type: ignore[no-any-return]


@pytest.fixture
def files(upstream: UpstreamServer) -> dict[str, str]:
    upstream.add("/photos/rock.jpg", b"JPEG" * 1000)
    upstream.add("/docs/readme.txt", b"hello\n")
    upstream.add("/Docs/README.TXT", b"other\n")
    upstream.add("/dir/naïve file.txt", "ünïcode".encode())
    return {
        "rock": upstream.url("/photos/rock.jpg"),
        "readme": upstream.url("/docs/readme.txt"),
        "README": upstream.url("/Docs/README.TXT"),
        "naive": upstream.url("/dir/naïve file.txt"),
        "missing": upstream.url("/nope.bin"),
    }


# -- POST /bundle -------------------------------------------------------------------------------


def test_one_off_bundle_streams_zip(client: FlaskClient, files: dict[str, str]) -> None:
    response = client.post("/bundle", json={"files": [{"src": files["rock"], "dst": "rock.jpg"},
                                                      {"src": files["readme"]}]})
    assert response.status_code == 200
    assert response.mimetype == "application/zip"
    assert response.headers["Content-Disposition"] == 'attachment; filename="bundle.zip"'
    assert int(response.headers["Content-Length"]) == len(response.data)
    archive = _zip(response.data)
    assert archive.namelist() == ["rock.jpg", "docs/readme.txt"]
    assert archive.read("rock.jpg") == b"JPEG" * 1000


def test_trailing_slash_is_accepted(client: FlaskClient, files: dict[str, str]) -> None:
    assert client.post("/bundle/", json={"files": [{"src": files["readme"]}]}).status_code == 200


def test_default_names_are_decoded_paths_and_duplicates_renamed(client: FlaskClient, files: dict[str, str]) -> None:
    body = {"files": [{"src": files["readme"]}, {"src": files["README"]}, {"src": files["readme"]},
                      {"src": files["naive"] + "?x=1"}]}
    archive = _zip(client.post("/bundle", json=body).data)
    # One folder, spelled as first named, so case-sensitive extractors make one folder too.
    assert archive.namelist() == ["docs/readme.txt", "docs/README (1).TXT", "docs/readme (2).txt",
                                  "dir/naïve file.txt"]
    assert archive.read("dir/naïve file.txt") == "ünïcode".encode()


@pytest.mark.parametrize(("dst", "expected"), [
    ("../../etc/passwd", "etc/passwd"),
    ("/abs/path.txt", "abs/path.txt"),
    ("a\\b\\c.txt", "a/b/c.txt"),
    ("./x/./y.txt", "x/y.txt"),
    ("bad\x01\x1bname.txt", "badname.txt"),
    ("C:\\Windows\\x.txt", "Windows/x.txt"),
    ("ok/ünï.txt", "ok/ünï.txt"),
])
def test_hostile_names_are_made_safe(client: FlaskClient, files: dict[str, str], dst: str, expected: str) -> None:
    archive = _zip(client.post("/bundle", json={"files": [{"src": files["readme"], "dst": dst}]}).data)
    assert archive.namelist() == [expected]


def test_filename_gets_rfc6266_header(client: FlaskClient, files: dict[str, str]) -> None:
    response = client.post("/bundle", json={"filename": "résumé 2024.zip", "files": [{"src": files["readme"]}]})
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=\"r_sum_ 2024.zip\"; filename*=UTF-8''r%C3%A9sum%C3%A9%202024.zip"
    )


def test_deflate_is_opt_in(client: FlaskClient, files: dict[str, str]) -> None:
    response = client.post("/bundle", json={"compression": "deflate", "files": [{"src": files["rock"]}]})
    archive = _zip(response.data)
    assert archive.infolist()[0].compress_type == zipfile.ZIP_DEFLATED
    assert "Content-Length" not in response.headers
    stored = _zip(client.post("/bundle", json={"files": [{"src": files["rock"]}]}).data)
    assert stored.infolist()[0].compress_type == zipfile.ZIP_STORED


def test_missing_source_is_clean_error_naming_it(client: FlaskClient, files: dict[str, str]) -> None:
    response = client.post("/bundle", json={"files": [{"src": files["readme"]}, {"src": files["missing"]}]})
    body = _error(response, 422, "source_unavailable")
    assert body["sources"] == [{"src": files["missing"], "reason": "not found (HTTP 404)"}]


def test_upstream_5xx_is_502(client: FlaskClient, files: dict[str, str], upstream: UpstreamServer) -> None:
    upstream.set_behaviour("/docs/readme.txt", status=500)
    body = _error(client.post("/bundle", json={"files": [{"src": files["readme"]}]}), 502, "upstream_error")
    assert "HTTP 500" in str(body["sources"])


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"files": []}, 422, "files"),
    ({}, 422, "files"),
    ({"files": [{}]}, 422, "files"),
    ({"files": [{"src": "ftp://x/y"}]}, 422, "files"),
    ({"files": [{"src": "s3://bucket/key"}]}, 422, "files"),  # s3 not enabled in this config
    ({"files": [{"src": "https://x/y", "extra": 1}]}, 422, "files"),
    ({"files": [{"src": "https://x/y"}], "unknown": True}, 422, "unknown"),
    ({"files": [{"src": "https://x/" + "a" * 5000}]}, 422, "files"),
    ({"files": [{"src": "https://x/y", "dst": 12}]}, 422, "files"),  # "../.." means the default name now
    ({"files": [{"src": "https://x/y", "dst": "x" * 2000}]}, 422, "files"),
    ({"files": [{"src": "https://x/y"}], "filename": ".."}, 422, "filename"),  # "a/b.zip" is "a_b.zip" now
    ({"files": [{"src": "https://x/y"}], "compression": "lzma"}, 422, "compression"),
    ({"files": "nope"}, 422, "files"),
    ({"files": [{"src": "https://x/y", "crc32": -1}]}, 422, "files"),
    # urlsplit raises on an unbalanced "[" or "]" in the host: was a 500
    ({"files": [{"src": "https://[x/y"}]}, 422, "files"),
    ({"files": [{"src": "https://[::1/y"}]}, 422, "files"),
    ({"files": [{"src": "http://a]b/"}]}, 422, "files"),
])
def test_invalid_bodies_get_field_errors(client: FlaskClient, body: dict[str, object], status: int,
                                         field: str) -> None:
    error = _error(client.post("/bundle", json=body), status, "invalid")
    assert field in error["fields"]  # type: ignore[operator]


@pytest.mark.parametrize("payload", [b"{bad", b"[1, 2]", b"", b"null", b"\xff\xfe"])
def test_malformed_json_is_400(client: FlaskClient, payload: bytes) -> None:
    response = client.post("/bundle", data=payload, content_type="application/json")
    _error(response, 400, "bad_request")


def test_unsupported_content_type_is_415(client: FlaskClient) -> None:
    _error(client.post("/bundle", data=b"x", content_type="text/csv"), 415)


def test_too_many_files_is_413_naming_limit(make_config: Callable[..., Config], files: dict[str, str]) -> None:
    client = create_app(make_config(MAX_FILES="3")).test_client()
    body = _error(client.post("/bundle", json={"files": [{"src": files["readme"]}] * 4}), 413, "limit_exceeded")
    assert "MAX_FILES" in str(body["message"])


def test_body_too_large_is_413_json(make_config: Callable[..., Config]) -> None:
    client = create_app(make_config(MAX_BODY_BYTES="2048")).test_client()
    _error(client.post("/bundle", json={"files": [{"src": "https://x/" + "a" * 4000}]}), 413)


# -- browser forms ------------------------------------------------------------------------------


def test_form_with_repeated_src_dst_fields(client: FlaskClient, files: dict[str, str]) -> None:
    data = {"src": [files["rock"], files["readme"]], "dst": ["", "notes.txt"], "filename": "cart.zip"}
    response = client.post("/bundle", data=data)
    assert response.status_code == 200, response.data
    assert response.headers["Content-Disposition"] == 'attachment; filename="cart.zip"'
    assert _zip(response.data).namelist() == ["photos/rock.jpg", "notes.txt"]


def test_form_with_json_files_field(client: FlaskClient, files: dict[str, str]) -> None:
    import json

    response = client.post("/", data={"files": json.dumps([{"src": files["rock"], "dst": "r.jpg"}])})
    assert response.status_code == 201
    assert response.json["files"] == [{"src": files["rock"], "dst": "r.jpg"}]


def test_multipart_form_with_500_files(client: FlaskClient, upstream: UpstreamServer) -> None:
    for i in range(500):
        upstream.add(f"/cart/{i}.txt", f"item {i}".encode())
    data = {"src": [upstream.url(f"/cart/{i}.txt") for i in range(500)],
            "dst": [f"items/{i}.txt" for i in range(500)]}
    response = client.post("/bundle", data=data, content_type="multipart/form-data")
    assert response.status_code == 200, response.data[:500]
    archive = _zip(response.data)
    assert len(archive.namelist()) == 500
    assert archive.read("items/499.txt") == b"item 499"


def test_urlencoded_form_with_500_files_creates_bundle(client: FlaskClient, upstream: UpstreamServer) -> None:
    data = {"src": [upstream.url(f"/cart/{i}.txt") for i in range(500)]}
    response = client.post("/", data=data)
    assert response.status_code == 201, response.data[:500]
    assert len(response.json["files"]) == 500


# -- stored bundles -----------------------------------------------------------------------------


def _create(client: FlaskClient, files: list[dict[str, object]], **extra: object) -> dict[str, object]:
    response = client.post("/", json={"files": files, **extra})
    assert response.status_code == 201, response.data
    return response.json  # type: ignore[no-any-return]


def test_create_returns_seed_shape(client: FlaskClient, files: dict[str, str]) -> None:
    before = int(time.time())
    bundle = _create(client, [{"src": files["rock"], "dst": "foo.jpg"}], filename="my-awesome-bundle.zip")
    assert set(bundle) == {"id", "secret", "filename", "files", "expirationDate", "compression"}
    assert uuid.UUID(str(bundle["id"])).version == 4
    assert uuid.UUID(str(bundle["secret"])).version == 4
    assert bundle["files"] == [{"src": files["rock"], "dst": "foo.jpg"}]
    assert before + 10080 * 60 <= int(bundle["expirationDate"]) <= int(time.time()) + 10080 * 60  # type: ignore[call-overload]


def test_create_without_files_then_append(client: FlaskClient, files: dict[str, str]) -> None:
    bundle = _create(client, [], filename="empty.zip")
    assert bundle["files"] == []
    url = f"/{bundle['id']}/{bundle['secret']}"
    response = client.put(url, json={"files": [{"src": files["readme"]}]})
    assert response.status_code == 200
    assert response.json["files"] == [{"src": files["readme"]}]
    response = client.put(url + "/", json={"filename": "renamed.zip", "files": [{"src": files["readme"]}]})
    assert response.json["filename"] == "renamed.zip"
    assert len(response.json["files"]) == 2
    archive = _zip(client.get(f"/{bundle['id']}").data)
    assert archive.namelist() == ["docs/readme.txt", "docs/readme (1).txt"]


def test_put_can_change_only_the_filename_or_compression(client: FlaskClient, files: dict[str, str]) -> None:
    bundle = _create(client, [{"src": files["readme"]}], filename="before.zip")
    url = f"/{bundle['id']}/{bundle['secret']}"
    renamed = client.put(url, json={"filename": "after.zip"})
    assert renamed.status_code == 200, renamed.json
    assert renamed.json["filename"] == "after.zip"
    assert renamed.json["files"] == bundle["files"]
    recompressed = client.put(url, json={"compression": "deflate"})
    assert recompressed.status_code == 200, recompressed.json
    assert recompressed.json["compression"] == "deflate"
    assert recompressed.json["filename"] == "after.zip"
    assert client.get(f"/{bundle['id']}").headers["Content-Disposition"] == 'attachment; filename="after.zip"'
    # A body that changes nothing, or an empty list of files, is refused and changes nothing.
    for body in ({}, {"files": []}):
        _error(client.put(url, json=body), 422, "invalid")
    assert client.get(url).json == recompressed.json


def test_download_get_info_and_delete(client: FlaskClient, files: dict[str, str]) -> None:
    bundle = _create(client, [{"src": files["rock"], "dst": "foo.jpg"}], filename="x.zip")
    download = client.get(f"/{bundle['id']}/")
    assert download.status_code == 200
    assert download.headers["Content-Disposition"] == 'attachment; filename="x.zip"'
    assert _zip(download.data).namelist() == ["foo.jpg"]
    info = client.get(f"/{bundle['id']}/{bundle['secret']}")
    assert info.json == bundle
    deleted = client.delete(f"/{bundle['id']}/{bundle['secret']}")
    assert deleted.status_code == 200
    assert deleted.json == bundle
    _error(client.get(f"/{bundle['id']}"), 404, "not_found")
    _error(client.get(f"/{bundle['id']}/{bundle['secret']}"), 404)


def test_wrong_secret_is_403_everywhere(client: FlaskClient, files: dict[str, str]) -> None:
    bundle = _create(client, [{"src": files["rock"]}])
    wrong = f"/{bundle['id']}/{uuid.uuid4()}"
    _error(client.get(wrong), 403, "forbidden")
    _error(client.put(wrong, json={"files": [{"src": files["rock"]}]}), 403)
    _error(client.delete(wrong), 403)
    assert client.get(f"/{bundle['id']}/{bundle['secret']}").status_code == 200


@pytest.mark.parametrize("bundle_id", [str(uuid.uuid4()), "not-a-uuid"], ids=["random-uuid", "not-a-uuid"])
def test_unknown_id_is_404(client: FlaskClient, bundle_id: str) -> None:
    _error(client.get(f"/{bundle_id}"), 404)


def test_get_on_post_only_route_is_405_json(client: FlaskClient) -> None:
    response = client.get("/bundle")
    _error(response, 405)
    assert "POST" in response.headers["Allow"]


def test_expired_bundle_is_410_on_every_route_but_delete(make_config: Callable[..., Config],
                                                         files: dict[str, str]) -> None:
    app: Flask = create_app(make_config(DATA_LIFETIME="1"))
    client = app.test_client()
    bundle = _create(client, [{"src": files["rock"]}])
    with app.app_context():
        repository = get_repository()
    stored = repository.get(bundle["id"])
    repository.delete(stored.id)
    from dataclasses import replace

    repository.create(replace(stored, expiration_date=int(time.time()) - 1))
    secret_url = f"/{bundle['id']}/{bundle['secret']}"
    for response in (client.get(f"/{bundle['id']}"), client.head(f"/{bundle['id']}"), client.get(secret_url),
                     client.put(secret_url, json={"files": [{"src": files["rock"]}]})):
        assert response.status_code == 410
    assert client.get(secret_url).json["error"]["code"] == "expired"
    assert client.delete(secret_url).status_code == 200  # its owner can still clean up (every backend:
    assert client.get(secret_url).status_code == 404  # tests/test_repositories.py)


def test_unknown_route_and_method_are_json(client: FlaskClient) -> None:
    _error(client.get("/a/b/c/d"), 404)
    _error(client.patch("/bundle"), 405)


def test_health_check(client: FlaskClient) -> None:
    response = client.get("/health-check")
    assert response.status_code == 200
    assert response.json["status"] == "ok"


def test_health_check_reports_database_down(make_config: Callable[..., Config], tmp_path: object) -> None:
    app = create_app(make_config())
    with app.app_context():
        get_repository().path = "/nonexistent-dir/x.sqlite3"  # type: ignore[attr-defined]
    response = app.test_client().get("/health-check")
    assert response.status_code == 503
    assert response.headers["Retry-After"]


def test_openapi_document_describes_the_api(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    assert {"/bundle", "/", "/{id}", "/{id}/{secret}", "/health-check"} <= set(spec["paths"])
    file_ref = spec["components"]["schemas"]["FileRef"]
    assert file_ref["required"] == ["src"]
    assert {"src", "dst", "crc32"} <= set(file_ref["properties"])


# -- request bodies: chunked, nested, unstorable text --------------------------------------------


def _chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_chunked_bodies_are_bounded_not_truncated(serve: Callable[..., LiveServer]) -> None:
    server = serve(MAX_BODY_BYTES="200000")
    big_form = "&".join(f"src=https%3A%2F%2Fexample.com%2F{i:06d}.bin" for i in range(8000)).encode()
    assert len(big_form) > 200_000
    # requests sends a generator body with Transfer-Encoding: chunked (no Content-Length).
    response = requests.post(server.url("/"), data=_chunks(big_form), timeout=30,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 413
    assert response.json()["error"]["limit"] == "MAX_BODY_BYTES"
    small_form = b"&".join(f"src=https%3A%2F%2Fexample.com%2F{i}.bin".encode() for i in range(100))
    response = requests.post(server.url("/"), data=_chunks(small_form, 100), timeout=30,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 201, response.text
    assert len(response.json()["files"]) == 100
    assert response.json()["files"][-1]["src"] == "https://example.com/99.bin"


@pytest.mark.parametrize("payload", [b"[" * 100_000 + b"]" * 100_000, b'{"files": ' + b"[" * 50_000 + b"]" * 50_000])
def test_deeply_nested_json_is_400(client: FlaskClient, payload: bytes) -> None:
    response = client.post("/", data=payload, content_type="application/json")
    assert response.status_code == 400
    assert response.json["error"]["code"] == "bad_request"


def test_deeply_nested_form_files_field_is_400(client: FlaskClient) -> None:
    response = client.post("/", data={"files": "[" * 100_000})
    assert response.status_code == 400


@pytest.mark.parametrize("body", [
    {"files": [{"src": "https://example.com/a\ud800.txt"}]},
    {"files": [{"src": "https://example.com/a.txt", "dst": "x\ud800y.txt"}]},
    {"files": [{"src": "https://example.com/a.txt"}], "filename": "a\ud800.zip"},
    {"files": [{"src": "https://example.com/a.txt", "dst": "a\u0000b.txt"}]},
    {"files": [{"src": "https://example.com/a.txt", "crc32": "12"}]},
    {"files": [{"src": "https://example.com/a.txt", "crc32": 1.5}]},
])
@pytest.mark.parametrize("route", ["/", "/bundle"])
def test_unstorable_text_and_loose_crc_are_422(client: FlaskClient, body: dict[str, object], route: str) -> None:
    response = client.post(route, json=body)
    assert response.status_code == 422, response.data
    assert response.json["error"]["code"] == "invalid"


def test_form_with_both_files_and_src_is_422(client: FlaskClient) -> None:
    response = client.post("/", data={"files": '[{"src": "https://example.com/a"}]', "src": "https://example.com/b"})
    assert response.status_code == 422


def test_double_slash_is_json_404(client: FlaskClient) -> None:
    response = client.post("/bundle//", json={"files": [{"src": "https://example.com/a"}]})
    assert response.status_code == 404
    assert response.mimetype == "application/json"


def test_upper_case_id_works_on_every_route(client: FlaskClient, upstream: UpstreamServer) -> None:
    upstream.add("/a.txt", b"a")
    bundle = _create(client, [{"src": upstream.url("/a.txt")}])
    upper = str(bundle["id"]).upper()
    assert client.get(f"/{upper}").status_code == 200
    assert client.get(f"/{upper}/{bundle['secret']}").status_code == 200


def _raw_post(server: LiveServer, path: str, content_type: str, body: bytes, finish: bool) -> bytes:
    """POST `body` as is after a `Transfer-Encoding: chunked` head; the whole answer (or what came in 15 s)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode() + body)
        if finish:  # the client sends no more: a body cut short
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


# Each was a 500 (and an "unexpected error" traceback in the log): gunicorn's chunked reader raised
# out of the MAX_BODY_BYTES guard.
MALFORMED_CHUNKED = [
    pytest.param(b"1\r\nab\r\n0\r\n\r\n", False, id="chunk-longer-than-its-size"),
    pytest.param(b"zz\r\n{}\r\n0\r\n\r\n", False, id="size-not-hex"),
    pytest.param(b"-2\r\n{}\r\n0\r\n\r\n", False, id="negative-size"),
    pytest.param("\u0662\r\n{}\r\n0\r\n\r\n".encode(), False, id="arabic-indic-digit-size"),
    pytest.param(b"2\r\n{}", True, id="cut-after-a-chunk"),
]


@pytest.mark.parametrize(("body", "finish"), MALFORMED_CHUNKED)
@pytest.mark.parametrize(("path", "content_type"), [
    ("/bundle", "application/json"),
    ("/", "application/x-www-form-urlencoded"),
    ("/", "multipart/form-data; boundary=x"),
])
def test_malformed_chunked_body_is_400_not_500(serve: Callable[..., LiveServer], body: bytes, finish: bool,
                                               path: str, content_type: str) -> None:
    server = serve()
    answer = _raw_post(server, path, content_type, body, finish)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 400 BAD REQUEST", answer[:300]
    assert json.loads(payload)["error"]["code"] == "bad_request"
    assert "unexpected error" not in server.log_text()


# -- BODY_TIMEOUT: a request body that stops arriving ----------------------------------------------
# Before it, a client that sent a head and then one body byte now and then held its connection (and a
# worker greenlet) for as long as it liked: HEADER_TIMEOUT covers heads only.

# Stored (POST /), never fetched; a loopback src all the same, so no test here can send a packet out.
_BODY = json.dumps({"files": [{"src": "http://127.0.0.1:9/a.txt"}]}).encode()


def _until_closed(sock: socket.socket, patience: float = 20) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout if it never does)."""
    sock.settimeout(patience)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _post_head(path: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n\r\n".encode()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("how", ["stalls", "trickles"])
def test_a_body_that_does_not_arrive_within_body_timeout_is_408_and_closed(
        serve: Callable[..., LiveServer], framing: str, how: str) -> None:
    server = serve(BODY_TIMEOUT="1", HTTP_ALLOW_PRIVATE="true")
    length = len(_BODY) if framing == "content-length" else None
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(_post_head("/", length))
        started = time.monotonic()
        first = _BODY[:10] if length is not None else b"%x\r\n" % len(_BODY) + _BODY[:10]
        sock.sendall(first)
        if how == "trickles":  # a byte every 0.2 s: steady, but never done within the deadline
            for byte in _BODY[10:40]:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break
                time.sleep(0.2)
        # The only worker serves others meanwhile.
        assert requests.get(server.url("/health-check"), timeout=5).status_code == 200
        answer = _until_closed(sock)  # closed: the answer is the last thing on this connection
        waited = time.monotonic() - started
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:300]
    error = json.loads(payload)["error"]
    assert error["code"] == "request_timeout"
    assert "BODY_TIMEOUT" in error["message"]
    assert waited < 15  # not gunicorn's keepalive (75 s) or the client's patience
    assert "unexpected error" not in server.log_text()
    assert requests.get(server.url("/health-check"), timeout=5).status_code == 200


def test_a_slow_body_that_arrives_within_body_timeout_is_served_and_the_connection_kept(
        serve: Callable[..., LiveServer]) -> None:
    server = serve(BODY_TIMEOUT="5", HTTP_ALLOW_PRIVATE="true")
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(_post_head("/", len(_BODY)))
        for start in range(0, len(_BODY), 20):  # slowly, but whole within the deadline
            sock.sendall(_BODY[start:start + 20])
            time.sleep(0.1)
        sock.settimeout(20)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 201 "), answer[:300]
        head, _, body = answer.partition(b"\r\n\r\n")
        fields = dict(line.lower().split(b":", 1) for line in head.split(b"\r\n")[1:])
        while len(body) < int(fields[b"content-length"]):
            body += sock.recv(65536)
        # Kept alive: the next request on the same connection is answered.
        sock.sendall(b"GET /health-check HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
