"""Make blocking libraries cooperate with gevent's greenlets (called once per worker process)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from .chunks import close_iterator

T = TypeVar("T")

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


_pools: dict[str, Any] = {}  # lane -> gevent ThreadPool, in this process
_pools_pid = 0
_pools_lock = threading.Lock()


def offload(lane: str, size: int, func: Callable[..., T], *args: Any) -> T:
    """`func(*args)`, run in a real OS thread of `lane`'s pool (at most `size` threads) under gevent.

    For C calls that block without yielding (sqlite3 waiting for a lock with its busy timeout): the
    calling greenlet waits for the result while the others run. Without gevent this is a plain call.
    Each lane has its own pool, so calls that may wait long (writes queued on a lock) cannot take the
    threads quick ones need (reads); gevent's hub pool is not used, as DNS lookups depend on it.
    Exceptions raised by `func` are raised here.
    """
    if not gevent_active():
        return func(*args)
    global _pools_pid
    with _pools_lock:
        if _pools_pid != os.getpid():  # pools do not survive a fork: each worker makes its own
            _pools.clear()
            _pools_pid = os.getpid()
        pool = _pools.get(lane)
        if pool is None:
            from gevent.threadpool import ThreadPool

            pool = _pools[lane] = ThreadPool(size)
    # The exception travels back as a value: gevent's pool would also print every exception a task
    # raises, with a traceback, to stderr (expected ones too, such as a missing table while not migrated).
    succeeded, value = pool.apply(_capture, (func, args))
    if not succeeded:
        raise value
    result: T = value
    return result


def spawn(func: Callable[[], object], name: str) -> None:
    """Run `func()` concurrently: a greenlet under gevent, a daemon thread otherwise; nobody joins it.

    Under gevent a bare greenlet costs a few microseconds to start, a monkey-patched `threading.Thread`
    several times that (its own locks, events and registry entry): pre-flight starts up to
    PREFLIGHT_CONCURRENCY of them per download. `func` must handle its own errors (gevent would print
    an escaping one to stderr, as a thread does).
    """
    if gevent_active():
        import gevent

        gevent.spawn(func)
        return
    threading.Thread(target=func, name=name, daemon=True).start()


def _capture(func: Callable[..., Any], args: tuple[Any, ...]) -> tuple[bool, Any]:
    try:
        return True, func(*args)
    except BaseException as error:  # noqa: BLE001 - re-raised in the calling greenlet
        return False, error


# How long one greenlet may keep the worker busy before it lets the others run.
SWITCH_INTERVAL = 0.005


class Turns:
    """One download's turns on the worker: a greenlet switch once it has run SWITCH_INTERVAL seconds.

    Under gevent, a download whose upstream and client never make it wait (fast loopback peers,
    deflate of compressible data) would otherwise freeze every other download on the worker;
    `time.sleep(0)` is a switch there and a no-op with plain threads. Switching on every chunk
    cost ~14% of a fast download's CPU, hence the interval. One clock for every iterator of the
    download (its output and, for deflate, each member's input), so a zip of many small members
    switches as often as one of a big member.
    """

    def __init__(self) -> None:
        self._due = time.monotonic() + SWITCH_INTERVAL

    def yielding(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """`chunks`, switching after any chunk that ends this download's turn; closes `chunks` when done.

        The time counted runs until the consumer asks for the next chunk, so it includes what the
        consumer did with the last one (deflating it, sending it).
        """
        clock = time.monotonic
        try:
            for chunk in chunks:
                yield chunk
                del chunk  # not kept while the next is read (memory.py: a grant covers one chunk)
                if clock() >= self._due:
                    time.sleep(0)
                    self._due = clock() + SWITCH_INTERVAL
        finally:
            close_iterator(chunks)
