"""A bad gunicorn setting stops the service with one line naming it, not a traceback (real gunicorn)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("name", "value"), [
    ("WORKER_CONNECTIONS", "abc"), ("GRACEFUL_TIMEOUT", "1h"), ("WORKER_TIMEOUT", "-5"), ("PORT", "x"),
    ("WEB_CONCURRENCY", "0"), ("HEADER_TIMEOUT", "0"), ("HEADER_TIMEOUT", "2.5"),
    # gunicorn's socket.bind raised OverflowError with a traceback.
    ("PORT", "70000"),
    # Was read unchecked by the master: each worker then failed to boot, with gunicorn's lines around it.
    ("LOG_LEVEL", "loud"),
])
def test_a_bad_setting_is_one_line(tmp_path: Path, name: str, value: str) -> None:
    env = {**os.environ, "SQLITE_PATH": str(tmp_path / "z.sqlite3"), name: value}
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--config", str(ROOT / "gunicorn.conf.py"), "--bind", "127.0.0.1:0",
         "zipstream.wsgi:app"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(f"zipstream: configuration error: {name} must be"), done.stderr
