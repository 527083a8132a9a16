"""gunicorn settings for ZipStream: gevent workers sized for thousands of long downloads.

The repository's top-level gunicorn.conf.py re-exports this module; `zipstream serve` uses it directly.
It runs in gunicorn's master, before any app exists: it reads the settings it needs from the
environment through their declarations in zipstream.config (same parsing, same messages).
"""

import contextlib
import os
import resource
import shutil
import sys
import tempfile
from typing import Any, TypeVar

from zipstream import sizing
from zipstream.config import (
    ACCESS_LOG,
    GRACEFUL_TIMEOUT,
    HEADER_TIMEOUT,
    LOG_LEVEL,
    PORT,
    PROMETHEUS_MULTIPROC_DIR,
    WEB_CONCURRENCY,
    WORKER_CONNECTIONS,
    WORKER_TIMEOUT,
    ConfigError,
    Setting,
)

T = TypeVar("T")


def _read(setting: Setting[T]) -> T:
    """The setting's value; a bad one stops gunicorn with one line naming it (not a traceback)."""
    try:
        return setting.read(os.environ)
    except ConfigError as error:
        sys.exit(f"zipstream: configuration error: {error}")  # SystemExit: gunicorn does not wrap it


bind = f"0.0.0.0:{_read(PORT)}"
# gunicorn's gevent worker, plus closing idle keep-alive connections when it stops (see the module).
worker_class = "zipstream.gunicorn_worker.GeventWorker"
# One per CPU this process may use (CPU set and cgroup quota, not the host's count); WEB_CONCURRENCY wins.
workers = sizing.default_workers(_read(WEB_CONCURRENCY))
# gunicorn 25.1+ opens a control socket at $XDG_RUNTIME_DIR or $HOME/.gunicorn/gunicorn.ctl: one path
# per user, so several instances on a host fight over it, and a read-only home logs "Control server
# error" at every start. Nothing here uses gunicornc. (Older gunicorn ignores the unknown name.)
control_socket_disable = True
# Each open download is one greenlet; memory per download is what bounds this, not threads.
# WORKER_CONNECTIONS is the app's limit of requests in flight per worker (zipstream.middleware answers
# 503 past it). gunicorn stops accepting connections when its own pool is full, and a client then
# waits with no answer at all, so its pool is larger: room for the refused clients and for idle
# keep-alive connections, which hold a pool slot but no request (an idle greenlet costs a few KB).
_request_limit = _read(WORKER_CONNECTIONS)
worker_connections = max(2 * _request_limit, _request_limit + 100)
# Downloads take hours on slow links: a worker restart must wait for them, and nothing may
# recycle a worker mid-download.
graceful_timeout = _read(GRACEFUL_TIMEOUT)
timeout = _read(WORKER_TIMEOUT)
max_requests = 0
# Waiting for a kept-alive connection's next request. A request's line and headers must then arrive
# within HEADER_TIMEOUT of its first byte (of the connection's accept, for the first request): the
# worker reads the setting itself (gunicorn has no such setting); checked here so a bad value stops
# the start with one line.
keepalive = 75
_read(HEADER_TIMEOUT)
# The app logs one JSON line per request itself (zipstream.logs.RequestLog, with the real end of a
# streamed body); gunicorn's own access log is only written when ACCESS_LOG names a file or "-".
accesslog = _read(ACCESS_LOG) or None
errorlog = "-"
loglevel = _read(LOG_LEVEL)
# Secrets are part of the /:id/:secret paths: this logger masks them before anything is written.
logger_class = "zipstream.logs.MaskingGunicornLogger"
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms'
wsgi_app = "zipstream.wsgi:app"

# Prometheus multiprocess mode, so /metrics adds up every worker: the metrics live in files of this
# directory. Set before any worker imports prometheus_client (it decides at import time).
# (The marker survives a HUP, which re-reads this file with the variable already set.)
_metrics_dir = _read(PROMETHEUS_MULTIPROC_DIR)
if not _metrics_dir:
    _metrics_dir = os.environ[PROMETHEUS_MULTIPROC_DIR.name] = tempfile.mkdtemp(prefix="zipstream-metrics-")
    os.environ["ZIPSTREAM_OWNS_METRICS_DIR"] = "1"


def on_starting(server: Any) -> None:
    """Raise the open-file limit to the hard limit: every download holds two sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1_048_576
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def post_worker_init(worker: Any) -> None:
    """Make psycopg2 cooperative in each worker, and keep its chunks' memory mapped (chunks.py).

    Not in `post_fork`: gunicorn calls that before the gevent worker's `init_process` runs
    `monkey.patch_all()`, so `cooperative.patch()` saw an unpatched socket module and did nothing
    (one slow query then froze every request of the worker). `post_worker_init` runs after the
    patch and after the app was loaded, before the first request is accepted.
    """
    from zipstream import chunks, cooperative

    cooperative.patch()
    chunks.keep_chunk_memory()


def when_ready(server: Any) -> None:
    """Start the metrics from zero: files left by an earlier run would be added to this one's."""
    os.makedirs(_metrics_dir, exist_ok=True)
    for name in os.listdir(_metrics_dir):
        if name.endswith(".db"):
            os.unlink(os.path.join(_metrics_dir, name))


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges (in-flight downloads) from /metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    """Remove the metrics directory this configuration created."""
    if os.environ.get("ZIPSTREAM_OWNS_METRICS_DIR") == "1":
        shutil.rmtree(_metrics_dir, ignore_errors=True)
