"""The service's Prometheus metrics: downloads, bytes, upstream requests, pre-flight and TTFB.

No Flask here (the sources and the download path count into these from below the web layer);
`metrics.py` serves them at `GET /metrics`. Under gunicorn every worker is its own process, so with
`PROMETHEUS_MULTIPROC_DIR` set the values live in files of that directory (gunicorn_conf.py sets it
up and marks dead workers). Without it (tests, a single process) the default registry is used.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram

from .chunks import close_iterator
from .errors import ClientStalled, StreamAborted

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
# One worker's MemoryBudget (memory.py): a series per worker (pid) in multiprocess mode.
MEMORY_BUDGET = Gauge(
    "zipstream_memory_budget_bytes", "Bytes a worker may hold for downloads (MEMORY_BUDGET)",
    multiprocess_mode="liveall")
MEMORY_GRANTED = Gauge(
    "zipstream_memory_granted_bytes", "Bytes a worker holds for downloads now (chunks going out, read-ahead, "
    "pre-flight holds)", multiprocess_mode="liveall")
MEMORY_PEAK = Gauge(
    "zipstream_memory_granted_peak_bytes", "Most bytes a worker held for downloads at once since it started",
    multiprocess_mode="liveall")
MEMORY_WAITING = Gauge(
    "zipstream_memory_waiting", "Downloads waiting for memory now (back-pressure)", multiprocess_mode="livesum")
MEMORY_WAITS = Counter(
    "zipstream_memory_waits", "Times a download had to wait for memory before reading its next chunk")
PARKS = Counter(
    "zipstream_parks", "Times a download whose client stopped reading gave back everything but its connection "
    "(it goes on from where it was once the client reads again)")
PARKED = Gauge(
    "zipstream_downloads_parked", "Downloads parked now: their clients read nothing, they hold nothing but the "
    "connection", multiprocess_mode="livesum")
PREFLIGHT_SECONDS = Histogram(
    "zipstream_preflight_seconds", "Time to stat every file of a bundle and lay out its zip",
    buckets=_LATENCY_BUCKETS)
TTFB_SECONDS = Histogram(
    "zipstream_time_to_first_byte_seconds", "From the request's arrival to the zip's first byte",
    buckets=_LATENCY_BUCKETS)


@functools.cache
def upstream_requests(backend: str, operation: str) -> Counter:
    """UPSTREAM_REQUESTS' child for these labels, looked up once per process: counted for every
    upstream request, where `labels()` (a lock and a dict lookup) was ~2 us of each."""
    child: Counter = UPSTREAM_REQUESTS.labels(backend, operation)
    return child


def backend_label(scheme: str) -> str:
    """The FS_INTERFACES name of the backend serving a scheme (http and https are both 'https')."""
    scheme = scheme.lower()
    return "https" if scheme in ("http", "https") else scheme or "none"


# zipstream_bytes_sent is raised in steps of this many bytes (and by the rest at the end): in multiprocess
# mode each increment takes a lock and writes a file-backed map, ~2 us, and a zip of small members sends
# a few chunks per member.
BYTES_SENT_STEP = 1 << 20


def track_download(
    chunks: Iterator[bytes], kind: str, started: float, request_id: str | None,
) -> Iterator[bytes]:
    """Count a download's bytes and outcome; log one line when it completes or is cut short.

    `started` is the request's arrival (time.monotonic()). The outcome is known only when the
    server exhausts or closes the body, which is when this generator finishes.
    """
    DOWNLOADS_STARTED.labels(kind).inc()
    IN_FLIGHT.inc()
    sent = counted = 0
    outcome, reason = "aborted", "client_disconnected"
    bytes_sent = BYTES_SENT.labels(kind)  # resolved once: the loop below runs for every chunk
    try:
        for chunk in chunks:
            if sent == 0:
                TTFB_SECONDS.observe(time.monotonic() - started)
            sent += len(chunk)
            if sent - counted >= BYTES_SENT_STEP:
                bytes_sent.inc(sent - counted)
                counted = sent
            yield chunk
            del chunk  # not kept while the next is read (memory.py: a grant covers one chunk)
        outcome, reason = "completed", ""
    except ClientStalled:
        reason = "client_stalled"  # SEND_TIMEOUT: the client's doing, counted with the client's
        raise
    except StreamAborted as error:
        reason = f"upstream: {error}"
        raise
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"
        raise
    finally:
        bytes_sent.inc(sent - counted)
        IN_FLIGHT.dec()
        close_iterator(chunks)
        if outcome == "completed":
            DOWNLOADS_COMPLETED.labels(kind).inc()
        else:
            DOWNLOADS_ABORTED.labels(kind, "client" if reason in ("client_disconnected", "client_stalled")
                                     else "upstream").inc()
        level = logging.INFO if outcome == "completed" else logging.WARNING
        log.log(level, "download %s", outcome, extra={
            "event": "download", "outcome": outcome, "kind": kind, "bytes": sent,
            "reason": reason or None, "request_id": request_id,
        })
