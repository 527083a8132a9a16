"""Strict readers of the numbers in HTTP fields and settings: byte counts, seconds, dates.

`int()` and `float()` accept far more than the grammars they were used for: other scripts' digits
(`int("١٢") == 12`), signs, `_` separators, surrounding Unicode whitespace, `nan` and `inf`;
`str.isdigit()` is true for superscripts that `int()` then refuses (`"²"`: a 500 where the header
should have been ignored); and `int()` refuses strings of more than 4,300 digits. Every number this
service reads from a request, an upstream answer or the environment goes through here instead.
No Flask, no network.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# The largest byte count (size, offset, length) taken from anyone: 2**63 - 1, the largest file size
# POSIX (off_t), S3 and DynamoDB can express. Bigger "sizes" are lies or mistakes, never files.
MAX_BYTES = 2**63 - 1
# Longer than any date format RFC 9110 §5.6.7 allows (29 characters); parsing is not even tried.
_MAX_DATE_LENGTH = 64


class NotANumber(ValueError):
    """Text that is not the number its grammar allows; the message quotes the start of it."""


class NumberTooLarge(NotANumber):
    """Digits only, but a value above the maximum the caller allows."""


def _quoted(text: str) -> str:
    return repr(text[:40] + ("…" if len(text) > 40 else ""))


def is_digits(text: str) -> bool:
    """Whether `text` is `1*DIGIT`: one or more ASCII digits 0-9 and nothing else (RFC 5234 B.1)."""
    return text.isascii() and text.isdigit()


def parse_digits(text: str, maximum: int = MAX_BYTES) -> int:
    """`text`, which must be `1*DIGIT` (ASCII 0-9 only, leading zeros allowed), as an int.

    The grammar of every number in HTTP fields (Content-Length, Range and Content-Range positions,
    Retry-After: RFC 9110 §8.6, §14.1, §14.4, §10.2.3) and of whole-number settings. No sign, space,
    `_` or other script's digit. Raises NotANumber otherwise, NumberTooLarge (a NotANumber) above
    `maximum` -- without converting a string of any length (RFC 9110 §14.1.1: anticipate large
    numerals, no conversion overflow).
    """
    if not is_digits(text):
        raise NotANumber(f"not a whole number (ASCII digits only): {_quoted(text)}")
    significant = text.lstrip("0")
    if len(significant) > len(str(maximum)):
        raise NumberTooLarge(f"larger than {maximum}: {_quoted(text)}")
    value = int(significant or "0")
    if value > maximum:
        raise NumberTooLarge(f"larger than {maximum}: {_quoted(text)}")
    return value


def parse_decimal(text: str, max_digits: int = 18) -> float:
    """`text`, ASCII digits with at most one `.` among them (`30`, `0.5`, `.5`, `5.`), as a float.

    For settings in seconds: no sign, exponent, `inf`, `nan`, space or other script's digit, at
    most `max_digits` digits in all. Raises NotANumber otherwise.
    """
    whole, _dot, fraction = text.partition(".")
    if not (whole or fraction) or any(part and not is_digits(part) for part in (whole, fraction)):
        raise NotANumber(f"not a decimal number such as 30 or 0.5: {_quoted(text)}")
    if len(whole) + len(fraction) > max_digits:
        raise NumberTooLarge(f"more than {max_digits} digits: {_quoted(text)}")
    return float(text)


def http_date(text: str | None) -> datetime | None:
    """An HTTP-date (RFC 9110 §5.6.7) as an aware UTC datetime, or None if `text` is absent or not one.

    As §5.6.7 asks, all three formats are read, and robustly (a numeric zone such as `+0000` is
    read too: Internet Message Format dates reach HTTP, which §5.6.7 says to expect). But only
    ASCII: another script's digits are no date. A date without a zone (`-0000`) is taken as UTC.
    Never raises: a header that is not a date counts as absent (`email.utils` raises OverflowError
    for a zone of `+9999999999999`, ValueError for a year past 9999, and more).
    """
    if not text or len(text) > _MAX_DATE_LENGTH or not text.isascii():
        return None
    try:
        moment = parsedate_to_datetime(text)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (TypeError, ValueError, OverflowError, IndexError):  # 31 Dec 9999 at -2359 overflows in UTC
        return None
