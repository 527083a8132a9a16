"""Every `zipstream` command: serve, migrate, create-table, purge-expired (SQLite, Postgres), bundle create."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from zipstream import cli
from zipstream.config import Config
from zipstream.models import Bundle, FileRef
from zipstream.repositories import build_repository
from zipstream.repositories.sql import TABLE_SUFFIXES

from .support.live import LiveServer, free_port


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The CLI reads os.environ: give it a private SQLite file and nothing surprising."""
    values = {"DB_INTERFACE": "sqlite", "SQLITE_PATH": str(tmp_path / "cli.sqlite3"), "FS_INTERFACES": "https",
              "HTTP_ALLOW_PRIVATE": "true"}
    for name in ("DATABASE_URL", "DB_CNXN", "TABLE_NAME", "API_KEY", "ZIPSTREAM_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def postgres_env(env: dict[str, str], postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    table = "cli_" + uuid.uuid4().hex[:12]
    monkeypatch.setenv("DB_INTERFACE", "postgres")
    monkeypatch.setenv("DB_CNXN", postgres_url)
    monkeypatch.setenv("TABLE_NAME", table)
    yield table
    import psycopg2

    with psycopg2.connect(postgres_url) as connection, connection.cursor() as cursor:
        for suffix in TABLE_SUFFIXES:
            cursor.execute(f"DROP TABLE IF EXISTS {table}{suffix} CASCADE")
    connection.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_migrate_and_create_table_on_sqlite(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "migrate")
    assert code == 0
    assert "sqlite schema for table 'bundles' is up to date" in out
    assert Path(env["SQLITE_PATH"]).exists()
    assert run(capsys, "migrate")[0] == 0  # idempotent
    assert run(capsys, "create-table")[0] == 0


def test_bad_configuration_exits_with_the_variable_named(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DB_INTERFACE", "oracle")
    with pytest.raises(SystemExit, match="DB_INTERFACE"):
        cli.main(["migrate"])


def _purge_case(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "migrate")[0] == 0
    repository = build_repository(Config.from_env())
    try:
        files = (FileRef(src="https://example.com/a.txt"),)
        expired = Bundle.new("old.zip", files, lifetime_minutes=1, now=time.time() - 3600)
        fresh = Bundle.new("new.zip", files, lifetime_minutes=60)
        repository.create(expired)
        repository.create(fresh)
        code, out, _ = run(capsys, "purge-expired")
        assert code == 0
        assert "removed 1 expired bundle(s)" in out
        assert repository.get(expired.id) is None
        assert repository.get(fresh.id) is not None
        assert "removed 0 expired" in run(capsys, "purge-expired")[1]  # safe to run again (cron)
    finally:
        repository.close()


def test_purge_expired_on_sqlite(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    _purge_case(capsys)


def test_purge_expired_on_postgres(postgres_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    _purge_case(capsys)
    assert f"postgres schema for table '{postgres_env}'" in run(capsys, "migrate")[1]


def test_bundle_create_prints_link_and_secret(
    serve: Callable[..., LiveServer], upstream: object, capsys: pytest.CaptureFixture[str], env: dict[str, str],
) -> None:
    from .support.upstream import UpstreamServer

    assert isinstance(upstream, UpstreamServer)
    upstream.add("/a.txt", b"alpha")
    upstream.add("/b.txt", b"beta")
    server = serve(API_KEY="k3y")
    srcs = [upstream.url("/a.txt"), upstream.url("/b.txt")]
    code, out, err = run(capsys, "bundle", "create", "--url", server.url(), "--filename", "two.zip",
                         "--api-key", "k3y", *srcs)
    assert code == 0, err
    fields = dict(line.split(":", 1) for line in out.strip().splitlines())
    link, secret = fields["download"].strip(), fields["secret"].strip()
    bundle_id = link.rsplit("/", 1)[1]
    assert link == server.url(f"/{bundle_id}")
    stored = requests.get(server.url(f"/{bundle_id}/{secret}"), timeout=10).json()
    assert [f["src"] for f in stored["files"]] == srcs
    assert stored["filename"] == "two.zip"
    download = requests.get(link, timeout=10)
    assert download.status_code == 200
    assert download.headers["Content-Disposition"] == 'attachment; filename="two.zip"'
    zip_path = Path(str(server.log)).with_name("two.zip")
    zip_path.write_bytes(download.content)
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.namelist() == ["a.txt", "b.txt"]

    # Errors come back as the API's message, with a non-zero exit.
    code, _, err = run(capsys, "bundle", "create", "--url", server.url(), *srcs)
    assert code == 1
    assert "401" in err
    code, _, err = run(capsys, "bundle", "create", "--url", server.url(), "--api-key", "k3y", "ftp://x/y")
    assert code == 1
    assert "422" in err

    # show: by id and secret, or by the manage link; a wrong secret is the API's 403.
    code, out, err = run(capsys, "bundle", "show", "--url", server.url(), bundle_id, secret)
    assert code == 0, err
    assert [f["src"] for f in json.loads(out)["files"]] == srcs
    code, out, _ = run(capsys, "bundle", "show", fields["manage"].strip())
    assert code == 0
    assert json.loads(out)["filename"] == "two.zip"
    code, _, err = run(capsys, "bundle", "show", "--url", server.url(), bundle_id, "not-the-secret")
    assert code == 1
    assert "403" in err
    # delete: the download link stops working.
    code, out, err = run(capsys, "bundle", "delete", "--url", server.url(), bundle_id, secret)
    assert code == 0, err
    assert bundle_id in out
    assert requests.get(link, timeout=10).status_code == 404
    code, _, err = run(capsys, "bundle", "show", "--url", server.url(), bundle_id, secret)
    assert code == 1
    assert "404" in err


def test_bundle_create_without_a_service(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        code, _, err = run(capsys, "bundle", "create", "--url", f"http://127.0.0.1:{port}", "--timeout", "2",
                           "https://example.com/a.txt")
    assert code == 1
    assert "cannot reach" in err


def test_serve_runs_gunicorn_with_the_project_config(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "zipstream.cli", "serve", "--host", "127.0.0.1"],
            env={**os.environ, "PORT": str(port), "WEB_CONCURRENCY": "1", "PYTHONWARNINGS": "ignore"},
            stdout=sink, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                response = requests.get(f"http://127.0.0.1:{port}/health-check", timeout=2,
                                        headers={"Connection": "close"})
                break
            except (requests.ConnectionError, requests.Timeout):
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert response.json() == {"status": "ok", "database": "sqlite"}
        assert "X-Request-ID" in response.headers
    finally:
        process.send_signal(signal.SIGINT)  # quick shutdown: nothing is downloading
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    text = log.read_text()
    assert "Using worker: zipstream.gunicorn_worker.GeventWorker" in text  # the class of zipstream.gunicorn_conf
    assert '"event": "request"' in text


@pytest.mark.parametrize("command", ["migrate", "purge-expired"])
def test_database_down_is_one_line_without_a_traceback(env: dict[str, str], command: str) -> None:
    """They used to print a psycopg2 traceback; an operator gets one line and a non-zero exit."""
    port = free_port()  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "zipstream.cli", command], capture_output=True, text=True, timeout=60,
        env={**os.environ, "DB_INTERFACE": "postgres", "DB_CNXN": f"postgresql://postgres@127.0.0.1:{port}/x",
             "DB_TIMEOUT": "1", "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"zipstream: {command} failed: database unavailable: ")


def test_migrate_names_the_database_it_migrates(postgres_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "migrate")
    assert code == 0
    assert out.splitlines()[0] == f"zipstream: database: postgres {os.environ['DB_CNXN']} table {postgres_env}"


def test_bundle_create_with_a_missing_source_fails_and_keeps_nothing(
    serve: Callable[..., LiveServer], capsys: pytest.CaptureFixture[str], env: dict[str, str],
) -> None:
    """It used to print a link that could only fail, and exit 0."""
    from .support.upstream import UpstreamServer

    with UpstreamServer() as upstream:
        upstream.add("/a.txt", b"alpha")
        server = serve()
        srcs = [upstream.url("/a.txt"), upstream.url("/missing.txt")]
        code, out, err = run(capsys, "bundle", "create", "--url", server.url(), *srcs)
        assert code == 1
        assert out == ""
        assert "bundle not created" in err and "422" in err
        assert f"{upstream.url('/missing.txt')}: not found (HTTP 404)" in err
        assert "Traceback" not in err
        # Deleted again: the service holds no bundle for it.
        repository = build_repository(Config.from_env({**env, "SQLITE_PATH": str(server.log.parent /
                                                                                   f"live-{server.port}.sqlite3")}))
        try:
            assert repository.purge_expired(2**62) == 0
        finally:
            repository.close()
        # --no-check keeps it (files that will be uploaded later), exit 0.
        code, out, err = run(capsys, "bundle", "create", "--no-check", "--url", server.url(), *srcs)
        assert code == 0, err
        assert out.startswith("download: ")


@pytest.fixture
def not_zipstream() -> Iterator[str]:
    """A local web server answering 200 with an HTML page to every request (a default site, a proxy)."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def _page(self) -> None:
            body = b"<html><body>Welcome to nginx!</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_DELETE = do_POST = _page

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("command", ["show", "delete"])
def test_a_200_page_that_is_not_zipstream_is_a_failure(env: dict[str, str], capsys: pytest.CaptureFixture[str],
                                                       not_zipstream: str, command: str) -> None:
    """It printed `{}` (show) or "deleted bundle" (delete) and exited 0."""
    code, out, err = run(capsys, "bundle", command, "--url", not_zipstream, str(uuid.uuid4()), str(uuid.uuid4()))
    assert code == 1
    assert out == ""
    assert "not with a bundle's JSON" in err and err.count("\n") == 1 and err.endswith("\n"), err


def test_bundle_create_prints_which_field_is_invalid(env: dict[str, str], capsys: pytest.CaptureFixture[str],
                                                     serve: Callable[..., LiveServer]) -> None:
    server = serve()
    code, _, err = run(capsys, "bundle", "create", "--url", server.url(), "not a url")
    assert code == 1
    first, *details = err.splitlines()
    assert "422" in first
    assert details and details[0].startswith("  files.0.src: "), err
