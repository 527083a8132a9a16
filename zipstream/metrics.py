"""Prometheus metrics (`GET /metrics`): downloads, bytes, upstream requests, pre-flight and TTFB.

Under gunicorn every worker is its own process, so with `PROMETHEUS_MULTIPROC_DIR` set the
values live in files of that directory and `/metrics` adds up every worker's (gunicorn_conf.py
sets it up and marks dead workers). Without it (tests, a single process) the default registry
is used.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

from flask import Blueprint, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client import generate_latest as _generate_latest

from .auth import bearer_matches
from .config import PROMETHEUS_MULTIPROC_DIR, get_config
from .errors import StreamAborted, Unauthorized

bp = Blueprint("metrics", __name__)
log = logging.getLogger("zipstream.download")

# Seconds: pre-flight stats whole bundles (thousands of files), so the tail goes to minutes.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0)

DOWNLOADS_STARTED = Counter(
    "zipstream_downloads_started", "Zip downloads whose first byte was about to be sent", ["kind"])
DOWNLOADS_COMPLETED = Counter(
    "zipstream_downloads_completed", "Zip downloads sent to the end", ["kind"])
DOWNLOADS_ABORTED = Counter(
    "zipstream_downloads_aborted", "Zip downloads cut short", ["kind", "reason"])
BYTES_SENT = Counter("zipstream_bytes_sent", "Zip bytes handed to the server", ["kind"])
IN_FLIGHT = Gauge(
    "zipstream_downloads_in_flight", "Zip downloads being sent right now", multiprocess_mode="livesum")
UPSTREAM_REQUESTS = Counter(
    "zipstream_upstream_requests", "Requests to a filestore backend (stat or open)", ["backend", "operation"])
UPSTREAM_ERRORS = Counter(
    "zipstream_upstream_errors", "Failed requests to a filestore backend", ["backend", "operation", "code"])
UPSTREAM_BYTES_DISCARDED = Counter(
    "zipstream_upstream_bytes_discarded",
    "Upstream body bytes read only to be skipped (a server ignoring or failing ranged requests, "
    "or a 206 starting earlier than asked)", ["backend"])
PREFLIGHT_SECONDS = Histogram(
    "zipstream_preflight_seconds", "Time to stat every file of a bundle and lay out its zip",
    buckets=_LATENCY_BUCKETS)
TTFB_SECONDS = Histogram(
    "zipstream_time_to_first_byte_seconds", "From the request's arrival to the zip's first byte",
    buckets=_LATENCY_BUCKETS)


def backend_label(scheme: str) -> str:
    """The FS_INTERFACES name of the backend serving a scheme (http and https are both 'https')."""
    scheme = scheme.lower()
    return "https" if scheme in ("http", "https") else scheme or "none"


def track_download(
    chunks: Iterator[bytes], kind: str, started: float, request_id: str | None,
) -> Iterator[bytes]:
    """Count a download's bytes and outcome; log one line when it completes or is cut short.

    `started` is the request's arrival (time.monotonic()). The outcome is known only when the
    server exhausts or closes the body, which is when this generator finishes.
    """
    DOWNLOADS_STARTED.labels(kind).inc()
    IN_FLIGHT.inc()
    sent = 0
    outcome, reason = "aborted", "client_disconnected"
    bytes_sent = BYTES_SENT.labels(kind)  # resolved once: the loop below runs for every chunk
    try:
        for chunk in chunks:
            if sent == 0:
                TTFB_SECONDS.observe(time.monotonic() - started)
            sent += len(chunk)
            bytes_sent.inc(len(chunk))
            yield chunk
        outcome, reason = "completed", ""
    except StreamAborted as error:
        reason = f"upstream: {error}"
        raise
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"
        raise
    finally:
        IN_FLIGHT.dec()
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        if outcome == "completed":
            DOWNLOADS_COMPLETED.labels(kind).inc()
        else:
            DOWNLOADS_ABORTED.labels(kind, "client" if reason == "client_disconnected" else "upstream").inc()
        level = logging.INFO if outcome == "completed" else logging.WARNING
        log.log(level, "download %s", outcome, extra={
            "event": "download", "outcome": outcome, "kind": kind, "bytes": sent,
            "reason": reason or None, "request_id": request_id,
        })


def generate_latest() -> bytes:
    """The exposition text: every worker's values in multiprocess mode, this process's otherwise."""
    # prometheus-client's own setting (it reads it at import); gunicorn_conf.py sets it up for the workers.
    if PROMETHEUS_MULTIPROC_DIR.read(os.environ):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return _generate_latest(registry)
    return _generate_latest(REGISTRY)


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition format (behind a bearer token when METRICS_TOKEN is set)."""
    token = get_config().metrics_token
    if token and not bearer_matches(token):
        raise Unauthorized("/metrics needs 'Authorization: Bearer <METRICS_TOKEN>'")
    response = Response(generate_latest(), headers={"Cache-Control": "no-store"})
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
