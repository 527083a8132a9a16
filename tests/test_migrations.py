"""Migrations ship with the package and serialise: a wheel in a fresh venv migrates and serves; six
concurrent `zipstream migrate` runs on one fresh database all succeed (Postgres, SQLite, DynamoDB)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import sysconfig
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
import requests

from zipstream.repositories.sql import TABLE_SUFFIXES

from .support.live import LiveServer, free_port
from .support.moto import MotoServer
from .support.upstream import UpstreamServer

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(path.name for path in (ROOT / "migrations").glob("*.sql"))


@pytest.fixture
def fresh_database(postgres_url: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database of this test's own (dropped afterwards)."""
    name = "zs_a_" + uuid.uuid4().hex[:12]
    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def _applied(url: str, table: str = "bundles") -> list[str]:
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(f"SELECT name FROM {table}_migrations ORDER BY name")  # noqa: S608 - test table name
        names = [row[0] for row in cursor.fetchall()]
    connection.close()
    return names


def _clean_env(**extra: str) -> dict[str, str]:
    """os.environ without anything that would pick a database or the tree's code by accident."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("PYTHONPATH", "DATABASE_URL", "DB_INTERFACE", "DB_CNXN", "TABLE_NAME", "SQLITE_PATH",
                           "VIRTUAL_ENV")}
    return {**env, "PYTHONWARNINGS": "ignore", **extra}


def _concurrent_migrations(env: dict[str, str], cwd: Path, runs: int = 6) -> list[subprocess.CompletedProcess[str]]:
    """`runs` `zipstream migrate` processes that all start migrating at the same instant."""
    start_at = time.time() + 4  # after every interpreter has imported zipstream (2 cores, loaded)
    code = (f"import sys, time; from zipstream import cli; time.sleep(max(0.0, {start_at!r} - time.time())); "
            "sys.exit(cli.main(['migrate']))")
    processes = [subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(runs)]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def _assert_all_succeeded(results: list[subprocess.CompletedProcess[str]]) -> None:
    for result in results:
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert "is up to date" in result.stdout


def test_six_concurrent_migrations_on_a_fresh_postgres_all_succeed(fresh_database: str, tmp_path: Path) -> None:
    results = _concurrent_migrations(_clean_env(DB_INTERFACE="postgres", DB_CNXN=fresh_database), tmp_path)
    _assert_all_succeeded(results)
    assert _applied(fresh_database) == SHIPPED


def test_six_concurrent_migrations_on_a_fresh_sqlite_file_all_succeed(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "fresh.sqlite3"
    _assert_all_succeeded(_concurrent_migrations(_clean_env(SQLITE_PATH=str(path)), tmp_path))
    with sqlite3.connect(path) as connection:
        assert sorted(row[0] for row in connection.execute("SELECT name FROM bundles_migrations")) == SHIPPED
    connection.close()


def test_six_concurrent_migrations_on_dynamodb_all_succeed(moto_server: MotoServer, tmp_path: Path) -> None:
    from .support.dynamo import dynamodb_repository

    table = "t_" + uuid.uuid4().hex[:12]
    env = _clean_env(DB_INTERFACE="dynamodb", TABLE_NAME=table, **moto_server.env)
    _assert_all_succeeded(_concurrent_migrations(env, tmp_path))
    repository = dynamodb_repository(table)
    try:
        assert repository.schema_state().value == "current"
        repository.client.delete_table(TableName=table)
    finally:
        repository.close()


def test_migrate_without_scripts_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A package that lost its migrations must not say "up to date" (it used to, and exit 0)."""
    from zipstream import cli
    from zipstream.repositories import sql

    monkeypatch.setattr(sql, "TREE_MIGRATIONS", tmp_path / "nowhere")
    monkeypatch.setattr(sql, "_CHECKOUT", tmp_path)
    monkeypatch.setattr(sql, "MIGRATIONS_PACKAGE", "zipstream.no_migrations_here")
    sql._shipped_scripts.cache_clear()
    monkeypatch.setenv("SQLITE_PATH", str(tmp_path / "x.sqlite3"))
    for name in ("DATABASE_URL", "DB_INTERFACE", "DB_CNXN"):
        monkeypatch.delenv(name, raising=False)
    try:
        assert cli.main(["migrate"]) == 1
    finally:
        sql._shipped_scripts.cache_clear()
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no migration scripts found" in err


def _build_wheel(tmp: Path) -> Path:
    """The project's wheel, built from a copy of the tracked files (the tree stays clean)."""
    source = tmp / "src"
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(tmp / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("zipstream-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A new venv with only the wheel installed in it; its dependencies come from this interpreter's
    site-packages through a .pth line (a plain path: that directory's own .pth files, among them the
    editable install of the tree, are not run)."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (site,) = venv.glob("lib/python3*/site-packages")
    (site / "_shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=300, env=_clean_env(), cwd=tmp)
    return venv


def test_a_wheel_in_a_fresh_venv_migrates_postgres_and_serves(
    fresh_database: str, tmp_path: Path, upstream: UpstreamServer,
) -> None:
    """The container / buildpack path: wheel -> fresh venv -> `zipstream migrate` -> gunicorn -> download."""
    venv = _fresh_venv(tmp_path, _build_wheel(tmp_path))
    elsewhere = tmp_path / "elsewhere"  # an unrelated working directory: no migrations/ folder, no tree
    elsewhere.mkdir()
    env = _clean_env(DATABASE_URL=fresh_database, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
    python = str(venv / "bin" / "python")
    where = subprocess.run([python, "-c", "import zipstream; print(zipstream.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(venv)), where  # the installed package, not the tree's

    migrate = subprocess.run([str(venv / "bin" / "zipstream"), "migrate"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    assert f"database: postgres {fresh_database} table bundles" in migrate.stdout
    assert _applied(fresh_database) == SHIPPED  # the scripts really ran (the wheel carries them)

    port = free_port()
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [python, "-m", "gunicorn", "--config", "python:zipstream.gunicorn_conf", "--bind", f"127.0.0.1:{port}",
             "zipstream.wsgi:app"],
            cwd=elsewhere, stdout=sink, stderr=subprocess.STDOUT,
            env={**env, "WEB_CONCURRENCY": "1", "HTTP_ALLOW_PRIVATE": "true", "FS_INTERFACES": "https"},
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log.read_text()
            try:
                health = requests.get(base + "/health-check", timeout=5)
                if health.status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert health.json() == {"status": "ok", "database": "postgres"}
        upstream.add("/a.txt", b"alpha" * 1000)
        upstream.add("/b.txt", b"beta")
        created = requests.post(base + "/", timeout=10, json={
            "filename": "two.zip", "files": [{"src": upstream.url("/a.txt")}, {"src": upstream.url("/b.txt")}]})
        assert created.status_code == 201, created.text
        download = requests.get(f"{base}/{created.json()['id']}", timeout=30)
        assert download.status_code == 200, download.text
        with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
            assert archive.read("a.txt") == b"alpha" * 1000
            assert archive.read("b.txt") == b"beta"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    text = log.read_text()
    assert f"database: postgres {fresh_database} table bundles" in text
    assert "Traceback" not in text


def test_web_process_started_before_the_release_step_becomes_ready_by_itself(
    fresh_database: str, serve: Callable[..., LiveServer], upstream: UpstreamServer,
) -> None:
    """gunicorn on a fresh Postgres, no migrate yet: 503s naming the command (it was 200 health and 500s),
    then `zipstream migrate` from another process, and the same workers serve without a restart."""
    server = serve(DB_INTERFACE="", DB_CNXN="", DATABASE_URL=fresh_database)
    upstream.add("/a.txt", b"alpha")
    files = {"files": [{"src": upstream.url("/a.txt")}]}
    for method, path in [("GET", "/health-check"), ("POST", "/"), ("GET", f"/{uuid.uuid4()}"),
                         ("POST", "/bundle")]:
        response = requests.request(method, server.url(path), json=files if method == "POST" else None, timeout=10)
        assert response.status_code == 503, (method, path, response.text)
        assert "run `zipstream migrate`" in response.json()["error"]["message"], response.text
    log = server.log_text()
    assert f"database: postgres {fresh_database} table bundles" in log
    assert log.count("not ready: the database schema for table 'bundles' is missing: run `zipstream migrate`") == 1
    workers = server.worker_pids()

    migrate = subprocess.run([sys.executable, "-m", "zipstream.cli", "migrate"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60, env=_clean_env(DATABASE_URL=fresh_database))
    assert migrate.returncode == 0, migrate.stderr
    deadline = time.monotonic() + 15
    while (health := requests.get(server.url("/health-check"), timeout=10)).status_code != 200:
        assert time.monotonic() < deadline, health.text
        time.sleep(0.2)
    created = requests.post(server.url("/"), json=files, timeout=10)
    assert created.status_code == 201, created.text
    download = requests.get(server.url(f"/{created.json()['id']}"), timeout=10)
    assert download.status_code == 200
    assert zipfile.ZipFile(io.BytesIO(download.content)).read("a.txt") == b"alpha"
    assert server.worker_pids() == workers  # no restart
    assert "Traceback" not in server.log_text()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_every_shipped_script_can_run_again(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> None:
    """`migrate` re-runs every script when a table is gone: each must only create what is missing."""
    from zipstream.repositories.postgres import PostgresRepository
    from zipstream.repositories.sql import SqlRepository, _statements, migration_scripts
    from zipstream.repositories.sqlite import SqliteRepository

    table = "again_" + uuid.uuid4().hex[:12]
    repository: SqlRepository
    if backend == "postgres":
        repository = PostgresRepository(request.getfixturevalue("postgres_url"), table)
    else:
        repository = SqliteRepository(str(tmp_path / "again.sqlite3"), table)
    try:
        for _ in range(2):
            with repository.transaction() as cursor:
                for _name, script in migration_scripts(table):
                    for statement in _statements(script):
                        cursor.execute(statement)
    finally:
        if backend == "postgres":
            with repository.transaction() as cursor:
                for suffix in TABLE_SUFFIXES:
                    cursor.execute(f"DROP TABLE IF EXISTS {table}{suffix} CASCADE")
        repository.close()


def test_a_table_dropped_under_a_running_service_is_a_503_until_migrate_repairs_it(
    serve: Callable[..., LiveServer], postgres_url: str, tmp_path: Path,
) -> None:
    """gunicorn on Postgres, `DROP TABLE {t}_files` after start: GETs answered 503 "run migrate" while
    /health-check said 200 and `zipstream migrate` said "up to date" without fixing anything."""
    table = "dropped_" + uuid.uuid4().hex[:12]
    env = _clean_env(DB_INTERFACE="postgres", DB_CNXN=postgres_url, TABLE_NAME=table)
    try:
        migrate = [sys.executable, "-m", "zipstream.cli", "migrate"]
        first = subprocess.run(migrate, env={**env, "PYTHONPATH": str(ROOT)}, cwd=tmp_path,
                               capture_output=True, text=True, timeout=60, check=False)
        assert first.returncode == 0, first.stderr
        server = serve(DB_INTERFACE="postgres", DB_CNXN=postgres_url, TABLE_NAME=table)
        created = requests.post(server.url("/"), json={"files": []}, timeout=10).json()
        secret_url = server.url(f"/{created['id']}/{created['secret']}")
        assert requests.get(secret_url, timeout=10).status_code == 200
        assert requests.get(server.url("/health-check"), timeout=10).status_code == 200
        with psycopg2.connect(postgres_url) as connection, connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE {table}_files")
        connection.close()

        got = requests.get(secret_url, timeout=10)
        assert got.status_code == 503 and "zipstream migrate" in got.json()["error"]["message"], got.text
        health = requests.get(server.url("/health-check"), timeout=10)
        assert health.status_code == 503, health.text
        assert "zipstream migrate" in health.json()["error"]["message"]

        repaired = subprocess.run(migrate, env={**env, "PYTHONPATH": str(ROOT)}, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=60, check=False)
        assert repaired.returncode == 0, repaired.stderr
        deadline = time.monotonic() + 15
        while (health := requests.get(server.url("/health-check"), timeout=10)).status_code != 200:
            assert time.monotonic() < deadline, health.text
            time.sleep(0.3)
        assert requests.get(secret_url, timeout=10).status_code == 200
        assert requests.post(server.url("/"), json={"files": []}, timeout=10).status_code == 201
    finally:
        with psycopg2.connect(postgres_url) as connection, connection.cursor() as cursor:
            for suffix in TABLE_SUFFIXES:
                cursor.execute(f"DROP TABLE IF EXISTS {table}{suffix} CASCADE")
        connection.close()
