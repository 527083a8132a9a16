"""Edge cases found in review: each was a 500, a silent truncation or a possible splice before."""

from __future__ import annotations

import io
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator

import pytest
import requests
from flask.testing import FlaskClient

from zipstream.logs import mask_path
from zipstream.names import unique_names
from zipstream.repositories.sqlite import SqliteRepository

from .support.live import LiveServer
from .support.upstream import UpstreamServer


def _create(client: FlaskClient, files: list[dict[str, object]], **extra: object) -> dict[str, str]:
    response = client.post("/", json={"files": files, **extra})
    assert response.status_code == 201, response.data
    return response.json  # type: ignore[no-any-return]


# -- request bodies ---------------------------------------------------------------------------


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
    upper = bundle["id"].upper()
    assert client.get(f"/{upper}").status_code == 200
    assert client.get(f"/{upper}/{bundle['secret']}").status_code == 200


# -- names, logs, cache -------------------------------------------------------------------------


def test_a_file_never_shares_its_name_with_a_folder() -> None:
    names = unique_names(["docs", "docs/b.txt", "a/b.txt", "A", "x/y.txt"])
    assert names == ["docs", "docs (1)/b.txt", "a/b.txt", "A (1)", "x/y.txt"]


def test_zip_with_file_and_folder_of_one_name_extracts(client: FlaskClient, upstream: UpstreamServer) -> None:
    upstream.add("/a.txt", b"a")
    response = client.post("/bundle", json={"files": [{"src": upstream.url("/a.txt"), "dst": "docs"},
                                                      {"src": upstream.url("/a.txt"), "dst": "docs/b.txt"}]})
    assert zipfile.ZipFile(io.BytesIO(response.data)).namelist() == ["docs", "docs (1)/b.txt"]


@pytest.mark.parametrize("path", [
    "/{id}/{secret}", "/{id}%2F{secret}", "/{id}%252F{secret}", "/{id_first}{id_rest}/{secret}",
])
def test_secrets_are_masked_however_encoded(path: str) -> None:
    bundle_id, secret = str(uuid.uuid4()), str(uuid.uuid4())
    first = f"%{ord(bundle_id[0]):02X}"  # the id's first character percent-encoded
    raw = path.format(id=bundle_id, secret=secret, id_first=first, id_rest=bundle_id[1:])
    masked = mask_path(raw)
    assert secret not in masked
    assert masked.endswith("/***")


def test_purge_expired_forgets_old_learned_crcs(tmp_path: object) -> None:
    repository = SqliteRepository(str(tmp_path) + "/crc.sqlite3")  # type: ignore[operator]
    repository.migrate()
    repository.put_crcs({"a" * 64: 1})
    repository.purge_expired(int(time.time()))
    assert repository.known(["a" * 64], [], None).crcs == {"a" * 64: 1}  # recent: kept
    repository.purge_expired(int(time.time()) + 31 * 24 * 3600)
    assert repository.known(["a" * 64], [], None).crcs == {}
