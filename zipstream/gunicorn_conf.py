"""gunicorn settings for ZipStream: gevent workers sized for thousands of long downloads.

The repository's top-level gunicorn.conf.py re-exports this module; `zipstream serve` uses it directly.
"""

import multiprocessing
import os
import resource

bind = f"0.0.0.0:{os.environ.get('PORT', '4040')}"
worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", max(2, multiprocessing.cpu_count())))
# Each open download is one greenlet; memory per download is what bounds this, not threads.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "10000"))
# Downloads take hours on slow links: a worker restart must wait for them, and nothing may
# recycle a worker mid-download.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "3600"))
timeout = int(os.environ.get("WORKER_TIMEOUT", "60"))
max_requests = 0
keepalive = 75
accesslog = os.environ.get("ACCESS_LOG", "-")
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# Secrets are part of the /:id/:secret paths: this logger masks them before anything is written.
logger_class = "zipstream.logs.MaskingGunicornLogger"
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms'
wsgi_app = "zipstream.wsgi:app"


def on_starting(server):  # noqa: ARG001 - gunicorn hook signature
    """Raise the open-file limit to the hard limit: every download holds two sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1_048_576
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def post_fork(server, worker):  # noqa: ARG001 - gunicorn hook signature
    """Make psycopg2 cooperative in each worker (gevent has patched the socket module by now)."""
    from zipstream import cooperative

    cooperative.patch()
