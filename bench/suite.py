"""The benchmarks B1-B8 (README, Performance); each starts its own upstream (nginx) and service and returns a Table."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any

import requests

from tests.support.live import free_port
from tests.support.nginx import Nginx
from zipstream.config import PREFLIGHT_CONCURRENCY, Config

from .harness import (
    Fetch,
    Table,
    curl,
    curl_many,
    interleaved,
    json_body,
    make_file,
    proc_stat,
    raise_nofile,
    ratio,
    reset_peak_rss,
    service,
    time_to_first_byte,
    upstream_with,
    workers_stat,
)

MiB = 1 << 20
GiB = 1 << 30


def _size(n: int) -> str:
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} B"


def _bundle(session: requests.Session, base: str, srcs: list[str], compression: str = "stored") -> str:
    body = {"files": [{"src": src} for src in srcs], "compression": compression}
    response = session.post(base + "/", json=body, timeout=120)
    response.raise_for_status()
    return f"{base}/{response.json()['id']}"


def _wall(fetcher: Callable[..., Fetch], *args: Any, **kwargs: Any) -> dict[str, float]:
    return {"s": fetcher(*args, **kwargs).wall}


def _counted(upstream: Nginx, fetcher: Callable[..., Fetch], *args: Any, **kwargs: Any) -> dict[str, float]:
    """`fetcher(*args, **kwargs)`'s wall time and the upstream requests it caused (nginx's count)."""
    before = upstream.requests_served()
    wall = fetcher(*args, **kwargs).wall
    return {"s": wall, "requests": upstream.requests_served() - before}


def _first(url: str, post_json: Path | None = None) -> dict[str, float]:
    return {"first": time_to_first_byte(url, post_json=post_json)}


def _concurrency(env: Mapping[str, str]) -> int:
    """The service's PREFLIGHT_CONCURRENCY under `env` (its default unless set)."""
    return Config.from_env({"PREFLIGHT_CONCURRENCY": str(PREFLIGHT_CONCURRENCY.default), **env}).preflight_concurrency


def _direct_widths(parallel: int, env: Mapping[str, str]) -> list[int]:
    """Connection counts the best concurrent direct fetch is tried with: the bench's `parallel` and the
    service's own requests in flight (a limit at fewer connections than the service uses is no limit)."""
    return sorted({parallel, _concurrency(env)})


def _direct_limits(srcs: list[str], widths: list[int]) -> dict[str, Callable[[], Mapping[str, float]]]:
    return {f"direct {width}": partial(_wall, curl_many, srcs, width) for width in widths}


def _best_direct(got: Mapping[str, Mapping[str, float]], widths: list[int]) -> tuple[float, int]:
    """The fastest of the direct fetches (median seconds) and its connection count."""
    return min((got[f"direct {width}"]["s"], width) for width in widths)


# -- B1 -------------------------------------------------------------------------------------------
class _Relay(Nginx):
    """nginx as a plain relay in front of `upstream`: every byte read into user space and written out again,
    in C, with reused 1 MiB buffers, nothing checked. What any service in the data path costs at the least."""

    def __init__(self, upstream: Nginx) -> None:
        super().__init__(proxy_to=upstream.port)

    def config(self) -> str:
        tmp = self._tmp
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = " ".join(f"{kind}_temp_path {tmp}/{kind};"
                        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return f"""{user}daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    {temp}
    tcp_nodelay on;
    upstream files {{ server 127.0.0.1:{self.proxy_to}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://files;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
            proxy_buffer_size 1m;
            proxy_buffers 8 1m;
            proxy_busy_buffers_size 2m;
            proxy_max_temp_file_size 0;
        }}
    }}
    server {{
        listen 127.0.0.1:{self.status_port};
        location / {{ stub_status; }}
    }}
}}
"""


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's waited-for children: curl's, around a curl run."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _cpu_of(pid: int) -> float:
    return proc_stat(pid).cpu_seconds


def _scheduled(pid: int, column: int) -> float:
    """Seconds all threads of `pid` spent on a CPU (column 0) or runnable, waiting for one (column 1), from
    /proc/<pid>/task/*/schedstat; 0.0 where the kernel keeps no such statistics."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[column])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def _costed(fetcher: Callable[[], Fetch], processes: Mapping[str, Callable[[], float]]) -> dict[str, float]:
    """`fetcher()`'s wall time, curl's CPU seconds and the CPU seconds each of `processes` spent meanwhile."""
    before = {name: read() for name, read in processes.items()}
    client = _children_cpu()
    wall = fetcher().wall
    got = {"s": wall, "curl": _children_cpu() - client}
    got.update({name: read() - before[name] for name, read in processes.items()})
    return got


@contextmanager
def _python_relay(upstream: Nginx, *mode: str) -> Iterator[tuple[str, int]]:
    """bench/python_relay.py (in `mode`) in front of `upstream`: (base URL, pid)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.python_relay", str(port), str(upstream.port), *mode],
                               cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("bench.python_relay did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(timeout=15)


_PATHS = {"direct": "direct (nginx sendfile -> curl)", "relay": "through nginx proxy_pass (C, 1 MiB buffers)",
          "python": "through the least Python relay (bench/python_relay.py)",
          "splice": "through a splice relay: no user-space copy, no CRC (bench/python_relay.py splice)",
          "get": "ZipStream GET /:id"}


def big_files(tmp: Path, runs: int, cases: list[tuple[int, int]], env: dict[str, str], parallel: int) -> list[Table]:
    """B1: N x size through POST /bundle and GET /:id vs the same files fetched straight from nginx, through a
    relay in C (nginx proxy_pass) and through the least Python relay; and the CPU every process spends per GB."""
    table = Table("b1_big_files", "B1 big files: zip download vs direct download (curl, nginx upstream)",
                  ["files", "direct, one after another s", f"direct, {parallel} at once s",
                   "limit: through a relay s", "POST /bundle s", "GET /:id s", "GET /:id / direct",
                   "GET /:id / relay", "POST / direct", "zip MB/s"])
    bound = Table("b1_cpu", "B1 what bounds it: CPU per GB of every process on the path (the same runs)",
                  ["files", "path", "s", "x direct", "upstream nginx CPU s/GB", "relay or worker CPU s/GB",
                   "curl CPU s/GB", "all processes CPU s/GB", "cores busy",
                   "worker on a CPU / waiting for one / asleep, of the wall time"])
    for count, size in cases:
        paths = {f"/b1/{size}/{i}.bin": make_file(tmp / f"b1-{size}-{i}.bin", size, size <= 64 * MiB)
                 for i in range(count)}
        upstream = upstream_with(paths)
        relay = _Relay(upstream).start()
        try:
            with (service(tmp, env) as server, requests.Session() as session,
                  _python_relay(upstream) as (python_base, python_pid),
                  _python_relay(upstream, "splice") as (splice_base, splice_pid)):
                srcs = [upstream.url(name) for name in paths]
                relayed = [relay.url(name) for name in paths]
                python_relayed = [python_base + name for name in paths]
                spliced = [splice_base + name for name in paths]
                url = _bundle(session, server.base_url, srcs)
                body = json_body(tmp, srcs)
                curl(url)  # warm-up: connections, page cache
                curl_many(relayed)
                curl_many(python_relayed)
                curl_many(spliced)
                one_off = server.url("/bundle")
                (pid,) = server.worker_pids()
                cpu = {"upstream": upstream.cpu_seconds, "relay": relay.cpu_seconds,
                       "python": partial(_cpu_of, python_pid), "splice": partial(_cpu_of, splice_pid),
                       "worker": partial(_cpu_of, pid),
                       "worker on cpu": partial(_scheduled, pid, 0), "worker waiting": partial(_scheduled, pid, 1)}
                got = interleaved(runs, {
                    "direct": partial(_costed, partial(curl_many, srcs), cpu),
                    "concurrent": partial(_wall, curl_many, srcs, parallel),
                    "relay": partial(_costed, partial(curl_many, relayed), cpu),
                    "python": partial(_costed, partial(curl_many, python_relayed), cpu),
                    "splice": partial(_costed, partial(curl_many, spliced), cpu),
                    "post": partial(_wall, curl, one_off, post_json=body),
                    "get": partial(_costed, partial(curl, url), cpu),
                })
        finally:
            relay.stop()
            upstream.stop()
        direct, get, post, through = got["direct"]["s"], got["get"]["s"], got["post"]["s"], got["relay"]["s"]
        files = f"{count} x {_size(size)}"
        table.add(files, direct, got["concurrent"]["s"], through, post, get, ratio(get, direct),
                  ratio(get, through), ratio(post, direct), count * size / get / 1e6)
        gb = count * size / 1e9
        for name, label in _PATHS.items():
            reading = got[name]
            middle = reading["relay"] + reading["python"] + reading["splice"] + reading["worker"]
            everyone = reading["upstream"] + middle + reading["curl"]
            on, waiting = reading["worker on cpu"] / reading["s"], reading["worker waiting"] / reading["s"]
            bound.add(files, label, reading["s"], ratio(reading["s"], direct), reading["upstream"] / gb,
                      middle / gb if name != "direct" else "-", reading["curl"] / gb, everyone / gb,
                      f"{everyone / reading['s']:.2f}",
                      f"{on:.0%} / {waiting:.0%} / {max(0.0, 1 - on - waiting):.0%}" if name == "get" else "-")
    table.notes.append(f"median of {runs} interleaved runs; client: curl to /dev/null (wall time of the curl "
                       "process, the same for every row); stored zip; files served by nginx with sendfile on "
                       "127.0.0.1 (random bytes up to 64 MiB, sparse above). Limits: the direct download of the "
                       "same files; the same through a relay (a second nginx, proxy_pass with 1 MiB buffers: "
                       "every byte copied through user space, as any service in the data path must, in C, "
                       "nothing checked). Target: GET /:id ≤ 1.05x direct (issue 16). b1_cpu.md: what bounds it.")
    bound.notes.append(f"the runs of b1_big_files (medians of {runs}). CPU: utime + stime from /proc (nginx's "
                       "workers, the relay, the service's one gevent worker; clock ticks of 10 ms) and curl's "
                       "rusage, per GB of member data. Loopback TCP's receive work is counted to whichever "
                       "process sends. cores busy: all processes' CPU seconds / wall seconds (at most the "
                       "machine's cores, less what else runs). The least Python relay: http.client read1 of up "
                       "to 1 MiB, zlib-ng CRC-32, gevent sendall; no framing, checks, WSGI or read-ahead. The "
                       "worker's time on a CPU and waiting for one (runnable) from /proc/<pid>/task/*/schedstat; "
                       "asleep: the rest (waiting for a socket). The splice relay moves the bytes socket -> pipe -> "
                       "socket inside the kernel (os.splice), blocking sockets, no CRC.")
    return [table, bound]


# -- B2 -------------------------------------------------------------------------------------------
def _delay_layer_cost(upstream: Nginx, paths: list[str], parallel: int) -> dict[str, Callable[[], Mapping[str, float]]]:
    """Actions timing the same files straight from nginx and through echo_sleep 0 (the delay layer's cost)."""
    plain = [upstream.direct(path) for path in paths]
    zero = [upstream.url(path, delay=0.0) for path in paths]
    return {"nginx": partial(_wall, curl_many, plain, parallel), "echo0": partial(_wall, curl_many, zero, parallel)}


def _cost_note(got: dict[str, dict[str, float]], count: int, parallel: int) -> str:
    nginx, echo0 = got["nginx"]["s"], got["echo0"]["s"]
    return (f"delay layer (nginx echo_sleep, then an internal redirect to the file): the {count} files, {parallel} "
            f"at once, straight from nginx {nginx:.3g} s, through echo_sleep 0 ms {echo0:.3g} s "
            f"({(echo0 - nginx) * 1000:+.0f} ms)")


def small_files(tmp: Path, runs: int, count: int, size: int, latency: float,
                variants: list[dict[str, str]], env: dict[str, str], parallel: int) -> Table:
    """B2: many small files behind per-request latency, for several pre-flight / read-ahead settings."""
    ms = f"{latency * 1000:.0f} ms"
    table = Table("b2_small_files", f"B2 many small files: {count} x {_size(size)}, {ms} upstream latency per "
                  "request (total time)",
                  ["client", "pre-flight", "PREFLIGHT_CONCURRENCY", "PREFETCH", "upstream requests",
                   "first byte s", "total s", "limit: best concurrent direct fetch s", "vs limit",
                   "speed-up vs one after another"])
    widths = _direct_widths(parallel, env)
    default_concurrency = f"{PREFLIGHT_CONCURRENCY.default} (default)"
    paths = [f"/b2/{i}.bin" for i in range(count)]
    upstream = upstream_with({}, latency=latency)
    try:
        for path in paths:
            upstream.add(path, os.urandom(size))
        srcs = [upstream.url(path) for path in paths]
        sequential = curl_many(srcs).wall  # the peers' territory: one request after another
        table.add(f"direct, one after another ({ms} each)", "-", "-", "-", count, "-", sequential, "-", "-", "1x")
        limits: dict[str, Callable[[], Mapping[str, float]]] = {
            **_direct_limits(srcs, widths), **_delay_layer_cost(upstream, paths, parallel)}
        body = json_body(tmp, srcs)
        for variant in variants:
            settings = {**env, **variant}
            with service(tmp, settings) as server, requests.Session() as session:
                url = _bundle(session, server.base_url, srcs)
                curl(url)  # warm-up: connections
                one_off = server.url("/bundle")
                got = interleaved(runs, {
                    "get": partial(_counted, upstream, curl, url),
                    "post": partial(_counted, upstream, curl, one_off, post_json=body),
                    "get first": partial(_first, url), "post first": partial(_first, one_off, body), **limits,
                })
            held = settings.get("PREFLIGHT_FETCH_BYTES", "65536") != "0"
            limit, width = _best_direct(got, widths)
            for name, label in (("get", "GET /:id (stored zip)"), ("post", "POST /bundle")):
                table.add(label, "GET first 64 KiB" if held else "HEAD",
                          settings.get("PREFLIGHT_CONCURRENCY", default_concurrency),
                          settings.get("PREFETCH", "16 (default)"),
                          f"{got[name]['requests']:.0f}", got[f"{name} first"]["first"], got[name]["s"], limit,
                          ratio(got[name]["s"], limit),
                          f"{sequential / got[name]['s']:.1f}x")
            table.notes.append(f"{variant or 'defaults'}: limit at {width} connections; "
                               + _cost_note(got, count, parallel))
    finally:
        upstream.stop()
    table.notes.insert(0, (
        f"median of {runs} interleaved runs (the zip's GET and POST, their first bytes, the limit and the delay "
        "layer's cost, order rotated each round) after one warm-up; one run for the one-after-another case. "
        "Client: curl (total: wall time of the curl process); first byte: http.client, a request of its own "
        "that hangs up once the status line is in. Upstream: nginx, latency added by its echo module. Limit: "
        "the best concurrent direct fetch: the same files from the same upstream with curl, the fastest of "
        f"{' and '.join(map(str, widths))} connections (the bench's --parallel and the service's "
        "PREFLIGHT_CONCURRENCY). upstream requests: per zip download (nginx's count). Targets (issue 16): total "
        "≤ 0.55 s (≥ 40x faster than the fastest peer's 21.3 s on this workload)."))
    return table


# -- B3 and B8: crowds of slow readers --------------------------------------------------------------
async def _slow_reader(host: str, port: int, path: str, started: list[int], go: asyncio.Event, first: int,
                       read_size: int, pause: float, drain_buffer: int, waves: asyncio.Semaphore,
                       receive_buffer: int = 4096) -> tuple[int, str]:
    """One download on a raw socket with a small receive buffer: read the head and `first` body bytes, wait
    for `go`, then read the rest `read_size` at a time with `pause` s between reads (the receive buffer raised
    to `drain_buffer` first, if given). Nothing is buffered in user space: what the client does not read stays
    in the service. Returns (body bytes, sha256 of the body)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # a slow reader's small window
    sock.setblocking(False)
    try:
        async with waves:  # connect in waves: the listen backlog is finite
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            received = b""
            while b"\r\n\r\n" not in received:
                data = await loop.sock_recv(sock, 4096)
                if not data:
                    raise ConnectionError(f"closed before the head ended: {received[:100]!r}")
                received += data
        head, _, body = received.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        digest = hashlib.sha256(body)
        got = len(body)
        while got < min(first, length):
            data = await loop.sock_recv(sock, min(first, length) - got)
            if not data:
                raise ConnectionError(f"closed after {got} of {length} bytes")
            digest.update(data)
            got += len(data)
        started[0] += 1
        await go.wait()
        if drain_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, drain_buffer)
        while got < length:
            data = await loop.sock_recv(sock, min(read_size, length - got))
            if not data:
                raise ConnectionError(f"closed after {got} of {length} bytes")
            digest.update(data)
            got += len(data)
            if pause:
                await asyncio.sleep(pause)
        return got, digest.hexdigest()
    finally:
        sock.close()


async def _crowd(host: str, port: int, path: str, count: int, expected: str, *, first: int, read_size: int,
                 pause: float, drain_buffer: int, settle: float, while_open: Callable[[int], object],
                 receive_buffer: int = 4096) -> tuple[int, list[str], float]:
    """`count` slow readers; once every one has read its first bytes (and `settle` s more), `while_open(how
    many started)` runs (the event loop, and so every reader, stands still meanwhile), then all drain.
    Returns (complete and byte-correct, errors, seconds to drain)."""
    started = [0]
    go = asyncio.Event()
    waves = asyncio.Semaphore(200)
    tasks = [asyncio.create_task(_slow_reader(host, port, path, started, go, first, read_size, pause,
                                              drain_buffer, waves, receive_buffer))
             for _ in range(count)]
    deadline = time.monotonic() + 120 + count / 50
    while started[0] < count and time.monotonic() < deadline and not all(t.done() for t in tasks):
        await asyncio.sleep(0.05)
    await asyncio.sleep(settle)
    while_open(started[0])
    go.set()
    began = time.perf_counter()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.perf_counter() - began
    errors = []
    ok = 0
    for result in results:
        if isinstance(result, BaseException):
            errors.append(f"{type(result).__name__}: {result}")
        elif result[1] != expected:
            errors.append("wrong bytes")
        else:
            ok += 1
    return ok, errors, elapsed


def concurrency(tmp: Path, counts: list[int], files: int, size: int, prefetch_values: list[int | None],
                env: dict[str, str]) -> Table:
    """B3: N simultaneous slow-reading downloads on 2 gevent workers; RSS per open download."""
    limit = raise_nofile()
    table = Table("b3_concurrency", f"B3 concurrency: simultaneous slow readers, bundle of {files} x "
                  f"{_size(size)} (stored), 2 gevent workers",
                  ["downloads", "PREFETCH", "complete & byte-correct", "errors", "worker RSS before MiB",
                   "worker RSS all open MiB", "KiB per open download", "s to drain"])
    upstream = upstream_with({})
    try:
        for i in range(files):
            upstream.add(f"/b3/{i}.bin", os.urandom(size))
        srcs = [upstream.url(f"/b3/{i}.bin") for i in range(files)]
        for prefetch in prefetch_values:
            extra = {} if prefetch is None else {"PREFETCH": str(prefetch)}
            for count in counts:
                with service(
                        tmp, {"WORKER_CONNECTIONS": str(count + 100), **extra, **env}, workers=2) as server, \
                        requests.Session() as session:
                    url = _bundle(session, server.base_url, srcs)
                    whole = session.get(url, timeout=60).content
                    for _ in range(4):  # warm both workers up
                        session.get(url, timeout=60)
                    expected = hashlib.sha256(whole).hexdigest()
                    before = sum(stat.rss for stat in workers_stat(server))
                    during_rss: list[int] = []

                    def sample(open_now: int, server: Any = server, during_rss: list[int] = during_rss) -> int:
                        during_rss.append(sum(stat.rss for stat in workers_stat(server)))
                        return open_now

                    path = url.split(str(server.port), 1)[1]
                    ok, errors, elapsed = asyncio.run(_crowd(
                        "127.0.0.1", server.port, path, count, expected, first=4096, read_size=4096, pause=0.02,
                        drain_buffer=0, settle=1.0, while_open=sample,
                    ))
                per = (during_rss[0] - before) / count / 1024
                table.add(count, "default" if prefetch is None else prefetch, ok, len(errors),
                          before / MiB, during_rss[0] / MiB, per, elapsed)
                if errors:
                    table.notes.append(f"{count} downloads, first errors: {sorted(set(errors))[:3]}")
    finally:
        upstream.stop()
    table.notes.append(f"client: asyncio raw sockets, 4 KiB receive buffer, reads 4 KiB, then 4 KiB every 20 ms "
                       f"after all downloads have started; RSS sampled (sum of both workers) while every download is "
                       f"open; open-file limit {limit}.")
    return table


# -- B8 -------------------------------------------------------------------------------------------
class _RssSampler(threading.Thread):
    """Samples the workers' RSS every `every` s until stopped: peak of the sum and peak per worker."""

    def __init__(self, pids: list[int], every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.every = every
        self.peak_sum = 0
        self.peak_each = dict.fromkeys(pids, 0)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            total = 0
            for pid in self.pids:
                rss = proc_stat(pid).rss
                self.peak_each[pid] = max(self.peak_each[pid], rss)
                total += rss
            self.peak_sum = max(self.peak_sum, total)
            self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _fast_clients(url: str, count: int, length: int, max_time: float | None = None) -> list[float]:
    """`count` curl downloads of `url` at once; each one's MB/s (0.0 for one that did not finish within
    `max_time` s: a service that makes it wait for memory held by the stalled clients, which the bench
    itself keeps stalled meanwhile, would otherwise hang the bench)."""

    def one(_: int) -> float:
        try:
            got = curl(url, max_time=max_time)
        except RuntimeError:
            if max_time is None:
                raise
            return 0.0
        if got.size != length:
            raise RuntimeError(f"fast client got {got.size} of {length} bytes")
        return length / got.wall / 1e6

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def _memory_gauges(base_url: str) -> dict[str, dict[str, float]]:
    """The workers' memory gauges from /metrics: metric name -> {pid: value}."""
    text = requests.get(base_url + "/metrics", timeout=30).text
    found: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line.startswith(("zipstream_memory_", "zipstream_parks", "zipstream_downloads_parked")):
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            labels, value = rest.rsplit("}", 1)
            pid = next((part.split("=", 1)[1].strip('"') for part in labels.split(",") if part.startswith("pid=")),
                       "")
        else:
            name, value = line.split(" ", 1)
            pid = ""
        found.setdefault(name, {})[pid] = float(value)
    return found


def slow_clients(tmp: Path, counts: list[int], files: int, size: int, stall: float, fast: int, runs: int,
                 env: dict[str, str], receive_buffer: int = 4096) -> Table:
    """B8: N concurrent slow downloads of a bundle of big files (each reads 4 KiB, stalls, then drains) on 2
    gevent workers: peak worker RSS against MEMORY_BUDGET + baseline, completion and byte-correctness, fast
    clients' speed meanwhile against alone."""
    limit = raise_nofile()
    table = Table("b8_slow_clients", f"B8 memory under slow clients: bundle of {files} x {_size(size)} (stored), "
                  f"2 gevent workers, each client reads 4 KiB then stalls {stall:g} s, then drains",
                  ["slow downloads", "complete & byte-correct", "errors", "MEMORY_BUDGET MiB",
                   "baseline RSS MiB per worker", "peak RSS MiB per worker (VmHWM)",
                   "limit MiB per worker (baseline + budget)", "within the limit", "peak granted MiB per worker "
                   "(gauge)", "KiB per slow download (peak sum - baseline)", "RSS after drain MiB (2 workers)",
                   "fast client alone MB/s", f"{fast} fast clients meanwhile MB/s each", "meanwhile / alone",
                   "s to drain", "upstream requests per slow download", "stalled: RSS MiB per worker",
                   "stalled: KiB per download", "stalled: granted MiB per worker", "stalled: waiting downloads",
                   "workers' CPU while the fast clients ran (cores)", "stalled: parked downloads",
                   "parks per slow download"])
    paths = {f"/b8/{i}.bin": make_file(tmp / f"b8-{size}-{i}.bin", size, random_bytes=True) for i in range(files)}
    upstream = upstream_with(paths)
    try:
        srcs = [upstream.url(name) for name in paths]
        for count in counts:
            settings = {"WORKER_CONNECTIONS": str(count + 100), **env}
            with service(tmp, settings, workers=2) as server, requests.Session() as session:
                url = _bundle(session, server.base_url, srcs)
                digest = hashlib.sha256()
                with session.get(url, stream=True, timeout=600) as response:
                    response.raise_for_status()
                    for chunk in response.iter_content(1 << 20):
                        digest.update(chunk)
                    length = int(response.headers["Content-Length"])
                expected = digest.hexdigest()
                for _ in range(4):  # warm both workers up
                    curl(url)
                alone = median(_fast_clients(url, 1, length)[0] for _ in range(runs))
                pids = server.worker_pids()
                served = upstream.requests_served()
                baselines = {pid: proc_stat(pid).rss for pid in pids}
                baseline = sum(baselines.values())
                for pid in pids:
                    reset_peak_rss(pid)
                sampler = _RssSampler(pids)
                sampler.start()
                meanwhile: list[float] = []
                during: dict[str, Any] = {}

                def stalled(open_now: int, url: str = url, length: int = length, meanwhile: list[float] = meanwhile,
                            during: dict[str, Any] = during, pids: list[int] = pids,
                            base_url: str = server.base_url) -> None:
                    began = time.monotonic()
                    time.sleep(min(5.0, stall / 2))  # past the burst of read-ahead that follows the first bytes
                    during["open"] = open_now
                    during["rss"] = {pid: proc_stat(pid).rss for pid in pids}
                    during["gauges"] = _memory_gauges(base_url)
                    if fast:
                        cpu = sum(proc_stat(pid).cpu_seconds for pid in pids)
                        wall = time.monotonic()
                        meanwhile.extend(_fast_clients(url, fast, length, max_time=60.0))
                        during["cpu"] = (sum(proc_stat(pid).cpu_seconds for pid in pids) - cpu) / (
                            time.monotonic() - wall)
                    time.sleep(max(0.0, stall - (time.monotonic() - began)))

                path = url.split(str(server.port), 1)[1]
                try:
                    ok, errors, elapsed = asyncio.run(_crowd(
                        "127.0.0.1", server.port, path, count, expected, first=4096, read_size=256 * 1024,
                        pause=0.0, drain_buffer=256 * 1024, settle=0.5, while_open=stalled,
                        receive_buffer=receive_buffer,
                    ))
                finally:
                    sampler.stop()
                hwm = {pid: proc_stat(pid).hwm for pid in pids}
                served = upstream.requests_served() - served - fast * len(paths)
                after = sum(proc_stat(pid).rss for pid in pids)
                gauges = _memory_gauges(server.base_url)
            budgets = gauges.get("zipstream_memory_budget_bytes", {})
            granted = gauges.get("zipstream_memory_granted_peak_bytes", {})
            budget = max(budgets.values(), default=0.0)
            limits = {pid: baselines[pid] + budget for pid in pids}
            fast_speed = median(meanwhile) if meanwhile else 0.0
            stalled_granted = during["gauges"].get("zipstream_memory_granted_bytes", {})
            table.add(count, ok, len(errors), budget / MiB,
                      " + ".join(f"{baselines[pid] / MiB:.0f}" for pid in pids),
                      " + ".join(f"{hwm[pid] / MiB:.0f}" for pid in pids),
                      " + ".join(f"{limits[pid] / MiB:.0f}" for pid in pids),
                      "yes" if all(hwm[pid] <= limits[pid] for pid in pids) else "NO",
                      " + ".join(f"{granted.get(str(pid), 0.0) / MiB:.1f}" for pid in pids),
                      (sampler.peak_sum - baseline) / count / 1024, after / MiB, alone, fast_speed,
                      ratio(fast_speed, alone) if meanwhile else "-", elapsed, f"{served / count:.2f}",
                      " + ".join(f"{during['rss'][pid] / MiB:.0f}" for pid in pids),
                      (sum(during["rss"].values()) - baseline) / max(1, during["open"]) / 1024,
                      " + ".join(f"{stalled_granted.get(str(pid), 0.0) / MiB:.1f}" for pid in pids),
                      f"{sum(during['gauges'].get('zipstream_memory_waiting', {}).values()):.0f}",
                      during.get("cpu", 0.0),
                      f"{sum(during['gauges'].get('zipstream_downloads_parked', {}).values()):.0f}",
                      f"{sum(gauges.get('zipstream_parks_total', {}).values()) / count:.2f}")
            if errors:
                table.notes.append(f"{count} downloads, first errors: {sorted(set(errors))[:3]}")
    finally:
        upstream.stop()
    table.notes.append(
        f"client: asyncio raw sockets with a {_size(receive_buffer)} receive buffer (SO_RCVBUF), each reads the "
        f"head and 4 KiB of body; once all have, they stall {stall:g} s (the fast clients run "
        f"{min(5.0, stall / 2):g} s into it), then drain with the buffer raised to 256 KiB (the window scale stays "
        "as set at connect: a 4 KiB buffer means 2 KiB segments and a 64 KiB window, so the drain is slow), "
        "hashing (sha256) what they read. RSS sampled every 0.2 s from /proc (sum of both workers); VmHWM reset "
        f"just before the crowd. Fast clients: curl, {fast} at once, during the stall (0 MB/s: not done within "
        f"60 s); alone: median of {runs}. "
        f"Open-file limit {limit}. Upstream requests: nginx's count over the crowd, less the fast clients' (one per "
        "file each); more than one per file means reads were re-opened (nginx closes a connection its reader "
        "has not drained for send_timeout, 60 s). Peak granted: the workers' zipstream_memory_granted_peak_bytes "
        "after the drain (never above MEMORY_BUDGET). Stalled: read just before the fast clients run, every slow "
        "client stalled (RSS from /proc, granted and waiting from /metrics); the peaks include the drain, when "
        "every download reads whole chunks and the budget is in full use. Targets (issue 16): 10,000 slow "
        "downloads all complete byte-correct, peak RSS ≤ budget + baseline (e.g. ≤ 512 MiB per worker), fast "
        "clients near full speed.")
    return table


# -- B4 -------------------------------------------------------------------------------------------
def huge_member(tmp: Path, size: int, env: dict[str, str]) -> Table:
    """B4: one huge (sparse) member; peak RSS growth of the worker."""
    table = Table("b4_huge_member", "B4 one huge member: worker memory",
                  ["member", "s", "MB/s", "worker RSS before MiB", "peak RSS growth MiB", "worker CPU s/GB"])
    path = make_file(tmp / f"b4-{size}.bin", size, random_bytes=False)
    upstream = upstream_with({"/b4.bin": path})
    try:
        with service(tmp, env) as server, requests.Session() as session:
            url = _bundle(session, server.base_url, [upstream.url("/b4.bin")])
            session.head(url, timeout=60).raise_for_status()  # pre-flight once: connections, page cache
            (pid,) = server.worker_pids()
            before = proc_stat(pid)
            reset_peak_rss(pid)
            took = curl(url).wall
            after = proc_stat(pid)
    finally:
        upstream.stop()
    table.add(_size(size), took, size / took / 1e6, before.rss / MiB, (after.hwm - before.rss) / MiB,
              (after.cpu_seconds - before.cpu_seconds) / (size / 1e9))
    table.notes.append("client: curl to /dev/null. peak = VmHWM after resetting it just before the download. "
                       "Target: ≤ 50 MB.")
    return table


# -- B5 -------------------------------------------------------------------------------------------
def first_byte(tmp: Path, runs: int, counts: list[int], size: int, latency: float, env: dict[str, str],
               parallel: int) -> Table:
    """B5: time to first byte of POST /bundle and GET /:id against the number of files (pre-flight cost)."""
    ms = f"{latency * 1000:.0f} ms"
    table = Table("b5_first_byte", f"B5 time to first byte vs files in the bundle ({_size(size)} each, {ms} "
                  "upstream latency per request)",
                  ["files", "limit: first file direct, first byte s", "all files direct, best concurrent s",
                   "latency floor s", "POST /bundle first byte s", "GET /:id first byte s", "GET /:id total s",
                   "worker CPU ms per file to first byte", "worker CPU ms per file (GET)",
                   "files checked per s (GET)"])
    widths = _direct_widths(parallel, env)
    concurrency = _concurrency(env)
    paths = [f"/b5/{i}.bin" for i in range(max(counts))]
    upstream = upstream_with({}, latency=latency)
    try:
        for path in paths:
            upstream.add(path, os.urandom(size))
        with service(tmp, env) as server, requests.Session() as session:
            (pid,) = server.worker_pids()
            for count in counts:
                srcs = [upstream.url(path) for path in paths[:count]]
                url = _bundle(session, server.base_url, srcs)
                body = json_body(tmp, srcs)
                curl(url)  # warm-up: connections

                def get(url: str = url) -> dict[str, float]:
                    cpu = proc_stat(pid).cpu_seconds
                    fetched = curl(url)
                    return {"s": fetched.wall, "cpu": proc_stat(pid).cpu_seconds - cpu}

                def get_first(url: str = url) -> dict[str, float]:
                    # The worker's CPU from the request to its status line: the bundle's read, pre-flight,
                    # the plan, the cache read and the headers (the first chunks too, not the streaming).
                    cpu = proc_stat(pid).cpu_seconds
                    first = time_to_first_byte(url)
                    return {"first": first, "cpu": proc_stat(pid).cpu_seconds - cpu}

                got = interleaved(runs, {
                    "one": partial(_first, srcs[0]),
                    **_direct_limits(srcs, widths),
                    "get": get,
                    "get first": get_first,
                    "post first": partial(_first, server.url("/bundle"), body),
                    **_delay_layer_cost(upstream, paths[:count], parallel),
                })
                best, width = _best_direct(got, widths)
                floor = max(count / concurrency, 1) * got["one"]["first"]
                table.add(count, got["one"]["first"], best, floor, got["post first"]["first"],
                          got["get first"]["first"], got["get"]["s"], got["get first"]["cpu"] / count * 1000,
                          got["get"]["cpu"] / count * 1000, count / got["get first"]["first"])
                table.notes.append(f"{count} files: all direct fastest at {width} connections; "
                                   + _cost_note(got, count, parallel))
    finally:
        upstream.stop()
    table.notes.insert(0, (
        f"median of {runs} interleaved runs after one warm-up. First byte: http.client, time from sending the "
        "request (connection included) to the status line, then it hangs up; total: curl, the whole zip. "
        "Upstream: nginx, latency added by its echo module. Limits: the first byte of one file fetched "
        "directly; all the files fetched directly, the fastest of "
        f"{' and '.join(map(str, widths))} connections (the floor of a pre-flight that checks every file before "
        "the first byte); latency floor: one file's first byte x max(1, files / PREFLIGHT_CONCURRENCY "
        f"({concurrency})), the time pre-flight's requests take with no CPU cost at all. Worker CPU to first "
        "byte: from the request to its status line; per file (GET): the whole GET (pre-flight and streaming). "
        "Targets (issue 16): first byte ≤ 0.3 s for 1,000 files, ≤ 3 s for 10,000 (1,000 x 16 KiB, 20 ms)."))
    return table


# -- B6 -------------------------------------------------------------------------------------------
def _minor_faults(pid: int) -> int:
    """Minor page faults of a process so far (/proc/<pid>/stat): pages it mapped in, zeroed or not."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def _worker_cost(pid: int, url: str) -> dict[str, float]:
    """One curl download of `url`: wall time, the worker's CPU (all, kernel) and minor faults, bytes."""
    before, faults = proc_stat(pid), _minor_faults(pid)
    got = curl(url)
    after = proc_stat(pid)
    return {"s": got.wall, "cpu": after.cpu_seconds - before.cpu_seconds,
            "kernel": after.system_seconds - before.system_seconds, "faults": _minor_faults(pid) - faults,
            "bytes": got.size}


def cpu_per_gb(tmp: Path, runs: int, size: int, env: dict[str, str]) -> Table:
    """B6: worker CPU seconds per GB of member data, stored and deflate."""
    table = Table("b6_cpu", "B6 worker CPU per GB of member data",
                  ["compression", "data", "s", "worker CPU s", "of which kernel", "CPU s per GB",
                   "page faults per GB", "zip bytes / data"])
    path = make_file(tmp / f"b6-{size}.bin", size, random_bytes=True)
    upstream = upstream_with({"/b6.bin": path})
    try:
        with service(tmp, env) as server, requests.Session() as session:
            urls = {compression: _bundle(session, server.base_url, [upstream.url("/b6.bin")], compression)
                    for compression in ("stored", "deflate")}
            (pid,) = server.worker_pids()
            curl(urls["stored"])  # warm-up: the worker's first download (imports, caches), the page cache
            got = interleaved(runs, {compression: partial(_worker_cost, pid, url) for compression, url in urls.items()})
    finally:
        upstream.stop()
    gb = size / 1e9
    for compression, reading in got.items():
        used = reading["cpu"]
        table.add(compression, _size(size), reading["s"], used, f"{reading['kernel'] / used:.0%}" if used else "-",
                  used / gb, f"{reading['faults'] / gb:.0f}", f"{reading['bytes'] / size:.3f}")
    table.notes.append(f"median of {runs} interleaved runs after one warm-up download; client: curl to /dev/null; "
                       "random (incompressible) data from nginx; CPU = utime + stime of the single gevent worker "
                       "(clock ticks of 10 ms); kernel = stime (copying bytes from the upstream socket and into "
                       "the client's, loopback TCP); page faults: minor faults of the worker (memory mapped in "
                       "again).")
    return table


# -- B7 -------------------------------------------------------------------------------------------
def cpu_per_source(tmp: Path, runs: int, count: int, size: int, latency: float, env: dict[str, str],
                   profile: Path | None) -> list[Table]:
    """B7: worker CPU per pre-flighted HTTP source (utime + stime deltas of the one worker over a bundle of
    `count` small files, divided by `count`); with `profile`, py-spy samples the worker over more GETs."""
    table = Table("b7_cpu_per_source", f"B7 worker CPU per pre-flighted HTTP source: {count} x {_size(size)}, "
                  f"{latency * 1000:.0f} ms upstream latency",
                  ["request", "sources", "upstream requests per source", "wall s", "worker CPU ms per source",
                   "of which kernel", "nginx CPU ms per source"])
    paths = [f"/b7/{i}.bin" for i in range(count)]
    upstream = upstream_with({}, latency=latency)
    tables = [table]
    try:
        for path in paths:
            upstream.add(path, os.urandom(size))
        srcs = [upstream.url(path) for path in paths]
        body = json_body(tmp, srcs)
        with service(tmp, env) as server, requests.Session() as session:
            (pid,) = server.worker_pids()
            url = _bundle(session, server.base_url, srcs)
            curl(url)  # warm-up: connections, imports, caches

            def measured(action: Callable[[], object]) -> Callable[[], dict[str, float]]:
                def run() -> dict[str, float]:
                    before, served, nginx_cpu = proc_stat(pid), upstream.requests_served(), upstream.cpu_seconds()
                    began = time.perf_counter()
                    action()
                    wall = time.perf_counter() - began
                    after = proc_stat(pid)
                    return {"wall": wall, "cpu": after.cpu_seconds - before.cpu_seconds,
                            "kernel": after.system_seconds - before.system_seconds,
                            "requests": upstream.requests_served() - served,
                            "nginx": upstream.cpu_seconds() - nginx_cpu}
                return run

            got = interleaved(runs, {
                "GET /:id (pre-flight holding the files' bytes, then the zip)": measured(lambda: curl(url)),
                "HEAD /:id (pre-flight only, nothing held)": measured(
                    lambda: session.head(url, timeout=600).raise_for_status()),
                "POST /bundle": measured(lambda: curl(server.url("/bundle"), post_json=body)),
            })
            for name, reading in got.items():
                cpu = reading["cpu"]
                table.add(name, count, reading["requests"] / count, reading["wall"], cpu / count * 1000,
                          f"{reading['kernel'] / cpu:.0%}" if cpu else "-", reading["nginx"] / count * 1000)
            if profile is not None:
                tables.append(_profile(pid, profile, lambda: [curl(url) for _ in range(max(3, runs))], count))
    finally:
        upstream.stop()
    table.notes.append(f"median of {runs} interleaved runs after one warm-up; one gevent worker; client: curl "
                       "(HEAD: requests). CPU = utime + stime from /proc/<worker>/stat, in clock ticks "
                       f"({1000 / os.sysconf('SC_CLK_TCK'):.0f} ms), over the whole request. nginx CPU: its worker, "
                       "the upstream's own cost. Target (issue 16): ≤ 0.15 ms per source.")
    return tables


def _py_spy() -> str:
    """py-spy's executable: on PATH, beside this Python, or pip-installed into this environment."""
    for candidate in (shutil.which("py-spy"), str(Path(sys.executable).with_name("py-spy"))):
        if candidate and Path(candidate).exists():
            return candidate
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=True)
    return str(Path(sys.executable).with_name("py-spy"))


def _profile(pid: int, out: Path, action: Callable[[], object], sources: int) -> Table:
    """Sample `pid` with py-spy (raw collapsed stacks, 1,000 Hz) while `action` runs; top functions by share."""
    out.parent.mkdir(parents=True, exist_ok=True)
    sampler = subprocess.Popen([_py_spy(), "record", "--pid", str(pid), "--rate", "1000", "--format", "raw",
                                "--output", str(out), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches
    action()
    sampler.send_signal(signal.SIGINT)
    _, err = sampler.communicate(timeout=60)
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack:
            continue
        n = int(samples)
        frames = [_frame_name(frame) for frame in stack.split(";")]
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + n
    table = Table("b7_profile", "B7 profile of the worker during GET /:id of the same bundle (py-spy, by own samples)",
                  ["function (file)", "own %", "inclusive %"])
    for name, n in sorted(own.items(), key=lambda item: -item[1])[:25]:
        table.add(name, f"{100 * n / max(1, total):.1f}", f"{100 * inclusive[name] / max(1, total):.1f}")
    table.notes.append(f"{total} samples of active (non-idle) Python stacks at 1,000 Hz; raw stacks in {out.name}; "
                       f"{sources} sources per GET. py-spy: {err.decode(errors='replace').strip()[-200:] or 'ok'}")
    table.notes.append("Hub.run's own share is gevent's event loop (libev, in C: callbacks, epoll) as py-spy sees it; "
                       "py-spy drops only samples it knows to be idle, so part of it may be waiting.")
    table.notes.append("heaviest callers by inclusive share: " + "; ".join(
        f"{name} {100 * n / max(1, total):.0f}%" for name, n in sorted(inclusive.items(), key=lambda i: -i[1])[:15]))
    return table


def _frame_name(frame: str) -> str:
    """py-spy's "function (path/to/module.py:123)" -> "function (module.py)" (lines merged)."""
    function, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if "site-packages" not in parts else "/".join(parts[parts.index("site-packages") + 1:])
    return f"{function} ({short})"
