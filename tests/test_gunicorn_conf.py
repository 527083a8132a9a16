"""gunicorn settings in zipstream/gunicorn_conf.py, checked on a real gunicorn start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

from zipstream import sizing

from .support.live import ROOT, LiveServer, free_port


def test_a_read_only_home_logs_no_control_socket_error(serve: Callable[..., LiveServer], tmp_path: Path) -> None:
    # gunicorn 25.1+ would put its control socket at $HOME/.gunicorn/gunicorn.ctl (one per user: several
    # instances on a host share it). Root ignores permission bits, so it gets /proc, read-only for all.
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)
    server = serve(HOME="/proc" if os.geteuid() == 0 else str(home), XDG_RUNTIME_DIR="")
    assert requests.get(server.url("/health-check"), timeout=10).status_code == 200
    time.sleep(1.0)  # the control server would have failed by now
    text = server.log_text()
    assert "Booting worker" in text
    assert "Control server error" not in text
    assert "control" not in text.lower()


def test_workers_follow_the_usable_cpus(tmp_path: Path) -> None:
    """Without WEB_CONCURRENCY (which live_server always sets), gunicorn starts one worker per usable CPU."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if name != "WEB_CONCURRENCY"}
    env.update(SQLITE_PATH=str(tmp_path / "db.sqlite3"), GRACEFUL_TIMEOUT="5")
    command = [sys.executable, "-m", "gunicorn", "--config", str(ROOT / "gunicorn.conf.py"),
               "--bind", f"127.0.0.1:{port}", "zipstream.wsgi:app"]
    expected = max(2, sizing.usable_cpus())
    with (tmp_path / "log").open("wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True,
                                      check=False).stdout.split()
            if len(children) == expected and _answers(f"http://127.0.0.1:{port}/health-check"):
                break
            assert process.poll() is None, (tmp_path / "log").read_text()
            assert time.monotonic() < deadline, (children, expected)
            time.sleep(0.2)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False
