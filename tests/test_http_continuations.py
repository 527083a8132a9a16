"""Continuations and redirects as a browser does them (issue 13, points 2 and 7), against a real upstream.

Each test drives the app (POST /bundle, GET /:id, HEAD /:id, resumes with Range + If-Range) over an
upstream that behaves like a real server that browsers cope with: redirects to short-lived signed
URLs or to a mirror with its own ETag, 206s that start early, ranged requests that fail, Retry-After,
raw UTF-8 in Location, gzip/deflate bodies. Every zip is checked by the real readers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from zipstream import create_app
from zipstream.config import Config

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
