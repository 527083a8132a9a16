"""The one exception tree: every error knows its HTTP status and renders as one JSON shape.

`{"error": {"code": ..., "message": ..., "fields"?: {...}, "sources"?: [...]}}`
"""

from __future__ import annotations

from datetime import datetime
from typing import Any


class ZipStreamError(Exception):
    """Root of every error the service reports to a client."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update({key: value for key, value in self.details.items() if value is not None})
        return {"error": body}

    def headers(self) -> dict[str, str]:
        """Extra response headers (Retry-After, Content-Range, ...)."""
        return {}


class BadRequest(ZipStreamError):
    status = 400
    code = "bad_request"


class Unauthorized(ZipStreamError):
    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="zipstream"'}


class Forbidden(ZipStreamError):
    status = 403
    code = "forbidden"


class NotFound(ZipStreamError):
    status = 404
    code = "not_found"


class Gone(ZipStreamError):
    status = 410
    code = "expired"


class UnsupportedMediaType(ZipStreamError):
    status = 415
    code = "unsupported_media_type"


class RangeNotSatisfiable(ZipStreamError):
    status = 416
    code = "range_not_satisfiable"

    def __init__(self, message: str, *, length: int) -> None:
        super().__init__(message)
        self.length = length

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.length}"}


class PreconditionFailed(ZipStreamError):
    """If-Match names another version of the zip than the one the bundle now makes."""

    status = 412
    code = "precondition_failed"


class ResumeRefused(ZipStreamError):
    """A resume (Range from byte N, no If-Range) of a zip version whose first N bytes never went out.

    The client's bytes are then of another version: a 206 would splice two, and a 200 too (wget -c
    skips the first N bytes of a 200 and appends the rest). 428: "make the request conditional".
    """

    status = 428
    code = "resume_refused"


class InvalidInput(ZipStreamError):
    """A well-formed body whose fields are wrong; `fields` maps each field to its messages."""

    status = 422
    code = "invalid"


class RequestTimeout(ZipStreamError):
    """The request's body did not arrive within BODY_TIMEOUT (RFC 9110 §15.5.9); the connection is closed."""

    status = 408
    code = "request_timeout"


class LimitExceeded(ZipStreamError):
    """A configured limit (files, bytes, name length) was passed; the message names it."""

    status = 413
    code = "limit_exceeded"


class SourceError(ZipStreamError):
    """A file a bundle refers to cannot be read; raised by sources, never carrying library errors."""

    status = 502
    code = "upstream_error"

    def __init__(self, src: str, reason: str) -> None:
        super().__init__(f"{src}: {reason}", sources=[{"src": src, "reason": reason}])
        self.src = src
        self.reason = reason


class SourceTimeout(SourceError):
    """The source did not answer in time (HTTP_TIMEOUT per attempt, PREFLIGHT_TIMEOUT overall).

    504, not 502 (RFC 9110 §15.6.5): we got no timely answer, rather than a wrong one; trying
    again later may work.
    """

    status = 504
    code = "upstream_timeout"


class SourceInterrupted(SourceError):
    """The body was cut or stalled part-way; the read may be resumed from where it stopped."""


class SourceNotFound(SourceError):
    """The source says the file does not exist (or we may not read it)."""

    status = 422
    code = "source_unavailable"


class SourceRefused(SourceError):
    """The src is not allowed here (private address, bucket not in S3_BUCKETS, outside FILE_ROOT)."""

    status = 403
    code = "source_refused"


class SourceChanged(SourceError):
    """The file changed between pre-flight and reading it (ETag, size or Last-Modified differ).

    `seen`: when it was the validators that differed, the (ETag, Last-Modified) the source answered
    with this time, as SourceInfo holds them; None otherwise (a length that differs, a 412).
    """

    code = "source_changed"

    def __init__(self, src: str, reason: str, seen: tuple[str | None, datetime | None] | None = None) -> None:
        super().__init__(src, reason)
        self.seen = seen


class SourcesFailed(ZipStreamError):
    """Pre-flight found one or more unreadable sources; lists every one of them."""

    code = "source_unavailable"

    def __init__(self, failures: list[SourceError]) -> None:
        statuses = {failure.status for failure in failures}
        # 4xx when the caller can fix every failure (missing or refused files); 502 if upstream broke
        # (answered wrongly, refused the connection); else 504 if some source did not answer in time.
        if 502 in statuses:
            self.status, self.code = 502, next(failure.code for failure in failures if failure.status == 502)
        else:
            worst = max(failures, key=lambda failure: failure.status)
            self.status, self.code = worst.status, worst.code
        names = ", ".join(failure.src for failure in failures[:5])
        more = f" and {len(failures) - 5} more" if len(failures) > 5 else ""
        super().__init__(
            f"{len(failures)} source(s) cannot be read: {names}{more}",
            sources=[{"src": failure.src, "reason": failure.reason} for failure in failures],
        )


class ServiceUnavailable(ZipStreamError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class SchemaNotReady(ServiceUnavailable):
    """The database answers but its schema is missing or older than the code: `zipstream migrate` fixes it."""

    code = "not_migrated"
    reason = ""  # the database's own words (e.g. "no such table: bundles"), for logs and SchemaConflict


class ClientGone(ZipStreamError):
    """The client hung up before the answer was ready; nobody reads this (499, nginx's convention, for logs)."""

    status = 499
    code = "client_closed_request"


class StreamAborted(Exception):
    """Raised inside a download once bytes are on the wire: the connection must be cut, not answered."""


class ClientStalled(StreamAborted, TimeoutError):
    """The client took no bytes for SEND_TIMEOUT seconds: its download is cut and gives its memory back.

    A TimeoutError too, as a write that timed out is: gunicorn passes socket errors on without logging a
    traceback, and the worker ends the connection in one line (gunicorn_worker.py)."""
