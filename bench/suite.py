"""The benchmarks B1-B6 (README, Performance); each starts its own upstream and service and returns a Table."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from pathlib import Path
from statistics import median
from typing import Any

import requests

from .harness import (
    Table,
    fetch,
    fetch_each,
    make_file,
    proc_stat,
    raise_nofile,
    reset_peak_rss,
    service,
    timed_runs,
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


# -- B1 -------------------------------------------------------------------------------------------
def big_files(tmp: Path, runs: int, cases: list[tuple[int, int]], env: dict[str, str]) -> Table:
    """B1: N x size through POST /bundle and GET /:id vs the same files fetched directly."""
    table = Table("b1_big_files", "B1 big files: zip download vs direct download (same client)",
                  ["files", "direct s", "POST /bundle s", "GET /:id s", "GET /:id / direct", "zip MB/s"])
    for count, size in cases:
        paths = {f"/b1/{size}/{i}.bin": make_file(tmp / f"b1-{size}-{i}.bin", size, size <= 64 * MiB)
                 for i in range(count)}
        upstream = upstream_with(paths)
        try:
            with service(tmp, env) as server, requests.Session() as session:
                srcs = [upstream.url(name) for name in paths]
                url = _bundle(session, server.base_url, srcs)
                one_off = {"files": [{"src": src} for src in srcs]}
                fetch(session, "GET", url)  # warm-up: connections, page cache
                direct = timed_runs(runs, fetch_each, session, srcs)
                posted = timed_runs(runs, fetch, session, "POST", server.url("/bundle"), json=one_off)
                got = timed_runs(runs, fetch, session, "GET", url)
        finally:
            upstream.stop()
        table.add(f"{count} x {_size(size)}", direct, posted, got, f"{got / direct:.2f}x",
                  count * size / got / 1e6)
    table.notes.append(f"median of {runs} runs; client: requests reading 1 MiB chunks; stored zip; "
                       "files served from disk by tests/support/upstream.py on 127.0.0.1 "
                       "(random bytes up to 64 MiB, sparse above). Target: GET /:id ≤ 2x direct.")
    return table


# -- B2 -------------------------------------------------------------------------------------------
def small_files(tmp: Path, runs: int, count: int, size: int, latency: float,
                variants: list[dict[str, str]], env: dict[str, str]) -> Table:
    """B2: many small files behind per-request latency, for several pre-flight / read-ahead settings."""
    table = Table("b2_small_files", f"B2 many small files: {count} x {_size(size)}, "
                  f"{latency * 1000:.0f} ms upstream latency per request",
                  ["client", "pre-flight", "PREFLIGHT_CONCURRENCY", "PREFETCH", "upstream requests", "s",
                   "speed-up vs one after another"])
    upstream = upstream_with({}, latency=latency)
    try:
        for i in range(count):
            upstream.add(f"/b2/{i}.bin", os.urandom(size))
        srcs = [upstream.url(f"/b2/{i}.bin") for i in range(count)]
        with requests.Session() as session:
            sequential = timed_runs(1, fetch_each, session, srcs)
        table.add("direct, one after another", "-", "-", "-", count, sequential, "1x")
        for variant in variants:
            settings = {**env, **variant}
            with service(tmp, settings) as server, requests.Session() as session:
                url = _bundle(session, server.base_url, srcs)
                fetch(session, "GET", url)  # warm-up: connections
                upstream.clear_log()
                took = timed_runs(runs, fetch, session, "GET", url)
                requests_per_run = len(upstream.requests) // runs
            held = settings.get("PREFLIGHT_FETCH_BYTES", "65536") != "0"
            table.add("GET /:id (stored zip)", "GET first 64 KiB" if held else "HEAD",
                      settings.get("PREFLIGHT_CONCURRENCY", "64 (default)"),
                      settings.get("PREFETCH", "16 (default)"), requests_per_run, took,
                      f"{sequential / took:.1f}x")
    finally:
        upstream.stop()
    table.notes.append(f"median of {runs} runs after one warm-up (one run for the sequential case); the zip "
                       "time includes pre-flight. Target: ≥ 20x.")
    return table


# -- B3 -------------------------------------------------------------------------------------------
async def _slow_client(host: str, port: int, path: str, started: list[int], go: asyncio.Event,
                       read_size: int, pause: float, waves: asyncio.Semaphore) -> bytes:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow reader's small window
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    async with waves:  # connect in waves: the listen backlog is finite
        await loop.sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=read_size * 2)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
    try:
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        body = bytearray(await reader.readexactly(min(read_size, length)))
        started[0] += 1
        await go.wait()
        while len(body) < length:
            body += await reader.read(min(read_size, length - len(body)))
            await asyncio.sleep(pause)
        return bytes(body)
    finally:
        writer.close()


async def _crowd(host: str, port: int, path: str, count: int, expected: str, settle: float,
                 read_size: int, pause: float, on_all_open: Any) -> tuple[int, list[str], float]:
    started = [0]
    go = asyncio.Event()
    waves = asyncio.Semaphore(200)
    tasks = [asyncio.create_task(_slow_client(host, port, path, started, go, read_size, pause, waves))
             for _ in range(count)]
    deadline = time.monotonic() + 120
    while started[0] < count and time.monotonic() < deadline and not all(t.done() for t in tasks):
        await asyncio.sleep(0.05)
    await asyncio.sleep(settle)
    during = on_all_open(started[0])
    go.set()
    began = time.perf_counter()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.perf_counter() - began
    errors = []
    ok = 0
    for result in results:
        if isinstance(result, BaseException):
            errors.append(f"{type(result).__name__}: {result}")
        elif hashlib.sha256(result).hexdigest() != expected:
            errors.append("wrong bytes")
        else:
            ok += 1
    del during
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
                        "127.0.0.1", server.port, path, count, expected, settle=1.0,
                        read_size=4096, pause=0.02, on_all_open=sample,
                    ))
                per = (during_rss[0] - before) / count / 1024
                table.add(count, "default" if prefetch is None else prefetch, ok, len(errors),
                          before / MiB, during_rss[0] / MiB, per, elapsed)
                if errors:
                    table.notes.append(f"{count} downloads, first errors: {sorted(set(errors))[:3]}")
    finally:
        upstream.stop()
    table.notes.append(f"client: asyncio raw sockets, 4 KiB receive buffer, reads 4 KiB every 20 ms after all "
                       f"downloads have started; RSS sampled (sum of both workers) while every download is "
                       f"open; open-file limit {limit}.")
    return table


# -- B4 -------------------------------------------------------------------------------------------
def huge_member(tmp: Path, size: int, env: dict[str, str]) -> Table:
    """B4: one huge (sparse) member; peak RSS growth of the worker."""
    table = Table("b4_huge_member", "B4 one huge member: worker memory",
                  ["member", "s", "MB/s", "worker RSS before MiB", "peak RSS growth MiB"])
    path = make_file(tmp / f"b4-{size}.bin", size, random_bytes=False)
    upstream = upstream_with({"/b4.bin": path})
    try:
        with service(tmp, env) as server, requests.Session() as session:
            url = _bundle(session, server.base_url, [upstream.url("/b4.bin")])
            session.head(url, timeout=60).raise_for_status()  # pre-flight once: connections, page cache
            (pid,) = server.worker_pids()
            before = proc_stat(pid).rss
            reset_peak_rss(pid)
            took = timed_runs(1, fetch, session, "GET", url)
            peak = proc_stat(pid).hwm
    finally:
        upstream.stop()
    table.add(_size(size), took, size / took / 1e6, before / MiB, (peak - before) / MiB)
    table.notes.append("peak = VmHWM after resetting it just before the download. Target: ≤ 50 MB.")
    return table


# -- B5 -------------------------------------------------------------------------------------------
def first_byte(tmp: Path, runs: int, counts: list[int], latency: float, env: dict[str, str]) -> Table:
    """B5: time to first byte of GET /:id against the number of files (pre-flight cost)."""
    table = Table("b5_first_byte", f"B5 time to first byte vs files in the bundle ({latency * 1000:.0f} ms "
                  "upstream latency per request)",
                  ["files", "TTFB s", "files checked per s", "worker CPU ms per file"])
    upstream = upstream_with({}, latency=latency)
    try:
        for i in range(max(counts)):
            upstream.add(f"/b5/{i}.txt", f"file {i}\n".encode())
        with service(tmp, env) as server, requests.Session() as session:
            (pid,) = server.worker_pids()
            for count in counts:
                url = _bundle(session, server.base_url, [upstream.url(f"/b5/{i}.txt") for i in range(count)])
                cpu = proc_stat(pid).cpu_seconds
                times = []
                for _ in range(runs):
                    began = time.perf_counter()
                    with session.get(url, stream=True, timeout=600) as response:
                        response.raise_for_status()
                        response.raw.read(1)
                        times.append(time.perf_counter() - began)
                took = median(times)
                per_file = (proc_stat(pid).cpu_seconds - cpu) / runs / count
                table.add(count, took, count / took, per_file * 1000)
    finally:
        upstream.stop()
    table.notes.append(f"median of {runs} runs; PREFLIGHT_CONCURRENCY default unless overridden; worker CPU "
                       "covers the whole request (pre-flight, then streaming until the client hangs up).")
    return table


# -- B6 -------------------------------------------------------------------------------------------
def cpu_per_gb(tmp: Path, size: int, env: dict[str, str]) -> Table:
    """B6: worker CPU seconds per GB of member data, stored and deflate."""
    table = Table("b6_cpu", "B6 worker CPU per GB of member data",
                  ["compression", "data", "s", "worker CPU s", "of which kernel", "CPU s per GB",
                   "zip bytes / data"])
    path = make_file(tmp / f"b6-{size}.bin", size, random_bytes=True)
    upstream = upstream_with({"/b6.bin": path})
    try:
        with service(tmp, env) as server, requests.Session() as session:
            for compression in ("stored", "deflate"):
                url = _bundle(session, server.base_url, [upstream.url("/b6.bin")], compression)
                (pid,) = server.worker_pids()
                before = proc_stat(pid)
                began = time.perf_counter()
                sent = fetch(session, "GET", url)
                took = time.perf_counter() - began
                after = proc_stat(pid)
                used = after.cpu_seconds - before.cpu_seconds
                kernel = after.system_seconds - before.system_seconds
                table.add(compression, _size(size), took, used, f"{kernel / used:.0%}" if used else "-",
                          used / (size / 1e9), f"{sent / size:.3f}")
    finally:
        upstream.stop()
    table.notes.append("random (incompressible) data; CPU = utime + stime of the single gevent worker; "
                       "kernel = stime (copying bytes from the upstream socket and into the client's).")
    return table
