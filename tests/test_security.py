"""API key, CORS, secrets kept out of logs, and every limit answered with a 4xx JSON naming it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests
from flask import Flask

from zipstream import create_app
from zipstream.config import Config

from .support.live import LiveServer
from .support.upstream import UpstreamServer

KEY = "k3y-with-some-entropy-0123456789"


def _files(upstream: UpstreamServer, count: int = 1) -> list[dict[str, str]]:
    for index in range(count):
        upstream.add(f"/f{index}.txt", f"file {index}\n".encode())
    return [{"src": upstream.url(f"/f{index}.txt")} for index in range(count)]


def _error(response: Any) -> dict[str, Any]:
    assert response.mimetype == "application/json"
    error: dict[str, Any] = response.get_json()["error"]
    return error


# -- API_KEY --


@pytest.fixture
def keyed(make_config: Callable[..., Config]) -> Flask:
    return create_app(make_config(API_KEY=KEY))


@pytest.mark.parametrize("path", ["/", "/bundle"])
@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x",
                                           f"Token {KEY}", KEY])
def test_creating_needs_the_api_key(keyed: Flask, upstream: UpstreamServer, path: str,
                                    authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = keyed.test_client().post(path, json={"files": _files(upstream)}, headers=headers)
    assert response.status_code == 401
    assert _error(response)["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert KEY not in response.get_data(as_text=True)
    assert upstream.requests == []


def test_the_right_key_creates_and_downloads_need_none(keyed: Flask, upstream: UpstreamServer) -> None:
    client = keyed.test_client()
    files = _files(upstream)
    assert client.post("/bundle", json={"files": files}, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    created = client.post("/", json={"files": files}, headers={"Authorization": f"bearer  {KEY}"})
    assert created.status_code == 201
    bundle = created.get_json()
    # Downloads and the secret routes are capability-based: the id (and secret) are the credential.
    assert client.get(f"/{bundle['id']}").status_code == 200
    assert client.get(f"/{bundle['id']}/{bundle['secret']}").status_code == 200
    assert client.put(f"/{bundle['id']}/{bundle['secret']}", json={"files": files}).status_code == 200
    assert client.delete(f"/{bundle['id']}/{bundle['secret']}").status_code == 200


def test_without_api_key_anyone_may_create(app: Flask, upstream: UpstreamServer) -> None:
    assert app.test_client().post("/", json={"files": _files(upstream)}).status_code == 201


# -- CORS --

ORIGIN = "https://shop.example"


def _cors_headers(response: Any) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.lower().startswith("access-control-")}


def test_cors_is_off_by_default(app: Flask, upstream: UpstreamServer) -> None:
    client = app.test_client()
    created = client.post("/", json={"files": _files(upstream)}, headers={"Origin": ORIGIN})
    assert _cors_headers(created) == {}
    preflight = client.options("/", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert _cors_headers(preflight) == {}


def test_cors_for_listed_origins_never_on_secret_routes(make_config: Callable[..., Config],
                                                        upstream: UpstreamServer) -> None:
    client = create_app(make_config(CORS_ORIGINS=f"{ORIGIN}/, https://other.example")).test_client()
    created = client.post("/", json={"files": _files(upstream)}, headers={"Origin": ORIGIN})
    assert created.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Origin" in created.headers["Vary"]
    bundle = created.get_json()
    preflight = client.options("/bundle", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    download = client.get(f"/{bundle['id']}", headers={"Origin": ORIGIN})
    assert download.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Content-Disposition" in download.headers["Access-Control-Expose-Headers"]
    # A foreign origin gets nothing.
    assert _cors_headers(client.post("/", json={}, headers={"Origin": "https://evil.example"})) == {}
    # The secret routes get nothing, whatever the origin and method.
    secret_path = f"/{bundle['id']}/{bundle['secret']}"
    for method in ("GET", "PUT", "DELETE", "OPTIONS", "POST"):
        response = client.open(secret_path, method=method, headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "DELETE"}, json={"files": []})
        assert _cors_headers(response) == {}, method


# The routes the README's "Keys, secrets, CORS" lists as answering other origins; no other gets CORS headers.
CORS_ROUTES = {"api.create_bundle", "api.one_off_bundle", "api.download_bundle", "api.health_check",
               "openapi.openapi_json"}


@pytest.mark.parametrize("origins", ["*", ORIGIN])
def test_cors_headers_only_on_the_documented_routes(make_config: Callable[..., Config], upstream: UpstreamServer,
                                                    origins: str) -> None:
    """Every rule of the URL map, every method it allows, plain and as a preflight."""
    app = create_app(make_config(CORS_ORIGINS=origins, DEMO="true"))
    client = app.test_client()
    bundle = client.post("/", json={"files": _files(upstream)}).get_json()
    values = {"bundle_id": bundle["id"], "secret": bundle["secret"], "filename": "index.css"}
    seen = set()
    for rule in app.url_map.iter_rules():
        path = rule.rule
        for name in rule.arguments:
            path = path.replace(f"<{name}>", values[name]).replace(f"<uuid:{name}>", values[name])
            path = path.replace(f"<path:{name}>", values[name])
        for method in sorted((rule.methods or set()) - {"DELETE"}):
            documented = rule.endpoint in CORS_ROUTES
            plain = client.open(path, method=method, headers={"Origin": ORIGIN}, json={"files": _files(upstream)})
            preflight = client.options(path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": method})
            for answer in (plain, preflight):
                with answer:
                    assert ("Access-Control-Allow-Origin" in answer.headers) == documented, (method, path, answer)
            seen.add(rule.endpoint)
    assert seen >= CORS_ROUTES | {"metrics.metrics", "docs.docs", "docs.static", "demo.demo", "api.get_bundle"}
    # An unknown route (a 404 of no documented route) gets none either.
    assert _cors_headers(client.get("/no-such-route", headers={"Origin": ORIGIN})) == {}


def test_cors_any_origin(make_config: Callable[..., Config]) -> None:
    client = create_app(make_config(CORS_ORIGINS="*")).test_client()
    response = client.get("/health-check", headers={"Origin": "https://anywhere.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"


# -- limits --


def test_body_size_limit(make_config: Callable[..., Config]) -> None:
    client = create_app(make_config(MAX_BODY_BYTES="1024")).test_client()
    big = {"files": [{"src": f"https://example.com/{'x' * 100}/{index}"} for index in range(20)]}
    for path in ("/", "/bundle"):
        response = client.post(path, json=big)
        assert response.status_code == 413
        error = _error(response)
        assert error["code"] == "limit_exceeded"
        assert error["limit"] == "MAX_BODY_BYTES"
        assert "1024" in error["message"]
    form = client.post("/", data={"files": "x" * 2000})
    assert form.status_code == 413
    assert _error(form)["limit"] == "MAX_BODY_BYTES"


def test_files_per_bundle_limit(make_config: Callable[..., Config], upstream: UpstreamServer) -> None:
    client = create_app(make_config(MAX_FILES="2")).test_client()
    files = _files(upstream, 3)
    for path in ("/", "/bundle"):
        response = client.post(path, json={"files": files})
        assert response.status_code == 413
        assert _error(response)["limit"] == "MAX_FILES"
    bundle = client.post("/", json={"files": files[:2]}).get_json()
    appended = client.put(f"/{bundle['id']}/{bundle['secret']}", json={"files": files[2:]})
    assert appended.status_code == 413
    assert _error(appended)["limit"] == "MAX_FILES"
    # Nothing was half-appended.
    assert len(client.get(f"/{bundle['id']}/{bundle['secret']}").get_json()["files"]) == 2


def test_name_and_src_length_limits(make_config: Callable[..., Config]) -> None:
    client = create_app(make_config(MAX_NAME_LENGTH="16", MAX_SRC_LENGTH="40")).test_client()
    response = client.post("/", json={"files": [{"src": "https://example.com/a", "dst": "n" * 17}]})
    assert response.status_code == 422
    assert "MAX_NAME_LENGTH" in str(_error(response)["fields"])
    response = client.post("/", json={"files": [{"src": "https://example.com/" + "a" * 30}]})
    assert response.status_code == 422
    assert "MAX_SRC_LENGTH" in str(_error(response)["fields"])
    assert client.post("/", json={"files": [{"src": "https://example.com/a", "dst": "n" * 16}]}).status_code == 201
    response = client.post("/", json={"files": [], "filename": "z" * 256})
    assert response.status_code == 422
    assert "255" in str(_error(response)["fields"])


def test_bundle_bytes_limit_at_preflight(make_config: Callable[..., Config], upstream: UpstreamServer) -> None:
    client = create_app(make_config(MAX_BUNDLE_BYTES="100")).test_client()
    upstream.add("/big.bin", b"x" * 60)
    upstream.add("/big2.bin", b"y" * 60)
    files = [{"src": upstream.url("/big.bin")}, {"src": upstream.url("/big2.bin")}]
    response = client.post("/bundle", json={"files": files})
    assert response.status_code == 413
    error = _error(response)
    assert error["limit"] == "MAX_BUNDLE_BYTES"
    assert "120" in error["message"]
    bundle = client.post("/", json={"files": files}).get_json()
    for method in ("GET", "HEAD"):
        response = client.open(f"/{bundle['id']}", method=method)
        assert response.status_code == 413
    # Refused at pre-flight: nothing was fetched beyond pre-flight's ranged GETs (the first 64 KiB
    # on a whole-zip GET, one byte on a HEAD).
    assert {r.range for r in upstream.requests_for("/big.bin", "GET")} == {"bytes=0-65535", "bytes=0-0"}
    assert client.post("/bundle", json={"files": files[:1]}).status_code == 200


def test_per_source_timeout(make_config: Callable[..., Config], upstream: UpstreamServer) -> None:
    client = create_app(make_config(HTTP_TIMEOUT="0.3")).test_client()
    upstream.add("/slow.txt", b"slow")
    upstream.set_behaviour("/slow.txt", latency=2)
    response = client.post("/bundle", json={"files": [{"src": upstream.url("/slow.txt")}]})
    assert response.status_code == 504  # no timely answer (RFC 9110 §15.6.5), not a wrong one
    error = _error(response)
    assert error["code"] == "upstream_timeout"
    assert "HTTP_TIMEOUT" in error["sources"][0]["reason"]
    assert len(upstream.requests_for("/slow.txt")) == 4  # first try and three retries with backoff


# -- the real server: secrets never logged, werkzeug's 413 is JSON there too --


def test_secrets_never_reach_the_access_log(serve: Callable[..., LiveServer], upstream: UpstreamServer) -> None:
    server = serve(MAX_BODY_BYTES="2048")
    files = _files(upstream)
    created = requests.post(server.url("/"), json={"files": files}, timeout=10)
    assert created.status_code == 201
    bundle = created.json()
    secret_path = f"/{bundle['id']}/{bundle['secret']}"
    assert requests.get(server.url(secret_path), timeout=10).status_code == 200
    assert requests.get(server.url(secret_path + "/?pretty=1"), timeout=10).status_code == 200
    assert requests.put(server.url(secret_path), json={"files": files}, timeout=10).status_code == 200
    assert requests.get(server.url(f"/{bundle['id']}"), timeout=10).status_code == 200
    assert requests.delete(server.url(secret_path), timeout=10).status_code == 200
    too_big = requests.post(server.url("/"), data=b'{"files": [' + b" " * 4000 + b"]}",
                            headers={"Content-Type": "application/json"}, timeout=10)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["limit"] == "MAX_BODY_BYTES"
    log = server.log_text()
    assert bundle["id"] in log  # the access log is on, and the id is fine to log
    assert bundle["secret"] not in log
