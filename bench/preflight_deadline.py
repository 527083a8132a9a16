"""Pre-flight deadline and hang-up figures of the README (real gunicorn, real local upstream).

Run from the repository root: `.venv/bin/python -m bench.preflight_deadline silent|disconnect`.
1. `silent`: time until a silent source (accepts, never answers) gets its answer, default settings;
2. `disconnect`: upstream requests after the client hangs up: 200 sources answering after 1 s each.
"""
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import requests

from tests.support.live import live_server
from tests.support.upstream import UpstreamServer

what = sys.argv[1]
tmp = Path(tempfile.mkdtemp(prefix="zipstream-deadline-bench-"))
with UpstreamServer() as up, live_server({}, tmp) as server:
    if what == "silent":
        up.add("/silent.bin", b"x")
        up.set_behaviour("/silent.bin", silent=True)
        started = time.monotonic()
        r = requests.post(server.url("/bundle"), json={"files": [{"src": up.url("/silent.bin")}]}, timeout=300)
        print(f"silent source, default settings: {r.status_code} after {time.monotonic() - started:.1f} s, "
              f"{len(up.requests)} upstream requests: {r.text[:300]}")
    else:
        srcs = []
        for i in range(200):
            up.add(f"/s{i}.bin", b"s")
            srcs.append(up.url(f"/s{i}.bin"))
        up.set_behaviour(latency=1.0)
        body = json.dumps({"files": [{"src": s} for s in srcs]}).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as c:
            c.sendall(b"POST /bundle HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                      + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(0.5)
        gone = time.monotonic()
        at_hangup = len(up.requests)
        time.sleep(10)
        print(f"200 sources x 1 s, client hung up after 0.5 s: {at_hangup} upstream requests before the hang-up, "
              f"{up.requests_since(gone)} after it, {up.requests_since(gone + 1.0)} of them more than 1 s after "
              f"(10 s watched)")
