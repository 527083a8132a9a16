"""`zipstream purge-expired` on N expired SQLite bundles while the service serves (the README's purge table).

Run from the repository root: `.venv/bin/python -m bench.purge_while_serving 200000` (N defaults to 50,000;
an optional second argument names another tree to measure, e.g. an older checkout).
Starts gunicorn (1 gevent worker) on a fresh SQLite file holding N expired bundles, runs
a request loop (GET bundle JSON, POST create, GET /health-check) while `zipstream purge-expired`
runs, and prints the purge's duration, the requests' failures and slowest latency, and the file size
(main + WAL) before and after. Loopback only.
"""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

count = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
root = Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else Path(__file__).resolve().parents[1]
tmp = Path(tempfile.mkdtemp(prefix="zipstream-purge-bench-"))
db = tmp / "z.sqlite3"
env = {**os.environ, "PYTHONPATH": str(root), "DB_INTERFACE": "sqlite", "SQLITE_PATH": str(db),
       "HTTP_ALLOW_PRIVATE": "true", "FS_INTERFACES": "https", "WEB_CONCURRENCY": "1"}
subprocess.run([sys.executable, "-m", "zipstream.cli", "migrate"], cwd=root, env=env, check=True,
               capture_output=True)
con = sqlite3.connect(db)
past = int(time.time()) - 3600
ids = [str(uuid.uuid4()) for _ in range(count)]
with con:
    con.executemany("INSERT INTO bundles (id, secret, filename, compression, expiration_date, created_at,"
                    " file_count) VALUES (?, 's', 'old.zip', 'stored', ?, ?, 1)", [(i, past, past) for i in ids])
    con.executemany("INSERT INTO bundles_files (bundle_id, position, src) VALUES (?, 0, ?)",
                    [(i, f"https://example.invalid/{i}/file.bin") for i in ids])
con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
con.close()


def size() -> int:
    wal = Path(f"{db}-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


before = size()
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
base = f"http://127.0.0.1:{port}"
server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", str(root / "gunicorn.conf.py"), "--bind",
                           f"127.0.0.1:{port}", "zipstream.wsgi:app"], cwd=root, env={**env, "PORT": str(port)},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(100):
        try:
            if requests.get(base + "/health-check", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.1)
    files = {"files": [{"src": "http://127.0.0.1:9/none.bin"}]}
    # The source is not fetched on create (pre-flight runs on download).
    bundle = requests.post(base + "/", json=files, timeout=10).json()
    secret = f"/{bundle['id']}/{bundle['secret']}"
    results: list[tuple[str, int, float]] = []
    stop = threading.Event()

    def loop() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                for method, path, body in (("GET", secret, None), ("POST", "/", files), ("GET", "/health-check", None)):
                    t = time.monotonic()
                    status = session.request(method, base + path, json=body, timeout=60).status_code
                    results.append((f"{method} {path[:12]}", status, time.monotonic() - t))

    thread = threading.Thread(target=loop)
    thread.start()
    time.sleep(0.5)
    t = time.monotonic()
    purge = subprocess.run([sys.executable, "-m", "zipstream.cli", "purge-expired"], cwd=root, env=env,
                           capture_output=True, text=True)
    took = time.monotonic() - t
    time.sleep(0.5)
    stop.set()
    thread.join()
    failed = [r for r in results if r[1] >= 400]
    slowest = max(results, key=lambda r: r[2])
    print(f"root={root} bundles={count}: purge {took:.1f} s, exit {purge.returncode}, {purge.stdout.strip()!r}")
    print(f"  {len(results)} requests meanwhile, {len(failed)} failed {sorted({r[1] for r in failed})}, "
          f"slowest {slowest[2] * 1000:.0f} ms ({slowest[0]})")
    print(f"  file size before {before / 1e6:.1f} MB, after {size() / 1e6:.1f} MB")
finally:
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=20)
