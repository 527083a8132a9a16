"""gunicorn settings for ZipStream: gevent workers sized for thousands of long downloads.

The repository's top-level gunicorn.conf.py re-exports this module; `zipstream serve` uses it directly.
"""

import contextlib
import os
import resource
import shutil
import sys
import tempfile
from typing import Any

from zipstream import sizing
from zipstream.config import ConfigError, whole_number
from zipstream.gunicorn_worker import HEADER_TIMEOUT_DEFAULT


def _setting(name: str, default: int, minimum: int = 1) -> int:
    """A whole-number setting; a bad value stops gunicorn with one line naming it (not a traceback)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return whole_number(name, raw, minimum)
    except ConfigError as error:
        sys.exit(f"zipstream: configuration error: {error}")  # SystemExit: gunicorn does not wrap it


bind = f"0.0.0.0:{_setting('PORT', 4040)}"
# gunicorn's gevent worker, plus closing idle keep-alive connections when it stops (see the module).
worker_class = "zipstream.gunicorn_worker.GeventWorker"
# One per CPU this process may use (CPU set and cgroup quota, not the host's count); WEB_CONCURRENCY wins.
try:
    workers = sizing.default_workers()
except ValueError as error:  # WEB_CONCURRENCY below 1 (gunicorn itself already refused a non-number)
    sys.exit(f"zipstream: configuration error: {error}")
# gunicorn 25.1+ opens a control socket at $XDG_RUNTIME_DIR or $HOME/.gunicorn/gunicorn.ctl: one path
# per user, so several instances on a host fight over it, and a read-only home logs "Control server
# error" at every start. Nothing here uses gunicornc. (Older gunicorn ignores the unknown name.)
control_socket_disable = True
# Each open download is one greenlet; memory per download is what bounds this, not threads.
# WORKER_CONNECTIONS is the app's limit of requests in flight per worker (zipstream.middleware answers
# 503 past it). gunicorn stops accepting connections when its own pool is full, and a client then
# waits with no answer at all, so its pool is larger: room for the refused clients and for idle
# keep-alive connections, which hold a pool slot but no request (an idle greenlet costs a few KB).
_request_limit = _setting("WORKER_CONNECTIONS", 10000)
worker_connections = max(2 * _request_limit, _request_limit + 100)
# Downloads take hours on slow links: a worker restart must wait for them, and nothing may
# recycle a worker mid-download.
graceful_timeout = _setting("GRACEFUL_TIMEOUT", 3600, minimum=0)
timeout = _setting("WORKER_TIMEOUT", 60)
max_requests = 0
# Waiting for a kept-alive connection's next request. A request's line and headers must then arrive
# within HEADER_TIMEOUT of its first byte (of the connection's accept, for the first request): the
# worker reads the setting itself (gunicorn has no such setting); checked here so a bad value stops
# the start with one line.
keepalive = 75
_header_timeout = _setting("HEADER_TIMEOUT", HEADER_TIMEOUT_DEFAULT)
# The app logs one JSON line per request itself (zipstream.logs.RequestLog, with the real end of a
# streamed body); gunicorn's own access log is only written when ACCESS_LOG names a file or "-".
accesslog = os.environ.get("ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# Secrets are part of the /:id/:secret paths: this logger masks them before anything is written.
logger_class = "zipstream.logs.MaskingGunicornLogger"
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms'
wsgi_app = "zipstream.wsgi:app"

# Prometheus multiprocess mode, so /metrics adds up every worker: the metrics live in files of this
# directory. Set before any worker imports prometheus_client (it decides at import time).
# (The marker survives a HUP, which re-reads this file with the variable already set.)
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="zipstream-metrics-")
    os.environ["ZIPSTREAM_OWNS_METRICS_DIR"] = "1"


def on_starting(server: Any) -> None:
    """Raise the open-file limit to the hard limit: every download holds two sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1_048_576
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def post_worker_init(worker: Any) -> None:
    """Make psycopg2 cooperative in each worker.

    Not in `post_fork`: gunicorn calls that before the gevent worker's `init_process` runs
    `monkey.patch_all()`, so `cooperative.patch()` saw an unpatched socket module and did nothing
    (one slow query then froze every request of the worker). `post_worker_init` runs after the
    patch and after the app was loaded, before the first request is accepted.
    """
    from zipstream import cooperative

    cooperative.patch()


def when_ready(server: Any) -> None:
    """Start the metrics from zero: files left by an earlier run would be added to this one's."""
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.unlink(os.path.join(directory, name))


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges (in-flight downloads) from /metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    """Remove the metrics directory this configuration created."""
    if os.environ.get("ZIPSTREAM_OWNS_METRICS_DIR") == "1":
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
