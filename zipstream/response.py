"""A zip download's response, like starlette's FileResponse: its headers, conditional requests, byte
ranges and resume rule, and the record of the bytes that went out.

The rules are RFC 9110's (§13 conditional requests, §14 ranges; ranges.py reads the fields), plus
one of our own for clients that resume without a validator (curl -C -, wget -c, aria2c -c): such a
resume is honoured only inside the bytes of this zip version known to have gone out before
(`CrcCache.mark_served`, recorded as they are sent); otherwise 428 (ResumeRefused).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from urllib.parse import quote

from flask import Request, Response, jsonify

from . import counters, ranges
from .chunks import close_iterator
from .config import get_config
from .download import PreparedZip
from .errors import PreconditionFailed, ResumeRefused, SourceError, StreamAborted, ZipStreamError
from .memory import ClientWindow
from .names import download_filename

log = logging.getLogger(__name__)

DEFAULT_FILENAME = "bundle.zip"

# The bytes known to have gone out are recorded in steps of at least this many (_record_delivery).
DELIVERY_STEP = 256 * 1024
# Every zip written here starts with "PK" (a local header, or the end record of an empty zip).
SAME_IN_EVERY_ZIP = 2


def content_disposition(filename: str) -> str:
    """RFC 6266: the stored `filename` made safe (names.download_filename; DEFAULT_FILENAME if nothing
    is left), as an ASCII fallback `filename` plus, when that differs, the exact name in RFC 8187 `filename*`."""
    filename = download_filename(filename) or DEFAULT_FILENAME
    fallback = "".join(char if 32 <= ord(char) < 127 and char not in '"\\%' else "_" for char in filename)
    if fallback == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def vouches(delivered: int, start: int) -> bool:
    """Whether a client claiming the first `start` bytes of a zip version (Range without If-Range)
    may resume it, `delivered` bytes of that version being known to have gone out: only bytes that
    some response of this very version delivered can be in its file.

    The first two bytes ("PK") are the same in every zip we write, so a resume from byte 1 or 2
    (axel probes with `bytes=1-`) never splices.
    """
    return start <= max(SAME_IN_EVERY_ZIP, delivered)


class ZipResponse(Response):
    """The download of a prepared zip, honouring HEAD, Range, If-Range, If-Match and If-None-Match.

    200 (the whole zip), 206 (one range), 304 (If-None-Match), or 428 JSON (ResumeRefused) for a
    resume this zip version cannot vouch for. Raises (as JSON errors) everything that goes wrong
    before the first byte: PreconditionFailed (412), RangeNotSatisfiable (416), and a source that
    fails on the first fetch of a resume (SourceError, 502 naming the src). After the first byte an
    error cuts the connection. `kind` labels the download's metrics ("bundle", "one_off").
    """

    def __init__(self, prepared: PreparedZip, request: Request, kind: str = "bundle") -> None:
        plan = prepared.plan
        self._prepared = prepared
        self._delivered = prepared.delivered
        headers = {
            "Content-Type": "application/zip",
            "Content-Disposition": content_disposition(plan.filename),
            # no-transform: a proxy that compresses would break Content-Length and byte ranges.
            "Cache-Control": "private, no-transform",
            "X-Accel-Buffering": "no",
            "Last-Modified": ranges.http_date(plan.last_modified),
        }
        etag, length = plan.etag, plan.length
        start, stop, status = 0, length, 200
        if_match = request.headers.get("If-Match")
        if not ranges.if_match(if_match, etag):
            raise PreconditionFailed(
                f"If-Match names another version of this zip; it is now {etag or 'a zip without an ETag'}",
                etag=etag,
            )
        if plan.rangeable and length is not None:
            headers["Accept-Ranges"] = "bytes"
            headers["ETag"] = etag or ""
            if ranges.none_match(request.headers.get("If-None-Match"), etag):
                kept = ("ETag", "Cache-Control", "Last-Modified")
                super().__init__(status=304, headers={name: headers[name] for name in kept})
                return
            if ranges.if_range_matches(request.headers.get("If-Range"), etag):
                wanted = ranges.parse_range(request.headers.get("Range"), length)
                # curl -C -, wget -c, aria2c -c resume without If-Range: unless this version's first
                # bytes up to the resume point went out before, the bytes they hold are of another
                # version. A 206 would splice the two, and so would a 200 (wget -c skips the first N
                # bytes of a 200 and appends the rest): refuse, with nothing to append.
                proven = bool(request.headers.get("If-Range")) or (if_match is not None and if_match.strip() != "*")
                if (wanted is not None and not proven and request.method != "HEAD"
                        and not vouches(self._delivered, wanted[0])):
                    self._refuse_resume(wanted[0], etag or "")
                    return
                if wanted is not None:
                    start, stop = wanted
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{stop - 1}/{length}"
        else:
            headers["Accept-Ranges"] = "none"
        if stop is not None:
            headers["Content-Length"] = str(stop - start)
        if request.method == "HEAD":
            super().__init__(status=status, headers=headers)
            if stop is None:  # unknown length: say nothing rather than Werkzeug's "0" for the empty body
                self.automatically_set_content_length = False
                self.headers.pop("Content-Length", None)
            return
        # The stream paces itself on the client's socket (memory.py): a client that stops reading
        # holds no more than its last chunk.
        prepared.body.client = ClientWindow.of(request.environ, get_config().send_timeout)
        chunks = prepared.stream(start, stop)
        first = self._first_chunk(chunks)
        body = counters.track_download(
            self._sent(first, chunks, start, stop),
            kind=kind,
            started=request.environ.get("zipstream.started") or time.monotonic(),
            request_id=request.environ.get("zipstream.request_id"),
        )
        super().__init__(body, status=status, headers=headers, direct_passthrough=True)

    @staticmethod
    def sends_whole_zip(request: Request) -> bool:
        """Whether this request can only be answered with the whole zip, so pre-flight may keep small
        files' bytes for the stream: not a HEAD, a range, or a conditional request that may well end
        in 304."""
        return request.method != "HEAD" and not {"Range", "If-None-Match"} & set(request.headers.keys())

    def _refuse_resume(self, start: int, etag: str) -> None:
        """428 for a resume from byte `start` that this zip version cannot vouch for (ResumeRefused)."""
        error = ResumeRefused(
            f"the zip changed since your download began: its current version ({etag}) never sent its first "
            f"{start} bytes, so the file you are resuming holds another version. Download it again from the "
            f"start (delete the partial file); to resume safely, send the ETag your download began with as If-Match.",
            etag=etag, resume_from=start,
        )
        body = jsonify(error.to_dict()).get_data()
        # curl -C - takes a body exactly as long as the part it holds for "already complete" (exit 0).
        if len(body) == start:
            error.details["padding"] = "-"
            body = jsonify(error.to_dict()).get_data()
        super().__init__(body, status=error.status, mimetype="application/json",
                         headers={"ETag": etag, "Cache-Control": "private, no-store"})

    def _first_chunk(self, chunks: Iterator[bytes]) -> list[bytes]:
        """The stream's first chunk (none for an empty stream), read before the response starts.

        Until a byte is sent the client can still get a JSON error: a resume inside a member opens
        its source before producing anything, and a failure there would otherwise reach gunicorn,
        whose answer is an HTML 500 page. Raises the SourceError (502 naming the src).
        """
        try:
            return [next(chunks)]
        except StopIteration:
            return []
        except StreamAborted as error:
            cause = error.__cause__
            if isinstance(cause, ZipStreamError):
                raise cause from None
            raise SourceError(self._prepared.body.failed_src or "(unknown source)", str(cause or error)) from None

    def _sent(self, first: list[bytes], chunks: Iterator[bytes], start: int, end: int | None) -> Iterator[bytes]:
        """`first`, then the rest of `chunks`, recording each step of what goes out before it goes;
        closing this closes `chunks` (its finally gives back held bytes, stops read-ahead and stores
        learned CRC-32s), which itertools.chain would not."""
        position = start
        try:
            for chunk in first:
                position += len(chunk)
                self._record_delivery(position, end)
                yield chunk
                del chunk  # not kept while the next is read (memory.py: a grant covers one chunk)
            for chunk in chunks:
                position += len(chunk)
                self._record_delivery(position, end)
                yield chunk
                del chunk
        finally:
            close_iterator(chunks)

    def _record_delivery(self, end: int, response_end: int | None) -> None:
        """Record, before they are sent, that the zip's bytes [0, end) are going out.

        Only responses that are themselves vouched stream (a whole zip, a range from 0, or a resume
        the client proved with If-Range / If-Match or that lies inside what was delivered), so the
        prefix stays contiguous. One cache write per step (at least DELIVERY_STEP bytes, and 1/16 of
        what is recorded), so a multi-GiB download costs a few hundred writes; the record is at most
        one step ahead of the bytes really sent, and written before they go so that a client cut
        and resuming at once (or on another instance) finds it. Never past `response_end`, the end
        of this response: a `Range: bytes=0-0` probe of a new version vouched for its first 256 KiB,
        so an old partial file of that size could be resumed with the new version's bytes.
        """
        prepared = self._prepared
        etag = prepared.plan.etag
        if end <= self._delivered or etag is None or prepared.cache is None:
            return
        step = max(DELIVERY_STEP, self._delivered // 16)
        target = max(end, self._delivered + step)
        for limit in (prepared.plan.length, response_end):
            if limit is not None:
                target = min(target, limit)
        if target <= self._delivered:
            return
        self._delivered = target
        try:
            prepared.cache.mark_served(etag, target)
        except Exception as error:  # noqa: BLE001 - losing a cache write must never break a download
            log.warning("could not record the delivered part of the zip: %s", error)
