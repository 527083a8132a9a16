"""zipstream.numbers: ASCII digits only, any input either a value or the documented error."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from zipstream.numbers import MAX_BYTES, NotANumber, NumberTooLarge, http_date, is_digits, parse_decimal, parse_digits


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("7", 7), ("0012", 12), ("9223372036854775807", MAX_BYTES), ("0" * 5000 + "1", 1),
])
def test_digits_are_read(text: str, value: int) -> None:
    assert parse_digits(text) == value


@pytest.mark.parametrize("text", [
    # What isdigit() or int() take for digits: superscripts, Arabic-Indic, fullwidth, NKo, mathematical.
    "", " ", "²", "1²", "¹", "¼", "\u0661\u0662", "\uff11\uff12", "\u0663", "\u07c1", "\U0001d7d9",
    "+1", "-1", "1_0", " 1", "1 ", "\t1", "1\n", "\xa01", "1.0", "1e3", "0x10", "inf", "nan", "1,2",
])
def test_anything_but_ascii_digits_is_not_a_number(text: str) -> None:
    with pytest.raises(NotANumber):
        parse_digits(text)
    assert not is_digits(text)


@pytest.mark.parametrize("text", ["9223372036854775808", "9" * 20, "9" * 5000, "1" + "0" * 4400])
def test_past_the_maximum_is_too_large_without_converting(text: str) -> None:
    with pytest.raises(NumberTooLarge):
        parse_digits(text)
    with pytest.raises(NumberTooLarge):
        parse_digits("11", maximum=10)
    assert parse_digits("10", maximum=10) == 10


@pytest.mark.parametrize(("text", "value"), [("30", 30.0), ("0.5", 0.5), ("007.250", 7.25), (".5", 0.5), ("5.", 5.0)])
def test_decimals_are_read(text: str, value: float) -> None:
    assert parse_decimal(text) == value


@pytest.mark.parametrize("text", [
    "", ".", "..", "-1", "+1", "1e3", "inf", "nan", "Infinity", "\u0661.\u0665", "1_0", " 1", "1..2",
    "1.2.3", "²", "9" * 19,
])
def test_anything_else_is_not_a_decimal(text: str) -> None:
    with pytest.raises(NotANumber):
        parse_decimal(text)


@pytest.mark.parametrize(("text", "moment"), [
    ("Sun, 06 Nov 1994 08:49:37 GMT", datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)),  # IMF-fixdate
    ("Sunday, 06-Nov-94 08:49:37 GMT", datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)),  # rfc850-date
    ("Sun Nov  6 08:49:37 1994", datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)),  # asctime-date
    ("Sun, 06 Nov 1994 09:49:37 +0100", datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)),  # IMF zone
    ("Sun, 06 Nov 1994 08:49:37 -0000", datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)),  # no zone: UTC
])
def test_http_dates_are_read_as_utc(text: str, moment: datetime) -> None:
    parsed = http_date(text)
    assert parsed == moment
    assert parsed is not None and parsed.tzinfo is UTC  # format_datetime(usegmt=True) needs exactly UTC


@pytest.mark.parametrize("text", [
    None, "", "yesterday", "Sat, 01 Jan 2000 00:00:00 +9999999999999",  # OverflowError in email.utils
    "Sat, 01 Jan 2000 00:00:00 +99999", "Sat, 01 Jan 99999999 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 -2359",
    "Sat, 01 Jan \u0661\u0669\u0669\u0669 00:00:00 GMT", "Sat, 01 Jan 2000 ²:00:00 GMT",
    "Sat, 01 Jan 2000 00:00:00 GMT" + " " * 60,
])
def test_what_is_not_a_date_counts_as_absent(text: str | None) -> None:
    assert http_date(text) is None


@given(st.text())
@example("²")
@example("\u0661\u0662")
@example(" 1_0 ")
def test_parse_digits_returns_a_value_or_not_a_number(text: str) -> None:
    try:
        value = parse_digits(text)
    except NotANumber:
        assert not is_digits(text) or len(text.lstrip("0")) >= len(str(MAX_BYTES))
        return
    assert is_digits(text) and 0 <= value <= MAX_BYTES and value == int(text)


@given(st.text())
def test_parse_decimal_returns_a_value_or_not_a_number(text: str) -> None:
    try:
        value = parse_decimal(text)
    except NotANumber:
        return
    assert text.isascii() and value >= 0 and value == float(text)


@given(st.text(max_size=80))
@example("Sat, 01 Jan 2000 00:00:00 +9999999999999")
def test_http_date_returns_a_utc_date_or_none(text: str) -> None:
    moment = http_date(text)
    assert moment is None or moment.tzinfo is UTC
