"""Client connections the app wants closed once its response is sent.

The app decides it (a request body that stopped arriving, api.py); the gunicorn worker does it
(gunicorn_worker.py), since a WSGI app can't: gunicorn drops a `Connection: close` response header and
would otherwise keep the connection for its next request, reading the rest of the stalled body first.
No Flask, no gunicorn: both sides import this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The sockets (gunicorn's `environ["gunicorn.socket"]`) of responses in flight that must be the last on
# their connection. The worker takes its socket out after each response, so nothing stays here.
_closing: set[int] = set()


def close_after_response(environ: Mapping[str, Any]) -> None:
    """Ask the server to close this request's connection after the response (no-op outside gunicorn)."""
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        _closing.add(id(sock))


def take(sock: object) -> bool:
    """Whether the app asked to close `sock`'s connection after this response (asked once: forgotten now)."""
    try:
        _closing.remove(id(sock))
    except KeyError:
        return False
    return True
