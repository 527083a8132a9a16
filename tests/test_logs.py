"""One JSON log line per request and per download outcome; request ids; secrets masked; LOG_LEVEL."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from zipstream import create_app, logs
from zipstream.config import Config, ConfigError


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "files"
    base.mkdir()
    (base / "a.txt").write_bytes(b"a" * 300_000)
    return base


@pytest.fixture
def logged(root: Path, make_config: Callable[..., Config]) -> tuple[FlaskClient, io.StringIO]:
    client = create_app(make_config(FS_INTERFACES="file", FILE_ROOT=str(root))).test_client()
    stream = io.StringIO()
    logs.configure("info", stream)  # after create_app, which pointed the logs at stderr
    return client, stream


def lines(stream: io.StringIO, event: str | None = None) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in parsed if event is None or line.get("event") == event]


def test_one_json_line_per_request_with_request_id(logged: tuple[FlaskClient, io.StringIO]) -> None:
    client, stream = logged
    with client.get("/health-check", headers={"X-Request-ID": "req-42.abc"}) as response:
        body = response.get_data()
    assert response.headers["X-Request-ID"] == "req-42.abc"
    (line,) = lines(stream, "request")
    assert line["method"] == "GET"
    assert line["path"] == "/health-check"
    assert line["status"] == 200
    assert line["bytes"] == len(body)
    assert line["request_id"] == "req-42.abc"
    assert line["duration_ms"] >= 0
    assert line["level"] == "info"
    assert line["time"].endswith("+00:00")


@pytest.mark.parametrize("given", ["has space", "x" * 200, "quote\"d", "tab\there", ""])
def test_insane_request_ids_are_replaced(logged: tuple[FlaskClient, io.StringIO], given: str) -> None:
    client, stream = logged
    with client.get("/health-check", headers={"X-Request-ID": given} if given else {}) as response:
        pass
    rid = response.headers["X-Request-ID"]
    assert rid != given
    assert len(rid) == 32
    assert int(rid, 16) >= 0
    assert lines(stream, "request")[0]["request_id"] == rid


def test_secrets_are_masked(logged: tuple[FlaskClient, io.StringIO]) -> None:
    client, stream = logged
    with client.post("/", json={"files": [{"src": "file:///a.txt"}]}) as created:
        bundle = created.get_json()
    with client.get(f"/{bundle['id']}/{bundle['secret']}") as response:
        assert response.status_code == 200
    with client.get(f"/{bundle['id']}/wrong-secret") as response:
        assert response.status_code == 403
    text = stream.getvalue()
    assert bundle["secret"] not in text
    assert "wrong-secret" not in text
    paths = [line["path"] for line in lines(stream, "request")]
    assert paths == ["/", f"/{bundle['id']}/***", f"/{bundle['id']}/***"]
    assert [line["status"] for line in lines(stream, "request")] == [201, 200, 403]


def test_download_outcomes(logged: tuple[FlaskClient, io.StringIO]) -> None:
    client, stream = logged
    with client.post("/bundle", json={"files": [{"src": "file:///a.txt"}]},
                     headers={"X-Request-ID": "r1"}) as complete:
        size = len(complete.get_data())
    cut = client.post("/bundle", json={"files": [{"src": "file:///a.txt"}]}, headers={"X-Request-ID": "r2"},
                      buffered=False)
    first = next(iter(cut.response))
    cut.close()
    downloads = lines(stream, "download")
    assert [(d["outcome"], d["request_id"]) for d in downloads] == [("completed", "r1"), ("aborted", "r2")]
    assert downloads[0]["bytes"] == size
    assert "reason" not in downloads[0]
    assert downloads[1]["reason"] == "client_disconnected"
    assert downloads[1]["level"] == "warning"
    requests_ = lines(stream, "request")
    assert [r["bytes"] for r in requests_] == [size, len(first)]  # logged when the body really ended


def test_text_on_a_terminal(root: Path, make_config: Callable[..., Config]) -> None:
    client = create_app(make_config(FS_INTERFACES="file", FILE_ROOT=str(root))).test_client()
    terminal = Terminal()
    logs.configure("info", terminal)
    client.get("/health-check", headers={"X-Request-ID": "tty-1"}).close()
    text = terminal.getvalue()
    assert "GET /health-check 200" in text
    assert "request_id=tty-1" in text
    assert not text.lstrip().startswith("{")


def test_log_level(root: Path, make_config: Callable[..., Config]) -> None:
    config = make_config(FS_INTERFACES="file", FILE_ROOT=str(root), LOG_LEVEL="WARNING")
    assert config.log_level == "warning"
    client = create_app(config).test_client()
    stream = io.StringIO()
    logs.configure(config.log_level, stream)
    client.get("/health-check").close()
    with client.get("/nope") as response:
        assert response.status_code == 404
    assert stream.getvalue() == ""  # info lines are below WARNING
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        make_config(LOG_LEVEL="chatty")
