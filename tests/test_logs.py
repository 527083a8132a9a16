"""One JSON log line per request and per download outcome; request ids; secrets masked; LOG_LEVEL."""

from __future__ import annotations

import io
import json
import signal
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient

from zipstream import create_app, logs
from zipstream.config import Config, ConfigError
from zipstream.logs import mask_path


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


# -- secrets and the id's spellings: one accepted spelling, and nothing after an id is ever logged --

# Spellings `uuid.UUID` reads as the same id, and ids a client got slightly wrong: a secret after
# any of them is the bundle's secret all the same.
SPELLINGS: dict[str, Callable[[str], str]] = {
    "no hyphens": lambda i: i.replace("-", ""),
    "braces": lambda i: "{" + i + "}",
    "urn": lambda i: "urn:uuid:" + i,
    "upper case": str.upper,
    "upper case, no hyphens": lambda i: i.replace("-", "").upper(),
    "mistyped": lambda i: i[:-1],
    "one more digit": lambda i: i + "0",
}


def test_an_id_is_read_in_its_standard_spelling_only(logged: tuple[FlaskClient, io.StringIO]) -> None:
    """RFC 9562 §4: 8-4-4-4-12 hex digits, case-insensitive on input. Other spellings are no id (404)."""
    client, _stream = logged
    bundle = client.post("/", json={"files": [{"src": "file:///a.txt"}]}).get_json()
    secret = bundle["secret"]
    for name, spell in SPELLINGS.items():
        spelled = spell(bundle["id"])
        expected = 200 if name == "upper case" else 404
        assert client.get(f"/{spelled}").status_code == expected, name
        assert client.get(f"/{spelled}/{secret}").status_code == expected, name
        assert client.put(f"/{spelled}/{secret}", json={"filename": f"{len(name)}.zip"}).status_code == expected
        assert client.get(f"/{bundle['id']}/{secret}").get_json()["filename"] == (
            "10.zip" if expected == 200 else "bundle.zip")
        client.put(f"/{bundle['id']}/{secret}", json={"filename": "bundle.zip"})
        if expected == 404:
            assert client.delete(f"/{spelled}/{secret}").status_code == 404, name
    assert client.delete(f"/{bundle['id'].upper()}/{secret}").status_code == 200


def test_secrets_reach_neither_log_whatever_the_path(serve: Callable[..., Any], tmp_path: Path) -> None:
    """The real gunicorn's access log and the JSON request log, for every spelling of the id, extra
    segments, encoded slashes, doubled slashes and an absolute-form request line."""
    server = serve(ACCESS_LOG="-", FS_INTERFACES="file", FILE_ROOT=str(tmp_path))
    bundle = requests.post(server.url("/"), json={"files": []}, timeout=10).json()
    bundle_id, secret = bundle["id"], bundle["secret"]
    paths = [f"/{spell(bundle_id)}/{secret}" for spell in SPELLINGS.values()]
    paths += [f"/{bundle_id}/{secret}/more", f"//{bundle_id}/{secret}", f"/{bundle_id}%2F{secret}",
              f"/{bundle_id}%252F{secret}", f"/{bundle_id}/{secret.upper()}", f"/x/{secret}",
              f"/{bundle_id}/{secret}?a=1"]
    for path in paths:
        for method in ("GET", "PUT", "DELETE"):
            _raw_request(server.port, f"{method} {path} HTTP/1.1")
    _raw_request(server.port, f"GET http://127.0.0.1:{server.port}/{bundle_id}/{secret} HTTP/1.1")
    _raw_request(server.port, f"DELETE /{bundle_id}/{secret} HTTP/1.1")
    server.process.send_signal(signal.SIGTERM)  # flush: the logs are complete once gunicorn has stopped
    server.process.wait(timeout=30)
    log = server.log_text()
    ours = [line for line in log.splitlines() if "/health-check" not in line and "POST /" not in line]
    access = [line for line in ours if line.startswith("127.0.0.1 \"")]
    requests_logged = [line for line in ours if '"event": "request"' in line]
    assert len(access) == len(paths) * 3 + 2, log[-3000:]  # the access log is on, one line per request
    assert len(requests_logged) == len(access)
    assert f"/{bundle_id}/***" in log
    digits = secret.replace("-", "").lower()
    assert digits not in log.replace("-", "").lower(), [line for line in log.splitlines() if secret[:8] in line]


def _raw_request(port: int, request_line: str) -> None:
    """Send one request exactly as written (requests would normalise the path) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{request_line}\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        while sock.recv(65536):
            pass


# -- secrets masked however the path is encoded --------------------------------------------------


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
