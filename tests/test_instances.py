"""Several instances on one database, and restarts: what a load balancer over two pods or dynos relies on.

Each instance is its own gunicorn master (tests/support/live.py) on a shared PostgreSQL database (a
throwaway one) or DynamoDB table (moto server), migrated once by `zipstream migrate` as a release step would.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests

from .support.live import LiveServer, live_server
from .support.moto import MotoServer
from .support.pgdb import throwaway_database
from .support.upstream import UpstreamServer

ROOT = Path(__file__).resolve().parents[1]
CLOSE = {"Connection": "close"}  # an idle keep-alive connection would hold a worker's graceful exit
FILES = {f"/m{index}.bin": hashlib.sha256(str(index).encode()).digest() * (12_500 * (index + 1))
         for index in range(3)}  # 400 kB, 800 kB, 1.2 MB of incompressible-enough bytes

Pair = tuple[LiveServer, LiveServer]


def _migrate(env: dict[str, str]) -> None:
    """The release step, once for both instances."""
    done = subprocess.run([sys.executable, "-m", "zipstream.cli", "migrate"], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


@pytest.fixture(params=["postgres", "dynamodb"])
def database_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The settings both instances share: a fresh, migrated PostgreSQL database or DynamoDB table."""
    if request.param == "postgres":
        server_url: str = request.getfixturevalue("postgres_url")
        with throwaway_database(server_url, "zs_instances") as url:
            env = {"DB_INTERFACE": "postgres", "DB_CNXN": url}
            _migrate(env)
            yield env
    else:
        moto: MotoServer = request.getfixturevalue("moto_server")
        # moto answers one request at a time: 100 concurrent appends queue there for seconds, which
        # DynamoDB itself doesn't do, so each call gets longer than DB_TIMEOUT's default (as in support/dynamo.py).
        env = {"DB_INTERFACE": "dynamodb", "TABLE_NAME": "instances_" + uuid.uuid4().hex[:12],
               "AWS_ENDPOINT_URL_DYNAMODB": moto.endpoint, "DB_TIMEOUT": "30"}
        _migrate(env)
        yield env


@pytest.fixture
def upstream_files() -> Iterator[UpstreamServer]:
    with UpstreamServer(FILES) as server:
        yield server


@pytest.fixture
def pair(database_env: dict[str, str], tmp_path: Path) -> Iterator[Pair]:
    """Two gunicorn masters (A and B) on the same database."""
    with ExitStack() as stack:
        a = stack.enter_context(live_server(database_env, tmp_path))
        b = stack.enter_context(live_server(database_env, tmp_path))
        yield a, b


def _create(server: LiveServer, upstream: UpstreamServer) -> dict[str, str]:
    files = [{"src": upstream.url(path), "dst": path.lstrip("/")} for path in FILES]
    created = requests.post(server.url("/"), json={"files": files}, headers=CLOSE, timeout=30)
    assert created.status_code == 201, created.text
    answer: dict[str, str] = created.json()
    return answer


def _curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "--silent", "--show-error", *args], capture_output=True, timeout=60, check=False)


def _check_zip(data: bytes) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        assert {name: archive.read(name) for name in archive.namelist()} == \
            {path.lstrip("/"): content for path, content in FILES.items()}


def test_bundle_made_on_a_downloads_identically_from_b(pair: Pair, upstream_files: UpstreamServer) -> None:
    a, b = pair
    bundle = _create(a, upstream_files)
    from_a = requests.get(a.url(f"/{bundle['id']}"), headers=CLOSE, timeout=30)
    from_b = requests.get(b.url(f"/{bundle['id']}"), headers=CLOSE, timeout=30)
    assert from_a.status_code == from_b.status_code == 200, (from_a.text[:300], from_b.text[:300])
    assert from_a.content == from_b.content
    assert from_a.headers["ETag"] == from_b.headers["ETag"]
    assert from_a.headers["Content-Length"] == from_b.headers["Content-Length"] == str(len(from_a.content))
    _check_zip(from_b.content)
    # The manage link works on the other instance too.
    shown = requests.get(b.url(f"/{bundle['id']}/{bundle['secret']}"), headers=CLOSE, timeout=30)
    assert shown.status_code == 200 and len(shown.json()["files"]) == len(FILES)


def test_download_cut_on_a_resumes_on_b_with_curl(pair: Pair, upstream_files: UpstreamServer,
                                                   tmp_path: Path) -> None:
    a, b = pair
    bundle = _create(a, upstream_files)
    full = tmp_path / "full.zip"
    assert _curl("--fail", "-o", str(full), b.url(f"/{bundle['id']}")).returncode == 0

    # The second member's source stalls part-way: curl gives up on A with part of the zip written.
    upstream_files.set_behaviour("/m1.bin", stall_after=300_000, stall_seconds=30)
    part = tmp_path / "photos.zip"
    cut = _curl("--fail", "--max-time", "3", "-o", str(part), a.url(f"/{bundle['id']}"))
    assert cut.returncode == 28, cut.stderr  # operation timed out
    written = part.stat().st_size
    assert 0 < written < full.stat().st_size
    upstream_files.clear_behaviour("/m1.bin")

    resumed = _curl("--fail", "-C", "-", "-o", str(part), "-D", str(tmp_path / "headers"), b.url(f"/{bundle['id']}"))
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "headers").read_text().startswith("HTTP/1.1 206")
    assert part.read_bytes() == full.read_bytes()
    _check_zip(part.read_bytes())


def test_concurrent_appends_split_across_both_lose_nothing(pair: Pair, upstream_files: UpstreamServer) -> None:
    bundle = _create(pair[0], upstream_files)
    manage = f"/{bundle['id']}/{bundle['secret']}"
    src = upstream_files.url("/m0.bin")
    statuses: list[int] = []
    lock = threading.Lock()

    def append(server: LiveServer, thread: int) -> None:
        with requests.Session() as session:
            for step in range(5):
                response = session.put(server.url(manage), timeout=60, headers=CLOSE,
                                       json={"files": [{"src": src, "dst": f"{server.port}/{thread}-{step}.bin"}]})
                with lock:
                    statuses.append(response.status_code)

    threads = [threading.Thread(target=append, args=(server, index)) for server in pair for index in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 100
    for server in pair:
        files = requests.get(server.url(manage), headers=CLOSE, timeout=30).json()["files"]
        names = [ref.get("dst") for ref in files]
        expected = {f"{s.port}/{t}-{step}.bin" for s in pair for t in range(10) for step in range(5)}
        assert len(names) == len(FILES) + 100
        assert set(names) == expected | {path.lstrip("/") for path in FILES}  # each exactly once (length above)


# --- restarts (SIGTERM) ---------------------------------------------------------------------------------

def _in_flight(server: LiveServer, path: str, out: Path) -> tuple[subprocess.Popen[bytes], Callable[[], int]]:
    """Start curl on `path` (its messages in `out`.err); returns it and a function giving the bytes written."""
    with out.with_suffix(".err").open("wb") as errors:
        process = subprocess.Popen(["curl", "--silent", "--show-error", "--fail", "-o", str(out), server.url(path)],
                                   stderr=errors)
    return process, lambda: out.stat().st_size if out.exists() else 0


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("everyone", [False, True], ids=["master", "every-process"])
def test_sigterm_lets_an_in_flight_download_finish(serve: Callable[..., LiveServer], upstream_files: UpstreamServer,
                                                   tmp_path: Path, everyone: bool) -> None:
    """A restart (SIGTERM to the master; Heroku sends it to every process of the dyno) waits for the download."""
    server = serve(GRACEFUL_TIMEOUT="20")
    bundle = _create(server, upstream_files)
    full = requests.get(server.url(f"/{bundle['id']}"), headers=CLOSE, timeout=30).content
    upstream_files.set_behaviour("/m1.bin", stall_after=300_000, stall_seconds=2)
    curl, written = _in_flight(server, f"/{bundle['id']}", tmp_path / "slow.zip")
    _wait_for(lambda: written() > 400_000, 10, "the download never started")

    began = time.monotonic()
    for pid in [server.process.pid, *(server.worker_pids() if everyone else [])]:
        os.kill(pid, signal.SIGTERM)
    assert curl.wait(timeout=20) == 0, (tmp_path / "slow.err").read_text()
    assert (tmp_path / "slow.zip").read_bytes() == full
    assert server.process.wait(timeout=20) == 0
    assert time.monotonic() - began < 15  # the stall is 2 s; not the whole GRACEFUL_TIMEOUT
    # New connections are refused once the master has gone.
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url("/health-check"), timeout=5)


def test_sigterm_cuts_a_download_longer_than_graceful_timeout(serve: Callable[..., LiveServer],
                                                             upstream_files: UpstreamServer, tmp_path: Path) -> None:
    server = serve(GRACEFUL_TIMEOUT="1")
    bundle = _create(server, upstream_files)
    upstream_files.set_behaviour("/m1.bin", stall_after=300_000, stall_seconds=30)
    curl, written = _in_flight(server, f"/{bundle['id']}", tmp_path / "cut.zip")
    _wait_for(lambda: written() > 400_000, 10, "the download never started")

    began = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=20) == 0
    stopped = time.monotonic() - began
    status = curl.wait(timeout=20)
    error = (tmp_path / "cut.err").read_text()
    # curl 18: "transfer closed with N bytes remaining": the client knows the zip is incomplete.
    assert status == 18, (status, error)
    assert "remaining" in error
    assert stopped < 10  # GRACEFUL_TIMEOUT=1, plus gunicorn's own shutdown


def test_sigterm_does_not_wait_for_an_idle_keepalive_connection(serve: Callable[..., LiveServer]) -> None:
    """A proxy's idle connection to a backend must not hold a restart (nothing is in flight on it)."""
    server = serve(GRACEFUL_TIMEOUT="6")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle:
        idle.sendall(b"GET /health-check HTTP/1.1\r\nHost: zipstream\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += idle.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200")
        began = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=20) == 0
        assert time.monotonic() - began < 3
        # The server closed the idle connection (the rest of the health-check body, then the end).
        rest = b""
        while chunk := idle.recv(4096):
            rest += chunk
        assert b"ok" in answer + rest
