"""The database goes away and comes back: 503 + Retry-After meanwhile, recovery without a restart.

A throwaway PostgreSQL cluster (initdb + pg_ctl, run as the unprivileged `postgres` user, on a free
port with its socket in a temp dir) is really stopped and started under the running gunicorn.
Also: concurrent appends and a DELETE racing a download, on the shared test Postgres.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from zipstream.repositories.postgres import PostgresRepository

from .support import ci
from .support.live import LiveServer, free_port
from .support.upstream import UpstreamServer

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/local/bin"))


class Cluster:
    """A private PostgreSQL cluster the test can stop and start."""

    def __init__(self, root: Path, user: str) -> None:
        self.root = root
        self.data = root / "data"
        self.user = user
        self.port = free_port()
        self.url = f"postgresql://{user}@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = [] if os.geteuid() != 0 else ["runuser", "-u", self.user, "--"]
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user, "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "-t", "30", "start")

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not (PG_BIN / "initdb").exists():
        ci.missing(f"no initdb in {PG_BIN}")
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    root = tmp_path_factory.mktemp("pg")
    if os.geteuid() == 0:
        shutil.chown(root, user)
        for parent in root.parents:  # pytest's temp dirs are 0700: let the postgres user through
            if parent == Path(tempfile.gettempdir()):
                break
            parent.chmod(parent.stat().st_mode | 0o001)
    cluster = Cluster(root, user)
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            cluster.stop()


def _timed(method: str, url: str, **kwargs: object) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.request(method, url, timeout=15, **kwargs)  # type: ignore[arg-type]
    return response, time.monotonic() - started


def test_database_outage_and_recovery(cluster: Cluster, serve: Callable[..., LiveServer],
                                      upstream: UpstreamServer) -> None:
    PostgresRepository(cluster.url).migrate()
    server = serve(DB_INTERFACE="postgres", DB_CNXN=cluster.url, DB_TIMEOUT="2")
    upstream.add("/a.txt", b"a")
    files = [{"src": upstream.url("/a.txt")}]
    created = requests.post(server.url("/"), json={"files": files}, timeout=10)
    assert created.status_code == 201
    bundle = created.json()
    secret_path = f"/{bundle['id']}/{bundle['secret']}"
    assert requests.get(server.url(secret_path), timeout=10).status_code == 200

    cluster.stop()
    for method, path, body in [("POST", "/", {"files": files}), ("GET", secret_path, None),
                               ("GET", f"/{bundle['id']}", None), ("PUT", secret_path, {"files": files}),
                               ("DELETE", secret_path, None), ("GET", "/health-check", None)]:
        response, took = _timed(method, server.url(path), json=body)
        assert response.status_code == 503, (method, path, response.text)
        assert response.headers["Content-Type"] == "application/json"
        assert int(response.headers["Retry-After"]) > 0
        assert "database unavailable" in response.json()["error"]["message"]
        assert took < 5, (method, path, took)

    cluster.start()
    deadline = time.monotonic() + 15
    while requests.get(server.url("/health-check"), timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "did not recover"
        time.sleep(0.2)
    assert requests.get(server.url(secret_path), timeout=10).json()["id"] == bundle["id"]
    assert requests.post(server.url("/"), json={"files": files}, timeout=10).status_code == 201
    assert requests.get(server.url(f"/{bundle['id']}"), timeout=10).status_code == 200


def test_concurrent_appends_and_delete_racing_downloads(postgres_url: str, serve: Callable[..., LiveServer],
                                                        upstream: UpstreamServer) -> None:
    table = f"outage_{os.getpid()}_{int(time.time() * 1000) % 100000}"
    PostgresRepository(postgres_url, table=table).migrate()
    server = serve(DB_INTERFACE="postgres", DB_CNXN=postgres_url, TABLE_NAME=table, WORKER_CONNECTIONS="200")
    upstream.add("/a.bin", b"x" * 200_000)
    upstream.set_behaviour("/a.bin", stall_after=100_000, stall_seconds=0.5)
    src = upstream.url("/a.bin")
    bundle = requests.post(server.url("/"), json={"files": [{"src": src}]}, timeout=10).json()
    secret_path = f"/{bundle['id']}/{bundle['secret']}"
    statuses: list[int] = []
    lock = threading.Lock()

    def append(index: int) -> None:
        for step in range(5):
            response = requests.put(server.url(secret_path), timeout=20,
                                    json={"files": [{"src": src, "dst": f"{index}-{step}.bin"}]})
            with lock:
                statuses.append(response.status_code)

    threads = [threading.Thread(target=append, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 40
    files = requests.get(server.url(secret_path), timeout=10).json()["files"]
    assert len(files) == 41  # no lost append
    assert len({ref.get("dst") for ref in files}) == 41

    # Downloads in flight while the bundle is deleted: each either finishes whole or never starts.
    results: list[tuple[int, int, int]] = []

    def download() -> None:
        response = requests.get(server.url(f"/{bundle['id']}"), timeout=60)
        with lock:
            results.append((response.status_code, len(response.content),
                            int(response.headers.get("Content-Length", -1))))

    downloads = [threading.Thread(target=download) for _ in range(3)]
    for thread in downloads:
        thread.start()
    time.sleep(0.3)
    deletes = [requests.delete(server.url(secret_path), timeout=10).status_code for _ in range(2)]
    for thread in downloads:
        thread.join()
    assert deletes[0] == 200
    assert deletes[1] == 404
    for status, received, announced in results:
        assert status in (200, 404), results
        if status == 200:
            assert received == announced
    assert requests.get(server.url(secret_path), timeout=10).status_code == 404
    assert requests.get(server.url(f"/{bundle['id']}"), timeout=10).status_code == 404
    assert "Traceback" not in server.log_text()
