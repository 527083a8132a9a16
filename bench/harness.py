"""What every benchmark needs: local upstreams (Debian's nginx), the real service, curl as the client,
interleaved timers, /proc readings, result tables."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.live import LiveServer, live_server  # noqa: E402 - after the path set-up
from tests.support.nginx import Nginx  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CLIENT_CHUNK = 1 << 20
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Table:
    """One benchmark's result: a Markdown table plus notes, written to bench/results/<name>.md."""

    name: str
    title: str
    columns: Sequence[str]
    rows: list[Sequence[object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *row: object) -> None:
        self.rows.append(row)

    def markdown(self, command: str) -> str:
        lines = [f"### {self.title}", "", f"`{command}`", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines.extend("| " + " | ".join(_cell(value) for value in row) + " |" for row in self.rows)
        if self.notes:
            lines.append("")
            lines.extend(f"- {note}" for note in self.notes)
        return "\n".join(lines) + "\n"

    def write(self, command: str, directory: Path = RESULTS) -> str:
        text = self.markdown(command)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{self.name}.md").write_text(text)
        return text


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def raise_nofile() -> int:
    """Raise this process's open-file limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def timed_runs(runs: int, action: Callable[..., object], *args: Any, **kwargs: Any) -> float:
    """The median wall time of `runs` calls of `action(*args, **kwargs)`, in seconds."""
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        action(*args, **kwargs)
        times.append(time.perf_counter() - began)
    return median(times)


def fetch(session: requests.Session, method: str, url: str, **kwargs: object) -> int:
    """Send a request, read the whole body in large chunks, check status and length; returns bytes read."""
    with session.request(method, url, stream=True, timeout=600, **kwargs) as response:  # type: ignore[arg-type]
        if response.status_code != 200:
            raise RuntimeError(f"{method} {url}: HTTP {response.status_code}: {response.text[:300]}")
        received = 0
        for chunk in response.raw.stream(CLIENT_CHUNK, decode_content=False):
            received += len(chunk)
        announced = response.headers.get("Content-Length")
        if announced is not None and int(announced) != received:
            raise RuntimeError(f"{url}: got {received} of {announced} bytes")
        return received


def fetch_each(session: requests.Session, urls: Sequence[str]) -> int:
    """Download the urls one after another; returns the bytes read."""
    return sum(fetch(session, "GET", url) for url in urls)


@dataclass(frozen=True)
class ProcStat:
    cpu_seconds: float
    system_seconds: float  # the part of cpu_seconds spent in the kernel
    rss: int
    hwm: int


def proc_stat(pid: int) -> ProcStat:
    """CPU time (user + system), resident and peak resident bytes of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICK
    system = int(fields[12]) / _TICK
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return ProcStat(cpu, system, rss, hwm)


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def workers_stat(server: LiveServer) -> list[ProcStat]:
    return [proc_stat(pid) for pid in server.worker_pids()]


@contextmanager
def service(tmp: Path, env: Mapping[str, str], workers: int = 1) -> Iterator[LiveServer]:
    """The real service: gunicorn with the gevent worker, no access log, PREFLIGHT_TIMEOUT 300 s, then `env`."""
    # PREFLIGHT_TIMEOUT: the default 20 s can pass for 10,000 sources on a busy 2-core machine; the bench
    # measures how long pre-flight takes, the deadline is the tests' business.
    settings: Mapping[str, str] = {"ACCESS_LOG": "", "LOG_LEVEL": "warning", "PREFLIGHT_TIMEOUT": "300", **env}
    with live_server(settings, tmp, workers=workers) as server:
        yield server


def make_file(path: Path, size: int, random_bytes: bool) -> Path:
    """A file of `size` bytes: random content, or sparse (zeros that cost no disk)."""
    if path.exists() and path.stat().st_size == size:
        return path
    with path.open("wb") as handle:
        if random_bytes:
            block = os.urandom(1 << 20)
            for offset in range(0, size, len(block)):
                handle.write(block[: min(len(block), size - offset)])
        else:
            handle.truncate(size)
    return path


def upstream_with(files: Mapping[str, Path], latency: float = 0.0) -> Nginx:
    """nginx serving `files` (URL path -> file); with `latency`, `url()` adds that many seconds per request."""
    server = Nginx(delay=latency or None).start()
    for name, path in files.items():
        server.add_file(name, path)
    return server


# -- curl, the client of every timed download -------------------------------------------------------
@dataclass(frozen=True)
class Fetch:
    """One timed curl run: wall seconds of the curl process, and for a single GET its first byte (for a POST
    see `time_to_first_byte`)."""

    wall: float
    first_byte: float  # time_starttransfer of the (last) transfer, s
    size: int  # bytes received, all transfers


def _curl() -> str:
    found = shutil.which("curl")
    if found is None:
        raise RuntimeError("curl is not installed: apt-get install -y curl")
    return found


def curl(url: str, *, post_json: Path | None = None, expect: int = 200, max_time: float | None = None) -> Fetch:
    """GET `url` (or POST the JSON file `post_json` to it) with curl, body to /dev/null; checks the status.
    `max_time`: seconds curl may take (RuntimeError past it)."""
    command = [_curl(), "-sS", "-o", os.devnull, "-w", "%{http_code} %{time_starttransfer} %{size_download}\\n"]
    if max_time is not None:
        command += ["--max-time", f"{max_time:g}"]
    if post_json is not None:
        command += ["-H", "Content-Type: application/json", "--data-binary", f"@{post_json}"]
    began = time.perf_counter()
    done = subprocess.run([*command, url], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    fields = done.stdout.split()
    if done.returncode != 0 or len(fields) != 3 or int(fields[0]) != expect:
        raise RuntimeError(f"curl {url}: exit {done.returncode}, {done.stdout.strip()!r} {done.stderr.strip()!r}")
    return Fetch(wall, float(fields[1]), int(fields[2]))


def time_to_first_byte(url: str, *, post_json: Path | None = None) -> float:
    """Seconds from sending a GET (or the POST of the JSON file `post_json`), connection included, to the
    status line, which the service sends with the zip's first bytes; then hangs up. Raises RuntimeError
    unless the status is 200.

    Not curl: curl 7.88's time_starttransfer is taken when it starts uploading a request body larger than
    its 64 KiB upload buffer (a POST /bundle of 10,000 sources is 600 KB), not at the answer.
    """
    parts = urlsplit(url)
    body = post_json.read_bytes() if post_json is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=600)
    try:
        began = time.perf_counter()
        connection.request("GET" if body is None else "POST", parts.path or "/", body=body, headers=headers)
        response = connection.getresponse()
        took = time.perf_counter() - began
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}: {response.read(300)!r}")
    finally:
        connection.close()
    return took


def curl_many(urls: Sequence[str], parallel: int = 1) -> Fetch:
    """Fetch every url with one curl process: one after another on one connection, or `parallel` at once.

    Returns the wall time of the curl process (its start-up, a few ms, included) and the bytes received;
    raises RuntimeError unless every answer is 200.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".curl", delete=False) as config:
        for url in urls:
            config.write(f'url = "{url}"\noutput = "{os.devnull}"\n')
    command = [_curl(), "-sS", "-w", "%{http_code} %{size_download}\\n", "-K", config.name]
    if parallel > 1:
        # --parallel-immediate: open the connections at once rather than wait to learn whether the first
        # one could multiplex (HTTP/1.1 never does: that wait costs one round trip).
        command += ["--parallel", "--parallel-immediate", "--parallel-max", str(parallel)]
    try:
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - began
    finally:
        os.unlink(config.name)
    lines = done.stdout.split("\n")
    answers = [line.split() for line in lines if line.strip()]
    bad = [answer for answer in answers if answer[0] != "200"]
    if done.returncode != 0 or bad or len(answers) != len(urls):
        raise RuntimeError(f"curl of {len(urls)} urls: exit {done.returncode}, {len(answers)} answers, "
                           f"first bad {bad[:1]}, {done.stderr.strip()[:300]!r}")
    return Fetch(wall, 0.0, sum(int(answer[1]) for answer in answers))


def json_body(tmp: Path, srcs: Sequence[str], compression: str = "stored") -> Path:
    """A POST /bundle request body in a file, for curl's --data-binary @file."""
    body = {"files": [{"src": src} for src in srcs], "compression": compression}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    path = tmp / f"body-{digest}.json"
    path.write_text(json.dumps(body))
    return path


def interleaved(runs: int, actions: Mapping[str, Callable[[], Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Run every action once per round, `runs` rounds, the order rotated each round so that none always goes
    first; returns each action's median of each reading (an action returns its readings by name)."""
    names = list(actions)
    readings: dict[str, list[Mapping[str, float]]] = {name: [] for name in names}
    for round_ in range(runs):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            readings[name].append(actions[name]())
    return {name: {key: median(reading[key] for reading in got) for key in got[0]}
            for name, got in readings.items()}


def ratio(ours: float, limit: float) -> str:
    """`ours / limit` as "1.23x" ('-' without a limit)."""
    return f"{ours / limit:.2f}x" if limit > 0 else "-"
