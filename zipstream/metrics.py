"""`GET /metrics`: the Prometheus text exposition of the counters in `counters.py`.

Under gunicorn every worker is its own process, so with `PROMETHEUS_MULTIPROC_DIR` set the
values live in files of that directory and `/metrics` adds up every worker's (gunicorn_conf.py
sets it up and marks dead workers). Without it (tests, a single process) the default registry
is used.
"""

from __future__ import annotations

import os

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, multiprocess
from prometheus_client import generate_latest as _generate_latest

from . import counters  # noqa: F401 - registers the metrics served here, whoever imported them first
from .auth import bearer_matches
from .config import PROMETHEUS_MULTIPROC_DIR, get_config
from .errors import Unauthorized

bp = Blueprint("metrics", __name__)


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
