"""Where a worker's memory goes under stalled downloads: a diagnostic, not a benchmark of record.

`python -m bench.memory_probe --counts 1000 2000`: one gevent worker (the product's gunicorn settings plus
the debug hook of bench/memory_probe_hook.py), nginx serving 3 x 8 MiB files, N raw-socket clients that
read the head and 4 KiB then stall (B8's client, bench/suite.py), readings at the stall (RSS, what
MEMORY_BUDGET granted, greenlets and their saved C stacks, descriptors, glibc's heap, the big buffers
that suspended frames hold, tracemalloc with --tracemalloc), then the drain, sampled inside the worker
every 50 ms (the RSS peak and what was granted then). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from tests.support.live import LiveServer, free_port

from .harness import curl, make_file, raise_nofile, upstream_with
from .suite import _bundle, _crowd

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def ask(directory: Path, pid: int, command: str, timeout: float = 120) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(directory / f"{pid}.sock"))
        sock.sendall(command.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            part = sock.recv(1 << 20)
            if not part:
                break
            data += part
    return json.loads(data)


@contextmanager
def probed_service(tmp: Path, env: Mapping[str, str], probe_dir: Path) -> Iterator[LiveServer]:
    port = free_port()
    log = tmp / f"gunicorn-probe-{port}.log"
    full_env = {**os.environ, "PORT": str(port), "WEB_CONCURRENCY": "1",
                "SQLITE_PATH": str(tmp / f"probe-{port}.sqlite3"), "HTTP_ALLOW_PRIVATE": "true",
                "FS_INTERFACES": "https", "PYTHONWARNINGS": "ignore", "ACCESS_LOG": "", "LOG_LEVEL": "warning",
                "PREFLIGHT_TIMEOUT": "300", "PROBE_DIR": str(probe_dir), "PYTHONPATH": str(ROOT), **env}
    command = [sys.executable, "-m", "gunicorn", "--config", str(ROOT / "bench" / "memory_probe_gunicorn.py"),
               "--bind", f"127.0.0.1:{port}", "zipstream.wsgi:app"]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=sink, stderr=subprocess.STDOUT)
    server = LiveServer(process, port, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{server.log_text()[-3000:]}")
            try:
                if requests.get(server.url("/health-check"), timeout=2).status_code in (200, 503):
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start:\n{server.log_text()[-3000:]}")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _per(after: float, before: float, count: int) -> float:
    return (after - before) / max(1, count)


def summary(count: int, base: dict[str, Any], stalled: dict[str, Any], peaks: dict[str, Any],
            after: dict[str, Any]) -> dict[str, Any]:
    kib = 1024
    granted = stalled["budget"].get("used", 0)
    out = {
        "count": count,
        "baseline_rss_mib": base["rss"] / MiB,
        "stalled_rss_mib": stalled["rss"] / MiB,
        "stalled_granted_mib": granted / MiB,
        "stalled_kib_per_download_outside_budget": _per(stalled["rss"] - granted, base["rss"], count) / kib,
        "stalled_kib_per_download_total": _per(stalled["rss"], base["rss"], count) / kib,
        "greenlets_per_download": _per(stalled["greenlets"]["count"], base["greenlets"]["count"], count),
        "saved_stack_kib_per_download": _per(stalled["greenlets"]["stack_saved"],
                                             base["greenlets"]["stack_saved"], count) / kib,
        "fds_per_download": _per(sum(stalled["fds"].values()), sum(base["fds"].values()), count),
        "gc_objects_per_download": _per(stalled["gc_objects"], base["gc_objects"], count),
        "heap_in_use_kib_per_download": _per(stalled["mallinfo"]["uordblks"], base["mallinfo"]["uordblks"],
                                             count) / kib,
        "heap_free_mib_stalled": stalled["mallinfo"]["fordblks"] / MiB,
        "heap_free_mib_base": base["mallinfo"]["fordblks"] / MiB,
        "mmapped_mib_stalled": stalled["mallinfo"]["hblkhd"] / MiB,
        "drain_peak_rss_mib": peaks["peak_rss"]["rss"] / MiB,
        "drain_granted_at_peak_mib": peaks["peak_rss"].get("granted", 0) / MiB,
        "drain_peak_rss_minus_granted_over_baseline_mib":
            (peaks["peak_rss"]["rss"] - peaks["peak_rss"].get("granted", 0) - base["rss"]) / MiB,
        "drain_max_rss_minus_granted_over_baseline_mib": (peaks["peak_over"]["over"] - base["rss"]) / MiB,
        "drain_peak_over_limit_mib": (peaks["peak_rss"]["rss"] - base["rss"] - stalled["budget"].get("total", 0))
        / MiB,
        "heap_at_peak": {key: value / MiB for key, value in peaks["peak_rss"].get("mallinfo", {}).items()
                         if key in ("arena", "uordblks", "fordblks", "hblkhd", "keepcost")},
        "after_rss_mib": after["rss"] / MiB,
        "drain_worker_cpu_s": after.get("cpu", 0) - stalled.get("cpu", 0),
        "trims": peaks.get("trims"),
        "smaps_rss_kib_per_download": {
            key: round(_per(value["rss_kib"], base["smaps"].get(key, {}).get("rss_kib", 0), count), 1)
            for key, value in stalled["smaps"].items()},
        "smaps_stalled_rss_mib": {key: round(value["rss_kib"] / 1024, 1) for key, value in stalled["smaps"].items()},
        "pymalloc_arenas_kib_per_download": _per(stalled["pymalloc"].get("arenas", 0),
                                                 base["pymalloc"].get("arenas", 0), count) * 1024,
        "pymalloc_allocated_kib_per_download": _per(stalled["pymalloc"].get("allocated", 0),
                                                    base["pymalloc"].get("allocated", 0), count) / kib,
        "live_heap_beyond_granted_kib_per_download":
            _per(stalled["mallinfo"]["uordblks"] - granted, base["mallinfo"]["uordblks"], count) / kib,
    }
    if "tracemalloc" in stalled:
        out["traced_kib_per_download"] = _per(stalled["tracemalloc"]["current"], base["tracemalloc"]["current"],
                                              count) / kib
    return out


def run(count: int, args: argparse.Namespace, tmp: Path, srcs: list[str]) -> dict[str, Any]:
    probe_dir = Path(tempfile.mkdtemp(prefix="ovh-probe-"))
    env = {"WORKER_CONNECTIONS": str(count + 100)}
    if args.tracemalloc:
        env["PROBE_TRACEMALLOC"] = str(args.tracemalloc)
    if args.holders_at_peak:
        env["PROBE_HOLDERS_AT_PEAK"] = "1"
    if args.snapshot_at_peak:
        env["PROBE_SNAPSHOT_AT_PEAK"] = "1"
    for item in args.env:
        name, _, value = item.partition("=")
        env[name] = value
    record: dict[str, Any] = {"count": count, "env": env}
    with probed_service(tmp, env, probe_dir) as server, requests.Session() as session:
        url = _bundle(session, server.base_url, srcs)
        digest = hashlib.sha256()
        with session.get(url, stream=True, timeout=600) as response:
            response.raise_for_status()
            for chunk in response.iter_content(1 << 20):
                digest.update(chunk)
        expected = digest.hexdigest()
        for _ in range(3):
            curl(url)
        pid = server.worker_pids()[0]
        time.sleep(1)
        record["base"] = base = ask(probe_dir, pid, "stats")
        if args.tracemalloc:
            record["base_snapshot"] = ask(probe_dir, pid, "snapshot 15")
        ask(probe_dir, pid, "reset")

        def stalled(open_now: int) -> None:
            time.sleep(args.settle)
            record["open"] = open_now
            record["stalled"] = ask(probe_dir, pid, "stats")
            record["stalled_holders"] = ask(probe_dir, pid, "holders")
            if args.tracemalloc:
                record["stalled_snapshot"] = ask(probe_dir, pid, f"snapshot {args.top}")
            if args.malloc_info:
                record["stalled_malloc_info"] = ask(probe_dir, pid, "malloc_info")["xml"]
            ask(probe_dir, pid, "reset")  # the drain's peaks from here
            args.out.with_suffix(".stalled.json").write_text(json.dumps(record, default=str))

        path = url.split(str(server.port), 1)[1]
        ok, errors, elapsed = asyncio.run(_crowd(
            "127.0.0.1", server.port, path, count, expected, first=4096, read_size=256 * 1024, pause=0.0,
            drain_buffer=256 * 1024, settle=0.5, while_open=stalled, receive_buffer=args.rcvbuf))
        record["ok"], record["errors"], record["drain_s"] = ok, errors[:5], elapsed
        record["peaks"] = peaks = ask(probe_dir, pid, "peaks")
        record["after"] = after = ask(probe_dir, pid, "stats")
        if args.malloc_info:
            record["after_malloc_info"] = ask(probe_dir, pid, "malloc_info")["xml"]
        record["summary"] = summary(record.get("open", count), base, record["stalled"], peaks, after)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", type=int, nargs="+", default=[1000])
    parser.add_argument("--rcvbuf", type=int, default=65536)
    parser.add_argument("--settle", type=float, default=4.0, help="seconds after every client stalled")
    parser.add_argument("--tracemalloc", type=int, default=0, help="tracemalloc frames (0: off)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--holders-at-peak", action="store_true")
    parser.add_argument("--snapshot-at-peak", action="store_true")
    parser.add_argument("--malloc-info", action="store_true")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service")
    parser.add_argument("--tmp", type=Path, default=Path("/tmp/b8-files"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    raise_nofile()
    args.tmp.mkdir(parents=True, exist_ok=True)
    size, files = 8 * MiB, 3
    paths = {f"/b8/{i}.bin": make_file(args.tmp / f"b8-{size}-{i}.bin", size, random_bytes=True) for i in range(files)}
    upstream = upstream_with(paths)
    records = []
    try:
        srcs = [upstream.url(name) for name in paths]
        for count in args.counts:
            record = run(count, args, args.tmp, srcs)
            records.append(record)
            print(json.dumps(record["summary"], indent=1), flush=True)
            print(f"ok {record['ok']}/{count} errors {record['errors']} drain {record['drain_s']:.1f}s", flush=True)
    finally:
        upstream.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=1, default=str))


if __name__ == "__main__":
    main()
