"""Run the real service (gunicorn + gevent worker) on a free local port for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveServer:
    """A running gunicorn; `url(path)` builds request URLs, `pid` is the master's."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.base_url = f"http://127.0.0.1:{port}"

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False)
        return [int(pid) for pid in out.stdout.split()]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def live_server(env: Mapping[str, str], tmp: Path, workers: int = 1) -> Iterator[LiveServer]:
    """Start gunicorn with ZipStream's gunicorn.conf.py and `env`; stop it afterwards."""
    port = free_port()
    log = tmp / f"gunicorn-{port}.log"
    full_env = {
        **os.environ,
        "PORT": str(port),
        "WEB_CONCURRENCY": str(workers),
        "SQLITE_PATH": str(tmp / f"live-{port}.sqlite3"),
        "HTTP_ALLOW_PRIVATE": "true",
        "FS_INTERFACES": "https",
        "PYTHONWARNINGS": "ignore",
        **env,
    }
    command = [sys.executable, "-m", "gunicorn", "--config", str(ROOT / "gunicorn.conf.py"),
               "--bind", f"127.0.0.1:{port}", "zipstream.wsgi:app"]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=sink, stderr=subprocess.STDOUT)
    server = LiveServer(process, port, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{server.log_text()[-3000:]}")
            try:
                if requests.get(server.url("/health-check"), timeout=2).status_code in (200, 503):
                    break
            except (requests.ConnectionError, requests.Timeout):  # workers still booting
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start:\n{server.log_text()[-3000:]}")
            time.sleep(0.1)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
