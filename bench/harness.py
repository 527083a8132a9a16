"""What every benchmark needs: local upstreams, the real service, timers, /proc readings, result tables."""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.live import LiveServer, live_server  # noqa: E402 - after the path set-up
from tests.support.upstream import UpstreamServer  # noqa: E402

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
    """The real service: gunicorn with the gevent worker, no access log, the given settings."""
    settings: Mapping[str, str] = {"ACCESS_LOG": "", "LOG_LEVEL": "warning", **env}
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


def upstream_with(files: Mapping[str, Path], latency: float = 0.0) -> UpstreamServer:
    server = UpstreamServer().start()
    for name, path in files.items():
        server.add_file(name, path)
    if latency:
        server.set_behaviour(latency=latency)
    return server
