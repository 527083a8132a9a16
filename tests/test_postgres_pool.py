"""The PostgreSQL pool under faults: real gunicorn (one gevent worker), a throwaway database each.

- The server cuts the pooled connections (failover, restart, pgbouncer, `pg_terminate_backend`):
  no user may be handed a dead connection, so every request after the cut answers 200.
- Many concurrent appends to ONE bundle queue on its row lock: they must not take every pool slot,
  so unrelated requests on the same worker still answer at once, and no appended file is lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
import requests

from zipstream.repositories.postgres import PostgresRepository

from .support.cutproxy import CutProxy
from .support.live import LiveServer
from .support.pgdb import holding_lock, throwaway_database
from .support.upstream import UpstreamServer
from .test_cooperative import _bundle, connections, locked


@pytest.fixture
def database(postgres_url: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database of its own, dropped afterwards: its URL."""
    with throwaway_database(postgres_url, "zs_pool") as url:
        repository = PostgresRepository(url, table="bundles")
        repository.migrate()
        repository.close()  # only the server's connections may be counted
        yield url


def _table_locked(url: str, release: threading.Event) -> threading.Thread:
    """A thread holding an exclusive lock on the bundles table until `release` is set (started, lock taken)."""
    return holding_lock(url, "LOCK TABLE bundles IN ACCESS EXCLUSIVE MODE", (), lambda: release.wait(15))


def _warm_pool(database: str, url: str, readers: int) -> None:
    """Fill a worker's pool: with the table locked, `readers` concurrent GETs of `url` each hold a
    connection of their own; released, they all put theirs back idle."""
    release = threading.Event()
    holder = _table_locked(database, release)
    threads = [threading.Thread(target=requests.get, args=(url,), kwargs={"timeout": 30}) for _ in range(readers)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    release.set()
    holder.join()
    for thread in threads:
        thread.join()


def test_connections_cut_by_the_server_are_never_handed_out(
        database: str, serve: Callable[..., LiveServer], upstream: UpstreamServer) -> None:
    server = serve(DB_INTERFACE="postgres", DB_CNXN=database, DB_POOL_SIZE="10", DB_TIMEOUT="10",
                   DB_IDLE_TIMEOUT="600")
    _, secret_path = _bundle(server, upstream)
    (worker,) = server.worker_pids()
    application = f"zipstream-{worker}"
    _warm_pool(database, server.url(secret_path), 8)
    pooled = connections(database, application)
    assert pooled >= 5, f"only {pooled} pooled connection(s): the warm-up did not fill the pool"
    # The server cuts them all, as a failover or `pg_terminate_backend` does.
    with psycopg2.connect(database) as admin, admin.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                       " WHERE datname = current_database() AND application_name = %s", (application,))
        assert cursor.fetchone()[0] == pooled
    admin.close()
    deadline = time.monotonic() + 5
    while connections(database, application) > 0:  # the backends are gone
        assert time.monotonic() < deadline
        time.sleep(0.05)
    health = requests.get(server.url("/health-check"), timeout=30)  # a readiness probe first
    statuses = [requests.get(server.url(secret_path), timeout=30).status_code for _ in range(pooled + 3)]
    print(f"{pooled} pooled connections cut; sequential GETs then: {statuses}; /health-check {health.status_code}")
    assert statuses == [200] * len(statuses), statuses
    assert health.status_code == 200, health.text
    assert "Traceback" not in server.log_text()


def test_appends_to_one_bundle_leave_the_pool_to_others(
        database: str, serve: Callable[..., LiveServer], upstream: UpstreamServer) -> None:
    server = serve(DB_INTERFACE="postgres", DB_CNXN=database, DB_POOL_SIZE="4", DB_TIMEOUT="6")
    hot_id, hot_path = _bundle(server, upstream)
    _, other_path = _bundle(server, upstream)
    per_put = 5
    files = [{"src": upstream.url("/a.txt"), "dst": f"{n}.txt"} for n in range(per_put)]
    holder = locked(database, hot_id, 2.5)  # the appends pile up behind this row lock
    answers: list[requests.Response] = []

    def append() -> None:
        answers.append(requests.put(server.url(hot_path), json={"files": files}, timeout=60))

    putters = [threading.Thread(target=append) for _ in range(24)]
    for putter in putters:
        putter.start()
    time.sleep(0.8)  # the PUTs are now all waiting inside the worker
    probes: list[tuple[str, int, float]] = []
    for path in (other_path, "/health-check", other_path):
        started = time.monotonic()
        response = requests.get(server.url(path), timeout=30)
        probes.append((path, response.status_code, time.monotonic() - started))
    holder.join()
    for putter in putters:
        putter.join()
    statuses = sorted(answer.status_code for answer in answers)
    print(f"unrelated requests while 24 PUTs queued on one bundle: {[(s, round(t, 3)) for _, s, t in probes]};"
          f" PUTs: {statuses}")
    for path, status, took in probes:
        assert status == 200, path
        assert took < 1.0, f"{path} took {took:.2f} s while appends to another bundle queued"
    assert set(statuses) <= {200, 503}, statuses
    for answer in answers:
        if answer.status_code == 503:
            assert int(answer.headers["Retry-After"]) > 0
            assert answer.json()["error"]["message"]
    appended = sum(1 for answer in answers if answer.status_code == 200)
    assert appended >= 1
    final = requests.get(server.url(hot_path), timeout=10).json()
    assert len(final["files"]) == 1 + per_put * appended  # no file lost, none added twice
    assert "Traceback" not in server.log_text()


def test_connections_a_proxy_lost_silently_are_replaced_at_the_first_statement(
        database: str, serve: Callable[..., LiveServer], upstream: UpstreamServer) -> None:
    # Through a proxy (pgbouncer, HAProxy) a failover closes nothing on our side until we send:
    # the pool's check sees a healthy idle socket, and the first statement finds it dead.
    parts = urlsplit(database)
    with CutProxy((parts.hostname or "127.0.0.1", parts.port or 5432)) as proxy:
        proxied = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
        server = serve(DB_INTERFACE="postgres", DB_CNXN=proxied, DB_POOL_SIZE="10", DB_TIMEOUT="10",
                       DB_IDLE_TIMEOUT="600")
        _, secret_path = _bundle(server, upstream)
        (worker,) = server.worker_pids()
        _warm_pool(database, server.url(secret_path), 6)
        pooled = connections(database, f"zipstream-{worker}")
        assert pooled >= 4, f"only {pooled} pooled connection(s): the warm-up did not fill the pool"
        assert proxy.cut() >= pooled
        health = requests.get(server.url("/health-check"), timeout=30)
        statuses = [requests.get(server.url(secret_path), timeout=30).status_code for _ in range(pooled + 3)]
        print(f"{pooled} pooled connections lost behind a proxy; /health-check {health.status_code};"
              f" sequential GETs then: {statuses}")
        assert health.status_code == 200, health.text
        assert statuses == [200] * len(statuses), statuses
        assert "Traceback" not in server.log_text()


def test_an_idle_connection_past_fd_setsize_is_kept_and_a_terminated_one_dropped(database: str) -> None:
    """A worker holding 1,024 descriptors (slow clients) had every pooled connection judged dead by
    select(), which refuses them: each request reconnected (zipstream.peek)."""
    import resource

    from zipstream.repositories.postgres import _alive

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    filler = [open("/dev/null", "rb") for _ in range(1100)]  # noqa: SIM115 - held open on purpose
    try:
        connection = psycopg2.connect(database)
        try:
            assert connection.fileno() >= 1024
            assert _alive(connection)
            with psycopg2.connect(database) as admin, admin.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s)", (connection.get_backend_pid(),))
            admin.close()
            deadline = time.monotonic() + 10
            while _alive(connection) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _alive(connection)
        finally:
            connection.close()
    finally:
        for handle in filler:
            handle.close()
