"""Make blocking libraries cooperate with gevent's greenlets (called once per worker process)."""

from __future__ import annotations

import logging

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
