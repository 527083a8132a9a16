"""Logging helpers: secrets never reach a log line."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote

from gunicorn.glogging import Logger

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

# A path (or a request line's target, absolute-form included; or one in a query) whose first segment is anything but a
# route with public sub-paths: what follows that segment may be a secret, whatever the id's spelling
# (`uuid.UUID` reads many) and even when the id is mistyped, so all of it is masked.
_PUBLIC_PREFIXES = ("static", "docs")  # /static/<file>, /docs/static/<file>
_TARGET = re.compile(r"(?:^|(?<=[\s=?&]))((?:[A-Za-z][A-Za-z0-9+.-]*://[^/\s?#]*)?/+([^/\s?#]+))(/[^\s?#]*)")


def _mask_after_first_segment(match: re.Match[str]) -> str:
    first, rest = match.group(1), match.group(3)
    if match.group(2) in _PUBLIC_PREFIXES or not rest.strip("/"):
        return match.group(0)
    return f"{first}/***"


def mask_path(path: str) -> str:
    """`/<id>/<secret>` as `/<id>/***`: everything after a path's first segment is masked, however the
    path was percent-encoded and whatever the first segment is (an id in any spelling, or mistyped).

    The path is decoded first (repeatedly: `%252F` is a `%2F` the router would decode too), so
    `/<id>%2F<secret>` or `/%34...` cannot slip a secret past the rule. Works on a bare path and on
    a request line (`GET /<id>/<secret> HTTP/1.1`, `GET http://host/<id>/<secret> HTTP/1.1`).
    Only the sub-paths of `/static` and `/docs` (public files) are kept.
    """
    for _ in range(3):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    return _TARGET.sub(_mask_after_first_segment, path)


class MaskingGunicornLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger with `/:id/:secret` masked in the request line, path, query and Referer atoms."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "q", "f"):  # request line, path, query, Referer
            if isinstance(atoms.get(key), str):
                atoms[key] = mask_path(atoms[key])
        return atoms


# -- the service's own log lines: one JSON object per line, or readable text on a terminal --------

# Attributes every LogRecord has; anything else on a record came in through `extra=` and is logged.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD and value is not None}


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", ...extras}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # which gunicorn worker
        }
        line.update(_extras(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`12:00:00 INFO  zipstream.request GET /x 200 key=value` for a human at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extras = " ".join(f"{key}={value}" for key, value in _extras(record).items())
        text = f"{stamp} {record.levelname:<7} {record.name} {record.getMessage()}"
        text = f"{text}  {extras}" if extras else text
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(level: str, stream: IO[str] | None = None) -> None:
    """Send the `zipstream` loggers to stderr: JSON lines, or text when stderr is a terminal."""
    stream = stream if stream is not None else sys.stderr
    logger = logging.getLogger("zipstream")
    logger.setLevel(level.upper())
    for handler in list(logger.handlers):
        if getattr(handler, "_zipstream", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter() if stream.isatty() else JsonFormatter())
    handler._zipstream = True  # type: ignore[attr-defined]
    logger.addHandler(handler)


def request_id(environ: Mapping[str, Any]) -> str:
    """The caller's X-Request-ID when it is sane (short, no spaces or control characters), else a new one."""
    given = str(environ.get("HTTP_X_REQUEST_ID", "")).strip()
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


class RequestLog:
    """WSGI middleware: a request id for every request, and one log line when its body really ends.

    For a streamed zip the end comes hours after the view returned, when the server exhausts or
    closes the body; this wrapper is what sees that moment, so bytes and duration are the real ones.
    """

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.monotonic()
        rid = request_id(environ)
        environ["zipstream.request_id"] = rid
        environ["zipstream.started"] = started
        seen: dict[str, Any] = {}

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen["status"] = int(status.split(" ", 1)[0])
            headers = [(name, value) for name, value in headers if name.lower() != "x-request-id"]
            headers.append(("X-Request-ID", rid))
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, start)
        except BaseException:
            seen.setdefault("status", 500)
            self._log(environ, seen, 0, started, rid, error=True)
            raise
        return _LoggedBody(body, lambda sent, error: self._log(environ, seen, sent, started, rid, error))

    @staticmethod
    def _log(environ: WSGIEnvironment, seen: dict[str, Any], sent: int, started: float, rid: str,
             error: bool) -> None:
        status = seen.get("status", 0)
        method = environ.get("REQUEST_METHOD", "")
        path = mask_path(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
        level = logging.ERROR if error or status >= 500 else logging.INFO
        _request_log.log(level, "%s %s %s", method, path, status, extra={
            "event": "request", "method": method, "path": path, "status": status, "bytes": sent,
            "duration_ms": round((time.monotonic() - started) * 1000, 1), "request_id": rid,
            "remote_addr": environ.get("REMOTE_ADDR"), "body_error": True if error else None,
        })


_request_log = logging.getLogger("zipstream.request")


class _LoggedBody:
    """The response iterable, counting bytes; reports once, on close (PEP 3333 always calls it)."""

    def __init__(self, body: Iterable[bytes], done: Callable[[int, bool], None]) -> None:
        self.body = body
        self.done = done
        self.sent = 0
        self.error = False
        self.reported = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self.body:
                self.sent += len(chunk)
                yield chunk
                del chunk  # not kept while the next is read (memory.py: a grant covers one chunk)
        except BaseException as error:
            self.error = not isinstance(error, GeneratorExit)
            raise

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            if not self.reported:
                self.reported = True
                self.done(self.sent, self.error)
