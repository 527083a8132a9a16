"""SQLite never stops a gevent worker: real gunicorn (one worker), another process writing the same file.

- Another connection holds the write lock for 3 s: reads (GET of a bundle's JSON) and requests that
  need no database (/openapi.json) answer at once, even while a write of the same worker waits for
  the lock; the waiting write succeeds afterwards.
- `zipstream purge-expired` on many expired bundles runs while a request loop reads and writes: no
  request fails, none waits long, and the file shrinks.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import requests

from zipstream.repositories.sqlite import SqliteRepository

from .support.live import ROOT, LiveServer
from .support.upstream import UpstreamServer

HOLD = 3.0


def hold_write_lock(path: Path, seconds: float) -> threading.Thread:
    """A thread whose own sqlite3 connection holds the file's write lock for `seconds` (already taken)."""
    taken = threading.Event()

    def hold() -> None:
        connection = sqlite3.connect(path, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            taken.set()
            time.sleep(seconds)
            connection.execute("ROLLBACK")
        finally:
            connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(10)
    return thread


def timed_get(url: str) -> tuple[int, float]:
    started = time.monotonic()
    status = requests.get(url, timeout=30).status_code
    return status, time.monotonic() - started


def test_a_held_write_lock_stalls_only_the_writers(serve: Callable[..., LiveServer], upstream: UpstreamServer,
                                                   tmp_path: Path) -> None:
    path = tmp_path / "held.sqlite3"
    server = serve(SQLITE_PATH=str(path))
    upstream.add("/a.txt", b"a" * 100)
    files = {"files": [{"src": upstream.url("/a.txt")}]}
    bundle = requests.post(server.url("/"), json=files, timeout=10).json()
    secret_path = f"/{bundle['id']}/{bundle['secret']}"

    # A read alone, while another process writes.
    holder = hold_write_lock(path, HOLD)
    read_status, read_took = timed_get(server.url(secret_path))
    holder.join()

    # A write of this worker waiting for the lock must not stop its other requests.
    holder = hold_write_lock(path, HOLD)
    created: dict[str, float] = {}

    def create() -> None:
        started = time.monotonic()
        created["status"] = requests.post(server.url("/"), json=files, timeout=30).status_code
        created["took"] = time.monotonic() - started

    writer = threading.Thread(target=create)
    writer.start()
    time.sleep(0.5)  # the POST now waits for the write lock inside the worker
    spec_status, spec_took = timed_get(server.url("/openapi.json"))
    again_status, again_took = timed_get(server.url(secret_path))
    health_status, health_took = timed_get(server.url("/health-check"))
    holder.join()
    writer.join()

    print(f"write lock held {HOLD:.0f} s elsewhere: GET bundle {read_took * 1000:.0f} ms; with a POST waiting:"
          f" /openapi.json {spec_took * 1000:.0f} ms, GET bundle {again_took * 1000:.0f} ms,"
          f" /health-check {health_took * 1000:.0f} ms; the POST {created['took']:.1f} s -> {created['status']}")
    assert (read_status, spec_status, again_status, health_status) == (200, 200, 200, 200)
    assert read_took < 1.0, f"GET of a bundle took {read_took:.2f} s while another process held the write lock"
    assert spec_took < 1.0, f"/openapi.json took {spec_took:.2f} s while a write waited for the lock"
    assert again_took < 1.0, again_took
    assert health_took < 1.0, health_took
    assert created["status"] == 201
    assert created["took"] >= HOLD - 1.0  # it really waited for the lock, then succeeded


def _expired_bundles(path: Path, count: int) -> None:
    """`count` bundles (one file each) that expired an hour ago, inserted fast."""
    connection = sqlite3.connect(path)
    past = int(time.time()) - 3600
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with connection:
        connection.executemany(
            "INSERT INTO bundles (id, secret, filename, compression, expiration_date, created_at, file_count)"
            " VALUES (?, ?, 'old.zip', 'stored', ?, ?, 1)",
            [(bundle_id, "s", past, past - 60) for bundle_id in ids])
        connection.executemany(
            "INSERT INTO bundles_files (bundle_id, position, src, dst, crc32) VALUES (?, 0, ?, NULL, NULL)",
            [(bundle_id, f"https://example.invalid/{bundle_id}/some/long/path/file.bin") for bundle_id in ids])
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()


def _size(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def test_purge_while_serving_never_stalls_and_reclaims_space(
        serve: Callable[..., LiveServer], upstream: UpstreamServer, tmp_path: Path) -> None:
    path = tmp_path / "purge.sqlite3"
    SqliteRepository(str(path)).migrate()  # a new file, as the service would create it
    _expired_bundles(path, 50_000)
    before = _size(path)
    server = serve(SQLITE_PATH=str(path))
    upstream.add("/a.txt", b"a" * 100)
    files = {"files": [{"src": upstream.url("/a.txt")}]}
    bundle = requests.post(server.url("/"), json=files, timeout=10).json()
    secret_path = f"/{bundle['id']}/{bundle['secret']}"

    results: list[tuple[str, int, float]] = []
    stop = threading.Event()

    def traffic() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                for method, url, body in (("GET", server.url(secret_path), None),
                                          ("POST", server.url("/"), files),
                                          ("GET", server.url("/health-check"), None)):
                    started = time.monotonic()
                    status = session.request(method, url, json=body, timeout=30).status_code
                    results.append((method, status, time.monotonic() - started))

    loop = threading.Thread(target=traffic)
    loop.start()
    time.sleep(0.3)
    env = {**os.environ, "DB_INTERFACE": "sqlite", "SQLITE_PATH": str(path), "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    purge = subprocess.run([sys.executable, "-m", "zipstream.cli", "purge-expired"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300, check=False)
    purge_took = time.monotonic() - started
    time.sleep(0.3)
    stop.set()
    loop.join()

    assert purge.returncode == 0, purge.stderr
    assert "removed 50000 expired bundle(s)" in purge.stdout
    failed = [result for result in results if result[1] >= 400]
    assert not failed, failed[:5]
    slowest = max(took for _, _, took in results)
    print(f"purge of 50,000 bundles: {purge_took:.1f} s; {len(results)} requests meanwhile, "
          f"slowest {slowest * 1000:.0f} ms")
    assert slowest < 1.0, f"a request waited {slowest:.2f} s during the purge"
    after = _size(path)
    print(f"file size: {before / 1e6:.1f} MB before, {after / 1e6:.1f} MB after")
    assert after < before / 4, (before, after)  # the freed pages went back to the filesystem
    assert requests.get(server.url(secret_path), timeout=10).status_code == 200


def _concurrent_creates(server: LiveServer, count: int) -> list[tuple[int, str]]:
    """`count` POST / at once (separate connections); each (status, body when not 201)."""
    barrier = threading.Barrier(count)
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def create() -> None:
        barrier.wait()
        response = requests.post(server.url("/"), json={"files": []}, timeout=60)
        with lock:
            results.append((response.status_code, "" if response.status_code == 201 else response.text[:200]))

    threads = [threading.Thread(target=create) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_many_concurrent_writes_on_one_worker_all_succeed(serve: Callable[..., LiveServer], tmp_path: Path) -> None:
    """6+ concurrent writes on one worker used to lock each other out (503 "database is locked").

    Each statement of a write transaction went through the worker's 4-thread write pool on its own:
    writers waiting in BEGIN IMMEDIATE held every thread, the lock holder could not run its COMMIT.
    """
    server = serve(SQLITE_PATH=str(tmp_path / "many.sqlite3"), DB_TIMEOUT="2")
    results = _concurrent_creates(server, 20)
    failed = [result for result in results if result[0] != 201]
    assert not failed, f"{len(failed)} of 20 concurrent POST / failed: {failed[:3]}"


def test_writers_queued_behind_another_process_all_succeed(serve: Callable[..., LiveServer],
                                                           tmp_path: Path) -> None:
    """Another process holds the write lock 3 s (DB_TIMEOUT 5 s): 10 writers of one worker queue, then succeed."""
    path = tmp_path / "queued.sqlite3"
    server = serve(SQLITE_PATH=str(path), DB_TIMEOUT="5")
    assert requests.post(server.url("/"), json={"files": []}, timeout=10).status_code == 201
    holder = hold_write_lock(path, HOLD)
    started = time.monotonic()
    results = _concurrent_creates(server, 10)
    took = time.monotonic() - started
    holder.join()
    failed = [result for result in results if result[0] != 201]
    assert not failed, f"{len(failed)} of 10 writers failed though the lock was released at {HOLD:.0f} s: {failed[:3]}"
    assert took >= HOLD - 1.0  # they really waited for the other process
