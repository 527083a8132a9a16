"""The database layer never stops a gevent worker: real gunicorn, real PostgreSQL (a throwaway database).

A row lock held from another session makes one PUT wait; an unrelated request on the same single
worker must still answer at once, and the worker must be using two connections at the same time
(psycopg2 made cooperative after gunicorn's gevent worker patched). Pool exhaustion is a clean 503 +
Retry-After; idle connections are closed after DB_IDLE_TIMEOUT.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg2
import pytest
import requests

from zipstream.repositories.postgres import PostgresRepository

from .support.live import ROOT, LiveServer
from .support.pgdb import holding_lock
from .support.upstream import UpstreamServer

HOLD = 3.0  # seconds the row lock is held; the unrelated request must answer well within this


@pytest.fixture
def database(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database of its own (migrated), dropped afterwards: its URL."""
    name = f"zs_b_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    url = postgres_url.rsplit("/", 1)[0] + "/" + name
    repository = PostgresRepository(url, table="bundles")
    repository.migrate()
    repository.close()  # only the server's connections may be counted
    try:
        yield url
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def connections(url: str, application: str | None = None) -> int:
    """How many sessions other than this one are connected to the database of `url` (of `application`)."""
    with psycopg2.connect(url) as probe, probe.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                       " AND pid <> pg_backend_pid() AND application_name = COALESCE(%s, application_name)",
                       (application,))
        count: int = cursor.fetchone()[0]
    probe.close()
    return count


def locked(url: str, bundle_id: str, seconds: float) -> threading.Thread:
    """A thread holding `SELECT ... FOR UPDATE` on the bundle's row for `seconds` (started, lock taken)."""
    return holding_lock(url, "SELECT id FROM bundles WHERE id = %s FOR UPDATE", (bundle_id,),
                        lambda: time.sleep(seconds))


def _bundle(server: LiveServer, upstream: UpstreamServer) -> tuple[str, str]:
    upstream.add("/a.txt", b"a" * 1000)
    body = {"files": [{"src": upstream.url("/a.txt")}]}
    created = requests.post(server.url("/"), json=body, timeout=10)
    assert created.status_code == 201, created.text
    bundle = created.json()
    return bundle["id"], f"/{bundle['id']}/{bundle['secret']}"


def test_a_row_lock_blocks_one_greenlet_not_the_worker(
        database: str, serve: Callable[..., LiveServer], upstream: UpstreamServer) -> None:
    server = serve(DB_INTERFACE="postgres", DB_CNXN=database, DB_TIMEOUT="10")
    bundle_id, secret_path = _bundle(server, upstream)
    holder = locked(database, bundle_id, HOLD)
    put: dict[str, object] = {}

    def append() -> None:
        started = time.monotonic()
        response = requests.put(server.url(secret_path), json={"files": [{"src": upstream.url("/a.txt"),
                                                                          "dst": "b.txt"}]}, timeout=30)
        put.update(status=response.status_code, took=time.monotonic() - started)

    putter = threading.Thread(target=append)
    putter.start()
    time.sleep(0.5)  # the PUT is now waiting on the row lock inside the worker
    started = time.monotonic()
    health = requests.get(server.url("/health-check"), timeout=30)
    took = time.monotonic() - started
    # The PUT's connection waits on the lock while the health-check used a second one (pooled now).
    (worker,) = server.worker_pids()
    during = connections(database, f"zipstream-{worker}")
    holder.join()
    putter.join()
    print(f"/health-check during a {HOLD:.0f} s row lock: {took * 1000:.0f} ms; worker connections: {during}")
    assert health.status_code == 200, health.text
    assert took < 1.0, f"/health-check took {took:.2f} s while a PUT waited on a row lock"
    assert during >= 2, f"{during} connection(s) of the worker while two requests used the database"
    assert put["status"] == 200
    assert float(put["took"]) >= HOLD - 1  # type: ignore[arg-type]  # it really waited for the lock


def test_pool_exhaustion_is_a_clean_503_with_retry_after(
        database: str, serve: Callable[..., LiveServer], upstream: UpstreamServer) -> None:
    # One connection per worker, DB_TIMEOUT=2 s (for a slot, and for a statement). Timeline:
    # t=0 PUT 1 takes the slot and waits on the row lock until its statement times out (t≈2);
    # t=1 PUT 2 queues for the slot, gets it at t≈2 and waits on the lock until t≈4;
    # t=1.5 the GET queues behind PUT 2, and at t≈3.5 gives up: 503 pool exhausted.
    server = serve(DB_INTERFACE="postgres", DB_CNXN=database, DB_POOL_SIZE="1", DB_TIMEOUT="2")
    bundle_id, secret_path = _bundle(server, upstream)
    holder = locked(database, bundle_id, 5.0)
    statuses: list[int] = []

    def append() -> None:
        response = requests.put(server.url(secret_path), json={"files": [{"src": upstream.url("/a.txt")}]},
                                timeout=30)
        statuses.append(response.status_code)

    putters = [threading.Thread(target=append) for _ in range(2)]
    putters[0].start()
    time.sleep(1.0)
    putters[1].start()
    time.sleep(0.5)
    started = time.monotonic()
    response = requests.get(server.url(secret_path), timeout=30)
    took = time.monotonic() - started
    holder.join()
    for putter in putters:
        putter.join()
    assert response.status_code == 503, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert int(response.headers["Retry-After"]) > 0
    assert "pool exhausted" in response.json()["error"]["message"]
    assert 1.5 < took < 4  # DB_TIMEOUT (2 s) of waiting for a slot, then the answer
    assert statuses == [503, 503]  # statement timeouts on the lock: also clean 503s
    assert requests.get(server.url(secret_path), timeout=10).status_code == 200  # and it recovers
    assert "Traceback" not in server.log_text()


def test_idle_connections_are_closed(database: str, serve: Callable[..., LiveServer],
                                     upstream: UpstreamServer) -> None:
    server = serve(DB_INTERFACE="postgres", DB_CNXN=database, DB_IDLE_TIMEOUT="1")
    _, secret_path = _bundle(server, upstream)
    threads = [threading.Thread(target=requests.get, args=(server.url(secret_path),), kwargs={"timeout": 10})
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert connections(database) >= 1  # pooled for the next request
    deadline = time.monotonic() + 8
    while connections(database) > 0:
        assert time.monotonic() < deadline, "idle connections were never closed"
        time.sleep(0.25)
    assert requests.get(server.url(secret_path), timeout=10).status_code == 200  # reconnects on demand


def test_offload_raises_in_the_caller_and_prints_no_traceback() -> None:
    """Under gevent, an exception from an offloaded call is the caller's: gevent's pool printed each one too."""
    program = textwrap.dedent("""
        from gevent import monkey
        monkey.patch_all()
        import sqlite3
        from zipstream.cooperative import offload

        def fails():
            raise sqlite3.OperationalError("no such table: bundles")

        try:
            offload("test", 2, fails)
        except sqlite3.OperationalError as error:
            print("caught:", error)
        print("result:", offload("test", 2, lambda a, b: a + b, 2, 3))
    """)
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["caught: no such table: bundles", "result: 5"]
    assert "Traceback" not in done.stderr and "failed with" not in done.stderr, done.stderr
