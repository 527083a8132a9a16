"""Byte chunks, the unit of the whole data path: how big they are and how an iterator of them is let go.

No Flask, no network, no database: every layer from a source's body to the response imports this.
"""

from __future__ import annotations

import contextlib
import threading
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
