"""HTTP Range and conditional-request rules for a download of known length (RFC 9110 §13-14)."""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime

from .errors import RangeNotSatisfiable
from .numbers import MAX_BYTES, NotANumber, NumberTooLarge, parse_digits

# Optional whitespace in field values: space and horizontal tab only (RFC 9110 §5.6.3), not the
# other characters `str.strip()` removes (NBSP, U+0085...).
OWS = " \t"


def parse_range(header: str | None, length: int) -> tuple[int, int] | None:
    """The single byte range [start, stop) a Range header asks of `length` bytes, or None for all.

    The grammar is RFC 9110 §14.1-14.2: `bytes=first-last`, `bytes=first-` or `bytes=-suffix`, the
    unit case-insensitive, positions `1*DIGIT` in ASCII (numbers.parse_digits), optional whitespace
    only around the list's elements. Anything else is ignored, which answers 200 with the whole
    file (§14.2: a server MAY ignore a Range, and an invalid one may be ignored): other units,
    several ranges (simpler for clients than multipart/byteranges), signs, `_`, spaces inside a
    range, other scripts' digits (`٣`, `²`), last < first. Positions of any length are read
    (§14.1.1: no conversion overflow): past the end, a last position means the end.
    Raises RangeNotSatisfiable (416) when the range lies outside the file (§14.1.1, §15.5.17).
    """
    if not header:
        return None
    unit, equals, spec = header.strip(OWS).partition("=")
    if not equals or unit.lower() != "bytes":
        return None
    specs = [part.strip(OWS) for part in spec.split(",")]
    specs = [part for part in specs if part]  # §5.6.1.2: empty list elements are allowed, and ignored
    if len(specs) != 1:
        return None
    first, dash, last = specs[0].partition("-")
    if not dash or not (first or last):
        return None
    try:
        start = _position(first) if first else None
        end = _position(last) if last else None
    except NotANumber:
        return None
    if start is None:  # suffix: the last N bytes
        assert end is not None
        if end == 0 or length == 0:
            raise RangeNotSatisfiable("empty suffix range", length=length)
        return max(0, length - end), length
    if end is not None and end < start:
        return None
    if start >= length:
        raise RangeNotSatisfiable(f"range starts at {first[:40]}, the file has {length} bytes", length=length)
    return start, min(end + 1, length) if end is not None else length


def _position(text: str) -> int:
    """A Range position; one too large for any file counts as just past the largest (MAX_BYTES + 1)."""
    try:
        return parse_digits(text)
    except NumberTooLarge:
        return MAX_BYTES + 1


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
    header = header.strip(OWS)
    return etag is not None and not header.startswith("W/") and header == etag


def none_match(header: str | None, etag: str | None) -> bool:
    """Whether If-None-Match matches the current ETag (weak comparison, as for GET/HEAD)."""
    if not header or etag is None:
        return False
    if header.strip(OWS) == "*":
        return True
    tags = [tag.strip(OWS).removeprefix("W/") for tag in header.split(",")]
    return etag.removeprefix("W/") in tags


def if_match(header: str | None, etag: str | None) -> bool:
    """Whether If-Match allows the request (RFC 9110 §13.1.1): absent, `*`, or listing the current
    ETag by strong comparison. A zip without an ETag matches only `*`."""
    if header is None:
        return True
    if header.strip(OWS) == "*":
        return True
    if etag is None:
        return False
    return any(tag.strip(OWS) == etag for tag in header.split(",") if not tag.strip(OWS).startswith("W/"))
