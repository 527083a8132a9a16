"""Every status a route answers is in /openapi.json for that operation.

The fuzzing run (test_fuzz.py) checks what schemathesis can reach with generated requests; its
random ids and srcs never reach pre-flight, so the statuses only a real bundle can produce (a prefix
that expands past MAX_FILES, a silent or broken source, a database without its tables) are driven
here on purpose, and every (operation, status) seen is looked up in the document.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from zipstream import create_app
from zipstream.config import Config
from zipstream.openapi import build_spec

from .support.upstream import UpstreamServer

Seen = set[tuple[str, str, int]]  # (method, path template, status)


def undocumented(seen: Seen, spec: dict[str, Any] | None = None) -> list[tuple[str, str, int]]:
    """The (method, path, status) in `seen` that the OpenAPI document does not account for.

    A method the document lists for the path must answer a status listed for it; any other method
    must answer 405 (OPTIONS: 200 with the allowed methods), as the fuzzer's probes expect.
    """
    paths = (spec or build_spec())["paths"]

    def accounted(method: str, path: str, status: int) -> bool:
        operation = paths.get(path, {}).get(method.lower())
        if operation is None:
            return status == (200 if method == "OPTIONS" else 405)
        return str(status) in operation.get("responses", {})

    return sorted(entry for entry in seen if not accounted(*entry))


class Recorder:
    """A test client that notes each answer's status under its OpenAPI operation."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.seen: Seen = set()

    def __call__(self, method: str, template: str, url: str, **kwargs: Any) -> TestResponse:
        response = self.client.open(url, method=method, **kwargs)
        self.seen.add((method, template, response.status_code))
        return response


@pytest.fixture
def record(make_config: Callable[..., Config], tmp_path: Path) -> Recorder:
    root = tmp_path / "files"
    (root / "three").mkdir(parents=True)
    for name in "abc":
        (root / "three" / f"{name}.txt").write_bytes(name.encode())
    config = make_config(FS_INTERFACES="https,file", FILE_ROOT=str(root), MAX_FILES="2",
                         HTTP_TIMEOUT="0.5", PREFLIGHT_TIMEOUT="1.5")
    return Recorder(create_app(config).test_client())


def _create(record: Recorder, srcs: list[str]) -> tuple[str, str]:
    response = record("POST", "/", "/", json={"files": [{"src": src} for src in srcs]})
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    return body["id"], body["secret"]


def test_statuses_only_a_real_bundle_reaches_are_documented(record: Recorder, upstream: UpstreamServer,
                                                            tmp_path: Path) -> None:
    upstream.add("/ok.bin", b"ok")
    upstream.add("/broken.bin", b"x")
    upstream.set_behaviour("/broken.bin", status=500)
    upstream.add("/silent.bin", b"x")
    upstream.set_behaviour("/silent.bin", silent=True)
    upstream.add("/hop.bin", b"x")
    upstream.set_behaviour("/hop.bin", redirect_to="file:///three/a.txt")

    expected = {
        "file:///three/": 413,  # three files once expanded; MAX_FILES is 2 (the omission)
        upstream.url("/broken.bin"): 502,
        upstream.url("/silent.bin"): 504,
        upstream.url("/hop.bin"): 403,  # a redirect away from http(s)
        upstream.url("/gone.bin"): 422,
    }
    for src, status in expected.items():
        bundle_id, _secret = _create(record, [src])
        for method in ("GET", "HEAD"):
            assert record(method, "/{id}", f"/{bundle_id}").status_code == status, (method, src)
        assert record("POST", "/bundle", "/bundle", json={"files": [{"src": src}]}).status_code == status, src

    bundle_id, secret = _create(record, [upstream.url("/ok.bin")])
    assert record("GET", "/{id}", f"/{bundle_id}", headers={"Range": "bytes=999999-"}).status_code == 416
    assert record("GET", "/{id}/{secret}", f"/{bundle_id}/{secret}").status_code == 200
    assert record("PUT", "/{id}/{secret}", f"/{bundle_id}/{secret}",
                  json={"files": [{"src": "file:///three/"}, {"src": upstream.url("/ok.bin")}]}).status_code == 413

    # A database without its tables: every route that needs it must answer a documented status.
    with sqlite3.connect(tmp_path / "zipstream.sqlite3") as connection:
        for (table,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            connection.execute(f'DROP TABLE "{table}"')
    record("POST", "/", "/", json={"files": [{"src": upstream.url("/ok.bin")}]})
    record("GET", "/{id}", f"/{bundle_id}")
    record("HEAD", "/{id}", f"/{bundle_id}")
    record("GET", "/{id}/{secret}", f"/{bundle_id}/{secret}")
    record("PUT", "/{id}/{secret}", f"/{bundle_id}/{secret}", json={"files": [{"src": upstream.url("/ok.bin")}]})
    record("DELETE", "/{id}/{secret}", f"/{bundle_id}/{secret}")
    record("GET", "/health-check", "/health-check")

    assert {status for _method, _path, status in record.seen} >= {200, 403, 413, 416, 422, 502, 504}
    assert not [status for _method, _path, status in record.seen if status >= 500 and status not in (502, 503, 504)]
    assert undocumented(record.seen) == []


def test_undocumented_finds_a_missing_status() -> None:
    spec = build_spec()
    assert undocumented({("GET", "/{id}", 413), ("POST", "/bundle", 504)}, spec) == []
    assert undocumented({("PATCH", "/{id}", 405), ("OPTIONS", "/", 200)}, spec) == []
    assert undocumented({("GET", "/{id}", 418), ("PATCH", "/{id}", 200)}, spec) == [
        ("GET", "/{id}", 418), ("PATCH", "/{id}", 200)]
