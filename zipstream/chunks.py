"""Byte chunks, the unit of the whole data path: how big they are, how an iterator of them is let go, and
how their memory is kept.

No Flask, no network, no database: every layer from a source's body to the response imports this.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from collections.abc import Iterator

# The size bytes move in: every upstream body is read in reads of at most this many bytes (file,
# HTTP, S3, a decoded gzip body), which the stored zip passes through as they are, and the stored
# writer cuts what it makes itself (a central directory) into pieces of this size. 1 MiB: per-chunk
# Python work is then negligible next to the bytes (bench B6: 256 KiB reads cost ~30% more worker CPU
# per GB stored); larger ones would cost memory per download. The deflate writer gathers a quarter
# of it before its first byte (archive.DEFLATE_BLOCK says why).
CHUNK_SIZE = 1024 * 1024

_reading = threading.local()  # greenlet-local under gevent (threading.local is patched)


def read_size() -> int:
    """How many bytes the next read of an upstream body may return, at most: CHUNK_SIZE, or less while
    the download that pulls it says so (`reading`).

    A source reads `read_size()` rather than CHUNK_SIZE in each read, so that a download whose client
    drains slowly reads small chunks: what a stalled download keeps is its last chunk (memory.py).
    """
    size: int = getattr(_reading, "size", CHUNK_SIZE)
    return size


@contextlib.contextmanager
def reading(size: int) -> Iterator[None]:
    """Within the block, reads in this thread (greenlet) return at most `size` bytes (`read_size`)."""
    previous = getattr(_reading, "size", CHUNK_SIZE)
    _reading.size = max(1, min(size, CHUNK_SIZE))
    try:
        yield
    finally:
        _reading.size = previous


def close_iterator(iterator: object) -> None:
    """Close `iterator` now if it can be closed (a generator, an upstream body), else do nothing (None too).

    A generator's `finally` (closing a socket, giving held bytes back, stopping read-ahead) runs
    only when it is exhausted, closed or collected; every layer that stops reading early calls this
    in its own `finally`, so an aborted download releases everything below it at once.
    """
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


# glibc hands freed heap memory back to the system once more than its trim threshold lies free at
# the top of the heap, and by default that threshold follows the largest block freed so far: about
# 2 MiB once a 1 MiB chunk was freed, up to 64 MiB. A download keeps several MiB of chunks in flight
# (with read-ahead, up to a chunk per member fetched ahead), so until a worker happened to free a
# big block, that memory went back after each download or burst and was faulted in again, page by
# page and zeroed: 22,000-49,000 page faults per GB of a stored zip (deflate: up to 278,000) and
# 10-18% of the worker's CPU, in some workers and not others (bench B6 and B1, `minflt` of the
# worker). Fixed thresholds start every worker in the state the default policy may reach late or
# never: a chunk always comes from the heap (below MMAP), and up to TRIM bytes of freed heap stay
# mapped for the next chunks (64 MiB: the default policy's own ceiling). TRIM is what a worker may
# keep mapped beyond what it uses (its peak RSS is unchanged); freed memory beyond it still goes
# back, and blocks above MMAP are returned as soon as freed.
HEAP_MMAP_THRESHOLD = 4 * CHUNK_SIZE
HEAP_TRIM_THRESHOLD = 64 * CHUNK_SIZE
_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3


# TRIM only ever applies to the top of the heap. Freed chunks between blocks still in use (a download's
# sockets, its greenlet's saved stack, the next download's objects) stay resident whatever it says, and
# a crowd of downloads whose chunks come and go in every size from memory.MIN_READ to CHUNK_SIZE leaves
# the heap full of such holes: at 1,000 stalled downloads per worker, 151 MiB of free heap at the peak of
# their drain, 250 MiB still resident after it (bench/memory_probe.py), more than the whole
# MEMORY_BUDGET. `give_back_freed_heap` returns the whole free pages of every hole (malloc_trim(0),
# MADV_DONTNEED) once more than HEAP_FREE_LIMIT lies free (looked at as downloads end, at most once per
# HEAP_FREE_EVERY), so what a worker keeps mapped beyond what it uses stays about that, wherever it
# lies. A single download never reaches it (no page is faulted in again, B6); a crowd pays the faults
# of what it gives back and takes again.
HEAP_FREE_LIMIT = 16 * CHUNK_SIZE
HEAP_FREE_EVERY = 1.0  # seconds at least between two looks (`give_back_freed_heap_now_and_then`)
_looked_at = 0.0  # time.monotonic() of the last look


class _MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2 (malloc.h, glibc 2.33+)
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc, else None."""
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):  # not a name this C library knows: not glibc
        return None
    return ctypes.CDLL(None) if libc.startswith("glibc") else None


def freed_heap() -> int | None:
    """Bytes glibc's malloc holds free in its heaps (mallinfo2's fordblks), or None where it can't say."""
    libc = _glibc()
    mallinfo2 = getattr(libc, "mallinfo2", None)
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().fordblks)


def give_back_freed_heap(limit: int = HEAP_FREE_LIMIT) -> bool:
    """If more than `limit` bytes of the heap are free, give their whole pages back to the system
    (malloc_trim(0)); True if it did. A no-op returning False where the C library is not glibc."""
    free = freed_heap()
    if free is None or free <= limit:
        return False
    libc = _glibc()
    assert libc is not None  # freed_heap() said it is glibc
    libc.malloc_trim(0)
    return True


def give_back_freed_heap_now_and_then() -> bool:
    """`give_back_freed_heap()` if it was last asked more than HEAP_FREE_EVERY s ago (~0.3 ms a look, 1-7 ms
    a give-back); called as each download ends (counters.track_download), so a worker looks as often as
    its downloads come and go and never while it is idle. No periodic greenlet: one that woke the worker
    every second made tests/test_gunicorn_worker.py's HEADER_TIMEOUT test miss its 408 (2 runs in 8)."""
    global _looked_at
    now = time.monotonic()
    if now - _looked_at < HEAP_FREE_EVERY:
        return False
    _looked_at = now
    return give_back_freed_heap()


def keep_chunk_memory() -> bool:
    """Make glibc's malloc keep chunk-sized memory mapped between chunks (see HEAP_TRIM_THRESHOLD).

    Process-wide; called once per worker (gunicorn_conf.post_worker_init). True if set; False, doing
    nothing, where the C library is not glibc (musl, macOS: other allocators, other policies).
    """
    mallopt = getattr(_glibc(), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD))
