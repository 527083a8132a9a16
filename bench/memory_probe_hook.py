"""Inside a gunicorn worker, for bench/memory_probe.py only (never imported by the product): answers
questions about the worker's memory on a Unix socket, and samples its RSS against what MEMORY_BUDGET has
granted, keeping the readings at the peaks.

Started by bench/memory_probe_gunicorn.py's post_worker_init. Commands (one line, answer JSON):
`stats`, `holders`, `snapshot [N]` (tracemalloc, when PROBE_TRACEMALLOC is set), `peaks`, `reset`,
`malloc_info`, `collect`.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import os
import socket
import sys
import tempfile
import time
import tracemalloc
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE")
SAMPLE_EVERY = 0.05


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _MallInfo2


def rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


def mallinfo() -> dict[str, int]:
    info = _libc.mallinfo2()
    return {name: int(getattr(info, name)) for name, _ in _MallInfo2._fields_}


def malloc_info() -> str:
    fd, path = tempfile.mkstemp(prefix="malloc-info-")
    os.close(fd)
    _libc.fopen.restype = ctypes.c_void_p
    _libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    _libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    _libc.fclose.argtypes = [ctypes.c_void_p]
    stream = _libc.fopen(path.encode(), b"w")
    _libc.malloc_info(0, stream)
    _libc.fclose(stream)
    with open(path) as handle:
        text = handle.read()
    os.unlink(path)
    return text


def _status() -> dict[str, int]:
    found = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile", "VmData", "Threads")):
                name, value = line.split(":", 1)
                found[name] = int(value.split()[0]) * (1 if name == "Threads" else 1024)
    return found


def smaps() -> dict[str, dict[str, int]]:
    """Resident KiB by kind of mapping: [heap], [stack], files, and anonymous ones by size (16 KiB: CPython's
    frame data-stack chunks, one per greenlet that ran Python; 1 MiB: pymalloc arenas; 64 MiB+: malloc arenas
    of other threads; 8 MiB: thread stacks)."""
    groups: dict[str, dict[str, int]] = {}
    current = None
    with open("/proc/self/smaps") as handle:
        for line in handle:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):
                parts = line.split()
                start, end = (int(x, 16) for x in parts[0].split("-"))
                size = (end - start) // 1024
                name = parts[5] if len(parts) > 5 else ""
                if name.startswith("["):
                    key = name
                elif name:
                    key = "file"
                else:
                    key = f"anon {size} KiB" if size in (16, 32, 64, 1024, 8192, 8196) else (
                        "anon <1 MiB" if size < 1024 else "anon >=1 MiB")
                current = groups.setdefault(key, {"maps": 0, "size_kib": 0, "rss_kib": 0})
                current["maps"] += 1
                current["size_kib"] += size
            elif first == "Rss:" and current is not None:
                current["rss_kib"] += int(line.split()[1])
    return groups


def pymalloc() -> dict[str, int]:
    """pymalloc's totals (sys._debugmallocstats, written to fd 2: captured): its arenas are 1 MiB mmaps,
    outside glibc's mallinfo."""
    fd, path = tempfile.mkstemp(prefix="pymalloc-")
    saved = os.dup(2)
    try:
        os.dup2(fd, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
    found: dict[str, int] = {}
    with open(path) as handle:
        for line in handle:
            for label, key in (("# arenas allocated current", "arenas"), ("bytes in allocated blocks", "allocated"),
                               ("bytes in available blocks", "available")):
                if label in line and key not in found:
                    found[key] = int(line.rsplit("=", 1)[1].strip().replace(",", ""))
    os.unlink(path)
    return found


def _budget() -> dict[str, int]:
    from zipstream import memory

    budget = memory._worker
    if budget is None:
        return {}
    return {"total": budget.total, "used": budget.used, "ahead": budget.ahead, "peak": budget.peak,
            "waiting": budget.waiting}


def _fds() -> dict[str, int]:
    kinds: collections.Counter[str] = collections.Counter()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        kinds[target.split(":", 1)[0] if ":" in target else "file"] += 1
    return dict(kinds)


def _greenlets() -> dict[str, Any]:
    import greenlet

    groups: dict[str, list[int]] = {}
    for obj in gc.get_objects():
        if not isinstance(obj, greenlet.greenlet):
            continue
        frame = obj.gr_frame
        names = []
        while frame is not None:
            names.append(frame.f_code.co_name)
            frame = frame.f_back
        key = " < ".join(names[:3]) + (f" ... {names[-1]}" if len(names) > 3 else "") if names else (
            "dead" if obj.dead else "not started" if not obj else "running")
        entry = groups.setdefault(key, [0, 0, 0])
        entry[0] += 1
        entry[1] += obj._stack_saved
        entry[2] += len(names)
    top = sorted(groups.items(), key=lambda item: -item[1][0])[:12]
    return {"count": sum(value[0] for value in groups.values()),
            "stack_saved": sum(value[1] for value in groups.values()),
            "groups": [{"where": key, "count": value[0], "stack_saved": value[1],
                        "frames_avg": round(value[2] / value[0], 1)} for key, value in top]}


def _types(limit: int = 40) -> list[tuple[str, int]]:
    counts: collections.Counter[str] = collections.Counter(type(obj).__qualname__ for obj in gc.get_objects())
    return counts.most_common(limit)


def holders(minimum: int = 4096) -> dict[str, Any]:
    """Big bytes-like objects referenced by suspended frames (generators, greenlets), deques and objects'
    attributes of the data path: (where, variable) -> [count, bytes]."""
    import greenlet

    found: dict[str, list[int]] = {}
    seen: set[int] = set()

    def note(where: str, value: object) -> None:
        if isinstance(value, bytes | bytearray | memoryview) and len(value) >= minimum and id(value) not in seen:
            seen.add(id(value))
            entry = found.setdefault(where, [0, 0])
            entry[0] += 1
            entry[1] += value.nbytes if isinstance(value, memoryview) else len(value)

    def frame_locals(frame: Any) -> None:
        while frame is not None:
            code = frame.f_code
            for name, value in list(frame.f_locals.items()):
                note(f"{code.co_filename.rsplit('/', 2)[-1]}:{code.co_name}.{name}", value)
                if isinstance(value, list | tuple):
                    for item in value[:8]:
                        note(f"{code.co_filename.rsplit('/', 2)[-1]}:{code.co_name}.{name}[]", item)
            frame = frame.f_back

    for obj in gc.get_objects():
        try:
            _holder(obj, greenlet.greenlet, note, frame_locals)
        except Exception:  # noqa: S112 - proxies (flask.g) raise on any attribute outside a request
            continue
    ranked = sorted(found.items(), key=lambda item: -item[1][1])[:30]
    return {"total": sum(value[1] for value in found.values()), "count": sum(value[0] for value in found.values()),
            "by_where": [[where, value[0], value[1]] for where, value in ranked]}


def _holder(obj: Any, greenlet_type: type, note: Any, frame_locals: Any) -> None:
    kind = type(obj)
    if isinstance(obj, greenlet_type):
        frame_locals(obj.gr_frame)
    elif kind.__name__ == "generator" and obj.gi_frame is not None:  # type: ignore[attr-defined]
        frame_locals(obj.gi_frame)  # type: ignore[attr-defined]
    elif isinstance(obj, collections.deque):
        for item in list(obj)[:64]:
            note("deque[]", item)
            if isinstance(item, tuple):
                for part in item:
                    note("deque[](tuple)", part)
    elif not isinstance(getattr(kind, "__module__", None), str):
        return
    elif hasattr(obj, "__dict__") and kind.__module__.startswith(("zipstream", "urllib3", "http", "requests")):
        for name, value in list(vars(obj).items()):
            note(f"{kind.__module__}.{kind.__qualname__}.{name}", value)
    elif hasattr(kind, "__slots__") and kind.__module__.startswith("zipstream"):
        for name in kind.__slots__:
            note(f"{kind.__module__}.{kind.__qualname__}.{name}", getattr(obj, name, None))


def stats(detail: bool = True) -> dict[str, Any]:
    times = os.times()
    out: dict[str, Any] = {"pid": os.getpid(), "time": time.time(), "rss": rss(), "cpu": times.user + times.system,
                           "status": _status(),
                           "budget": _budget(), "mallinfo": mallinfo(), "fds": _fds(), "smaps": smaps(),
                           "pymalloc": pymalloc()}
    if detail:
        out["greenlets"] = _greenlets()
        out["types"] = _types()
        out["gc_objects"] = len(gc.get_objects())
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        out["tracemalloc"] = {"current": current, "peak": peak, "overhead": tracemalloc.get_tracemalloc_memory()}
    return out


def snapshot(limit: int = 25, frames: int = 12) -> dict[str, Any]:
    if not tracemalloc.is_tracing():
        return {"error": "not tracing (set PROBE_TRACEMALLOC)"}
    snap = tracemalloc.take_snapshot()
    snap = snap.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    total = sum(stat.size for stat in snap.statistics("filename"))
    by_trace = []
    for stat in snap.statistics("traceback")[:limit]:
        lines = [f"{frame.filename.rsplit('site-packages/', 1)[-1].rsplit('wt-ovh/', 1)[-1]}:{frame.lineno}"
                 for frame in stat.traceback[-frames:]]
        by_trace.append({"size": stat.size, "count": stat.count, "traceback": lines[::-1]})
    by_line = [{"size": stat.size, "count": stat.count,
                "where": f"{stat.traceback[0].filename.rsplit('site-packages/', 1)[-1]}:{stat.traceback[0].lineno}"}
               for stat in snap.statistics("lineno")[:limit]]
    return {"total": total, "by_traceback": by_trace, "by_line": by_line}


class _Sampler:
    """RSS and granted every SAMPLE_EVERY s; keeps the readings at the highest RSS and the highest RSS - granted."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.peak_rss: dict[str, Any] = {"rss": 0}
        self.peak_over: dict[str, Any] = {"over": -(1 << 62)}
        self.samples = 0
        self.holders_at_peak: dict[str, Any] | None = None
        self._holders_rss = 0
        self.want_holders = os.environ.get("PROBE_HOLDERS_AT_PEAK") == "1"
        self.want_snapshot = os.environ.get("PROBE_SNAPSHOT_AT_PEAK") == "1"
        self.snapshot_at_peak: dict[str, Any] | None = None

    def run(self) -> None:
        import gevent

        from zipstream import memory

        while True:
            gevent.sleep(SAMPLE_EVERY)
            budget = memory._worker
            used = budget.used if budget is not None else 0
            now = rss()
            self.samples += 1
            if now > self.peak_rss["rss"]:
                self.peak_rss = {"rss": now, "granted": used, "mallinfo": mallinfo(), "time": time.time(),
                                 "ahead": budget.ahead if budget else 0, "waiting": budget.waiting if budget else 0}
                # The expensive walks only on a clearly new peak (they cost the worker ~0.1-1 s each).
                if (self.want_holders or self.want_snapshot) and now > self._holders_rss + 16 * 1024 * 1024:
                    self._holders_rss = now
                    if self.want_holders:
                        self.holders_at_peak = {"rss": now, "granted": used, **holders()}
                    if self.want_snapshot and tracemalloc.is_tracing():
                        self.snapshot_at_peak = {"rss": now, "granted": used, **snapshot(20, 10)}
            if now - used > self.peak_over["over"]:
                self.peak_over = {"over": now - used, "rss": now, "granted": used, "time": time.time()}


_sampler = _Sampler()


_trims = {"count": 0, "seconds": 0.0}


def _trimmer(every: float, free: int) -> None:
    import gevent

    while True:
        gevent.sleep(every)
        if _libc.mallinfo2().fordblks > free:
            began = time.perf_counter()
            _libc.malloc_trim(0)
            _trims["count"] += 1
            _trims["seconds"] += time.perf_counter() - began


def _answer(command: str) -> Any:
    name, _, arg = command.strip().partition(" ")
    if name == "stats":
        return stats()
    if name == "quick":
        return stats(detail=False)
    if name == "holders":
        return holders()
    if name == "snapshot":
        return snapshot(int(arg or 25))
    if name == "peaks":
        return {"peak_rss": _sampler.peak_rss, "peak_over": _sampler.peak_over, "samples": _sampler.samples,
                "trims": _trims, "holders_at_peak": _sampler.holders_at_peak,
                "snapshot_at_peak": _sampler.snapshot_at_peak}
    if name == "reset":
        _sampler.reset()
        if tracemalloc.is_tracing():
            tracemalloc.reset_peak()
        return {"ok": True}
    if name == "malloc_info":
        return {"xml": malloc_info()}
    if name == "collect":
        return {"collected": gc.collect()}
    if name == "trim":
        return {"trimmed": _libc.malloc_trim(0), "rss": rss()}
    return {"error": f"unknown command {name!r}"}


def start(directory: str) -> None:
    """Serve the probe on `directory`/<pid>.sock and start the sampler (in the worker, after gevent's patch)."""
    import gevent
    from gevent.server import StreamServer

    frames = int(os.environ.get("PROBE_TRACEMALLOC") or 0)
    if frames:
        tracemalloc.start(frames)
    path = os.path.join(directory, f"{os.getpid()}.sock")
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)

    def handle(conn: socket.socket, _address: object) -> None:
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                part = conn.recv(4096)
                if not part:
                    return
                data += part
            try:
                answer = _answer(data.decode())
            except Exception as error:
                answer = {"error": f"{type(error).__name__}: {error}"}
            conn.sendall(json.dumps(answer, default=str).encode() + b"\n")

    StreamServer(listener, handle).start()
    gevent.spawn(_sampler.run)
    # Experiments (never the product's settings): other malloc thresholds, a periodic malloc_trim.
    for variable, option in (("PROBE_MMAP_THRESHOLD", -3), ("PROBE_TRIM_THRESHOLD", -1)):
        if os.environ.get(variable):
            _libc.mallopt(option, int(os.environ[variable]))
    if os.environ.get("PROBE_TRIM_EVERY"):
        gevent.spawn(_trimmer, float(os.environ["PROBE_TRIM_EVERY"]), int(os.environ.get("PROBE_TRIM_FREE") or 0))
    print(f"memory probe on {path}", file=sys.stderr)
