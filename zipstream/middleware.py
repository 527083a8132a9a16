"""The WSGI layers around the Flask app, outermost first: the client's address, the request log, the
per-worker request limit.

- `TRUSTED_PROXY_HOPS` (default 0): how many proxies in front of the service append to
  `X-Forwarded-For`. Werkzeug's `ProxyFix(x_for=N)` then takes the client's address from the N-th
  entry from the right, so log lines name the client, not the proxy. With 0 the header is ignored:
  anyone can send one, so trusting it without a proxy that rewrites it would let clients choose the
  address they are logged under.
- `WORKER_CONNECTIONS` (default 10000): requests one worker serves at once. Past it a request gets a
  fast `503` JSON with `Retry-After` instead of waiting in the listen backlog with no answer until
  a download ends (gunicorn is given more connections than this, see gunicorn_conf.py, so it still
  accepts the connection to say so). `/health-check` is not exempt: a full worker is not ready for
  more traffic, and saying so lets a load balancer route around it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from flask import json
from werkzeug.middleware.proxy_fix import ProxyFix

from . import logs
from .config import Config
from .errors import ServiceUnavailable

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

RETRY_AFTER = 10  # seconds; long enough for a short request to end, short for a human waiting


def wrap(app: WSGIApplication, config: Config) -> WSGIApplication:
    """`app` inside the request limit, the request log and (when configured) the proxy fix."""
    wrapped: WSGIApplication = RequestLimit(app, config.worker_connections)
    wrapped = logs.RequestLog(wrapped)  # sees the limit's 503s and the real end of every body
    if config.trusted_proxy_hops:
        wrapped = ProxyFix(wrapped, x_for=config.trusted_proxy_hops, x_proto=0, x_host=0, x_port=0, x_prefix=0)
    return wrapped


class RequestLimit:
    """WSGI middleware: at most `limit` requests in flight in this process; the rest get 503 at once.

    A request is in flight from the call until the server closes its body (for a download, when
    its last byte is sent or the client goes away).
    """

    def __init__(self, app: WSGIApplication, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0
        self._lock = threading.Lock()  # a greenlet-aware lock under gevent's monkey-patching

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        with self._lock:
            admitted = self.in_flight < self.limit
            if admitted:
                self.in_flight += 1
        if not admitted:
            return self._refuse(start_response)
        try:
            body = self.app(environ, start_response)
        except BaseException:
            self._release()
            raise
        return _ClosingBody(body, self._release)

    def _release(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _refuse(self, start_response: StartResponse) -> list[bytes]:
        error = ServiceUnavailable(
            f"this worker is serving its limit of {self.limit} requests (WORKER_CONNECTIONS); try again shortly",
            retry_after=RETRY_AFTER,
        )
        payload = json.dumps(error.to_dict()).encode()
        start_response("503 SERVICE UNAVAILABLE", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
            *error.headers().items(),
        ])
        return [payload]


class _ClosingBody:
    """The response iterable; calls `done` once when the server closes it (PEP 3333 always does)."""

    def __init__(self, body: Iterable[bytes], done: Callable[[], None]) -> None:
        self.body = body
        self.done: Callable[[], None] | None = done

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close: Any = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            done, self.done = self.done, None
            if done is not None:
                done()
