"""Make blocking libraries cooperate with gevent's greenlets (called once per worker process)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)


def gevent_active() -> bool:
    """True when gevent has monkey-patched the socket module (gunicorn's gevent worker)."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("socket"))


def patch() -> None:
    """Install psycopg2's wait callback so a slow query blocks one greenlet, not the worker."""
    if not gevent_active():
        return
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()
    log.debug("psycopg2 made cooperative for gevent")


def yielding(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`chunks` with a greenlet switch after each one, closing `chunks` when done.

    Under gevent, CPU-bound work between network waits (deflate of compressible data, CRC of a
    fast local source) would otherwise freeze every other download on the worker; `time.sleep(0)`
    is a switch there and a no-op with plain threads.
    """
    try:
        for chunk in chunks:
            yield chunk
            time.sleep(0)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
