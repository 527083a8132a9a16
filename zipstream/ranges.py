"""HTTP Range and conditional-request rules for a download of known length (RFC 9110 §13-14)."""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime

from .errors import RangeNotSatisfiable


def parse_range(header: str | None, length: int) -> tuple[int, int] | None:
    """The single byte range [start, stop) a Range header asks for, or None for the whole file.

    Several ranges answer with the whole file (allowed by RFC 9110 and simpler for clients than
    multipart/byteranges); a malformed header is ignored, as the RFC requires.
    Raises RangeNotSatisfiable when the range lies outside the file.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    if (first and not first.isdigit()) or (last and not last.isdigit()) or not (first or last):
        return None
    if not first:  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or length == 0:
            raise RangeNotSatisfiable("empty suffix range", length=length)
        return max(0, length - suffix), length
    start = int(first)
    stop = min(int(last) + 1, length) if last else length
    if last and int(last) < start:
        return None
    if start >= length:
        raise RangeNotSatisfiable(f"range starts at {start}, the file has {length} bytes", length=length)
    return start, stop


def http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


def if_range_matches(header: str | None, etag: str | None) -> bool:
    """Whether a Range may be honoured given If-Range: absent, or the current strong ETag.

    A date never matches: Last-Modified is the newest source's time, which does not move when a
    file is appended or an older one changes, so a date could splice two versions of the zip.
    (RFC 9110 lets a server answer 200 whenever it cannot be sure.)
    """
    if not header:
        return True
    header = header.strip()
    return etag is not None and not header.startswith("W/") and header == etag


def none_match(header: str | None, etag: str | None) -> bool:
    """Whether If-None-Match matches the current ETag (weak comparison, as for GET/HEAD)."""
    if not header or etag is None:
        return False
    if header.strip() == "*":
        return True
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return etag.removeprefix("W/") in tags


def if_match(header: str | None, etag: str | None) -> bool:
    """Whether If-Match allows the request (RFC 9110 §13.1.1): absent, `*`, or listing the current
    ETag by strong comparison. A zip without an ETag matches only `*`."""
    if header is None:
        return True
    if header.strip() == "*":
        return True
    if etag is None:
        return False
    return any(tag.strip() == etag for tag in header.split(",") if not tag.strip().startswith("W/"))
