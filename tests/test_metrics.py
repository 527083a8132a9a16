"""GET /metrics: download, byte, upstream and latency metrics, in one process and across gunicorn workers."""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient

from zipstream import create_app
from zipstream.config import Config

from .support.live import LiveServer
from .support.upstream import UpstreamServer


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(match.group(3))
    return 0.0


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "files"
    base.mkdir()
    (base / "a.txt").write_bytes(b"alpha" * 1000)
    (base / "b.bin").write_bytes(bytes(range(256)) * 4096)
    return base


@pytest.fixture
def file_client(root: Path, make_config: Callable[..., Config]) -> FlaskClient:
    return create_app(make_config(FS_INTERFACES="file,https", FILE_ROOT=str(root))).test_client()


def scrape(client: FlaskClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return response.get_data(as_text=True)


def test_completed_download_is_counted(file_client: FlaskClient) -> None:
    before = scrape(file_client)
    response = file_client.post("/bundle", json={"files": [{"src": "file:///a.txt"}, {"src": "file:///b.bin"}]})
    body = response.get_data()
    assert zipfile.ZipFile(io.BytesIO(body)).namelist() == ["a.txt", "b.bin"]
    after = scrape(file_client)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("zipstream_downloads_started_total", kind="one_off") == 1
    assert delta("zipstream_downloads_completed_total", kind="one_off") == 1
    assert delta("zipstream_bytes_sent_total", kind="one_off") == len(body)
    assert delta("zipstream_upstream_requests_total", backend="file", operation="stat") == 2
    assert delta("zipstream_upstream_requests_total", backend="file", operation="open") == 2
    assert delta("zipstream_preflight_seconds_count") == 1
    assert delta("zipstream_time_to_first_byte_seconds_count") == 1
    assert sample(after, "zipstream_downloads_in_flight") == sample(before, "zipstream_downloads_in_flight")


def test_download_closed_early_is_aborted_and_leaves_flight(file_client: FlaskClient) -> None:
    before = scrape(file_client)
    response = file_client.post("/bundle", json={"files": [{"src": "file:///b.bin"}]}, buffered=False)
    chunks = iter(response.response)
    next(chunks)
    assert sample(scrape(file_client), "zipstream_downloads_in_flight") == (
        sample(before, "zipstream_downloads_in_flight") + 1
    )
    response.close()  # what the server does when the client goes away
    after = scrape(file_client)
    assert sample(after, "zipstream_downloads_aborted_total", kind="one_off", reason="client") == (
        sample(before, "zipstream_downloads_aborted_total", kind="one_off", reason="client") + 1
    )
    assert sample(after, "zipstream_downloads_in_flight") == sample(before, "zipstream_downloads_in_flight")


def test_upstream_errors_are_counted_by_backend(file_client: FlaskClient, upstream: UpstreamServer) -> None:
    before = scrape(file_client)
    response = file_client.post("/bundle", json={"files": [
        {"src": upstream.url("/missing.txt")}, {"src": "file:///nope.txt"},
    ]})
    assert response.status_code == 422
    after = scrape(file_client)
    for backend in ("https", "file"):
        labels = {"backend": backend, "operation": "stat", "code": "source_unavailable"}
        assert sample(after, "zipstream_upstream_errors_total", **labels) == (
            sample(before, "zipstream_upstream_errors_total", **labels) + 1
        )


def test_metrics_add_up_every_gunicorn_worker(
    serve: Callable[..., LiveServer], root: Path, upstream: UpstreamServer,
) -> None:
    upstream.add("/x.bin", os.urandom(2_000_000))
    server = serve(workers=2, FS_INTERFACES="https,file", FILE_ROOT=str(root))
    downloads = 0

    def workers_that_served() -> set[int]:
        lines = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
        return {line["pid"] for line in lines if line.get("event") == "download"}

    def download(_: int) -> None:
        # Deflate keeps a worker busy compressing, so the other one takes the next connections.
        response = requests.post(server.url("/bundle"), timeout=30, headers={"Connection": "close"},
                                 json={"files": [{"src": upstream.url("/x.bin")}], "compression": "deflate"})
        assert response.status_code == 200

    with ThreadPoolExecutor(max_workers=4) as pool:
        while downloads < 8 or (len(workers_that_served()) < 2 and downloads < 40):
            list(pool.map(download, range(4)))
            downloads += 4
    assert len(workers_that_served()) == 2
    for _ in range(4):  # whichever worker answers, it reports every worker's downloads
        text = requests.get(server.url("/metrics"), timeout=10, headers={"Connection": "close"}).text
        assert sample(text, "zipstream_downloads_completed_total", kind="one_off") == downloads
        assert sample(text, "zipstream_upstream_requests_total", backend="https", operation="stat") == downloads
        assert sample(text, "zipstream_downloads_in_flight") == 0


def test_metrics_token_locks_the_endpoint(make_config: Callable[..., Config]) -> None:
    client = create_app(make_config(METRICS_TOKEN="s3cret-scrape")).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-scrape"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "unauthorized"
        assert "zipstream_" not in response.get_data(as_text=True)
    response = client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape"})
    assert response.status_code == 200
    assert "zipstream_downloads_started_total" in response.get_data(as_text=True)
    # The token guards only /metrics: downloads and bundle creation are unaffected by it.
    assert client.get("/health-check").status_code == 200


def test_secrets_stay_out_of_the_config_repr() -> None:
    config = Config.from_env({"API_KEY": "key-123", "METRICS_TOKEN": "tok-456", "DB_CNXN": "postgres://u:pw-789@h/db"})
    assert config.api_key == "key-123"
    assert not any(secret in repr(config) for secret in ("key-123", "tok-456", "pw-789"))
