"""zipstream/chunks.py: the memory chunks live in (close_iterator is covered where each layer uses it)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from zipstream import chunks
from zipstream.chunks import CHUNK_SIZE

from .support.live import LiveServer

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the policy is glibc's malloc")

# Chunks as a download holds them: a few in flight, freed, the next ones allocated. Prints the page
# faults of the loop (the first round, which maps the memory, is not counted).
_CHURN = f"""
import resource, sys
from zipstream.chunks import keep_chunk_memory
if sys.argv[1] == "kept":
    assert keep_chunk_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
held = [b"x" * {CHUNK_SIZE} for _ in range(4)]
del held
before = faults()
for _ in range(100):
    held = [b"x" * {CHUNK_SIZE} for _ in range(4)]
    del held
print(faults() - before)
"""
_PAGES = 100 * 4 * CHUNK_SIZE // 4096  # pages the loop writes


def _churn_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, check=True)
    return int(done.stdout)


@glibc_only
def test_kept_chunk_memory_is_not_faulted_in_again() -> None:
    assert _churn_faults("default") > _PAGES // 2  # glibc's own policy: most pages mapped again each round
    assert _churn_faults("kept") < _PAGES // 100


@glibc_only
def test_a_worker_streams_a_big_member_without_faulting_its_memory_again(
    serve: Callable[..., LiveServer], tmp_path: Path
) -> None:
    """gunicorn_conf.post_worker_init keeps chunk memory: a second download of 128 MiB maps ~no new pages
    (glibc's default policy: ~3,400, one in ten of the chunks' pages)."""
    root = tmp_path / "files"
    root.mkdir()
    with (root / "big.bin").open("wb") as handle:
        handle.truncate(128 * CHUNK_SIZE)
    server = serve(FS_INTERFACES="file", FILE_ROOT=str(root))
    (pid,) = server.worker_pids()
    created = requests.post(server.url("/"), json={"files": [{"src": "file:///big.bin"}]}, timeout=30)
    created.raise_for_status()
    url = server.url("/" + created.json()["id"])

    def download() -> int:
        before = _minor_faults(pid)
        with requests.get(url, stream=True, timeout=120) as response:
            assert response.status_code == 200
            received = sum(len(chunk) for chunk in response.iter_content(CHUNK_SIZE))
        assert received > 128 * CHUNK_SIZE
        return _minor_faults(pid) - before

    download()  # warm-up: imports, caches, the heap's first growth
    assert download() < 128 * CHUNK_SIZE // 4096 // 100


def _minor_faults(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def test_keep_chunk_memory_does_nothing_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_glibc(name: str) -> str:
        raise ValueError(f"unrecognized configuration name {name!r}")  # what musl's and macOS's Pythons raise

    monkeypatch.setattr(os, "confstr", not_glibc)
    assert chunks.keep_chunk_memory() is False


# A heap full of holes, as a crowd of downloads leaves it: every other chunk freed, the ones between still
# in use, so nothing lies free at the top of the heap and glibc's own trimming gives back nothing. Prints
# (given back?, RSS before - after).
_HOLES = f"""
import sys
from zipstream.chunks import give_back_freed_heap, keep_chunk_memory
assert keep_chunk_memory()
def rss():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096
held = [b"x" * {CHUNK_SIZE} for _ in range(128)]
kept = held[1::2]
del held
before = rss()
gave = give_back_freed_heap(int(sys.argv[1]))
print(int(gave), before - rss())
"""


def _holes(limit: int) -> tuple[bool, int]:
    done = subprocess.run([sys.executable, "-c", _HOLES, str(limit)], capture_output=True, text=True, check=True)
    gave, dropped = done.stdout.split()
    return gave == "1", int(dropped)


@glibc_only
def test_freed_heap_between_blocks_in_use_goes_back_past_the_limit() -> None:
    """64 freed chunks between chunks in use stay resident under the kept-memory policy (TRIM applies to the
    heap's top only) while they are within the limit; past it, their pages go back."""
    assert _holes(1 << 40) == (False, 0)  # within the limit: kept, as keep_chunk_memory wants
    gave, dropped = _holes(16 * CHUNK_SIZE)
    assert gave
    assert dropped > 60 * CHUNK_SIZE


def test_give_back_freed_heap_does_nothing_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_glibc(name: str) -> str:
        raise ValueError(f"unrecognized configuration name {name!r}")

    monkeypatch.setattr(os, "confstr", not_glibc)
    assert chunks.freed_heap() is None
    assert chunks.give_back_freed_heap(0) is False


def test_freed_heap_is_looked_at_most_once_a_heap_free_every(monkeypatch: pytest.MonkeyPatch) -> None:
    looks: list[int] = []
    clock = [1000.0]
    monkeypatch.setattr(chunks, "give_back_freed_heap", lambda: looks.append(1) or True)
    monkeypatch.setattr(chunks.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(chunks, "_looked_at", 0.0)
    assert chunks.give_back_freed_heap_now_and_then()
    clock[0] += chunks.HEAP_FREE_EVERY / 2
    assert not chunks.give_back_freed_heap_now_and_then()
    clock[0] += chunks.HEAP_FREE_EVERY
    assert chunks.give_back_freed_heap_now_and_then()
    assert len(looks) == 2


def test_each_download_that_ends_looks_at_the_freed_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A crowd's holes are given back as its downloads end (completed or cut), not by a periodic greenlet."""
    from zipstream import counters

    looks: list[int] = []
    monkeypatch.setattr(counters, "give_back_freed_heap_now_and_then", lambda: looks.append(1) or False)
    assert b"".join(counters.track_download(iter([b"a", b"b"]), kind="bundle", started=0.0, request_id=None)) == b"ab"
    cut = counters.track_download(iter([b"a", b"b"]), kind="bundle", started=0.0, request_id=None)
    next(cut)
    cut.close()
    assert len(looks) == 2
