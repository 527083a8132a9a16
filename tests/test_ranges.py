"""zipstream.ranges: Range and the conditional headers, by table, by property, and through the app."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import requests
from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from zipstream import create_app, ranges
from zipstream.config import Config
from zipstream.errors import RangeNotSatisfiable
from zipstream.ranges import if_match, if_range_matches, none_match, parse_range

from .support.live import LiveServer
from .support.upstream import UpstreamServer

LENGTH = 100
MAX_BYTES = 2**63 - 1  # zipstream.numbers.MAX_BYTES
HUGE = "9" * 5000  # int() refuses more than 4,300 digits
UNSATISFIABLE = "416"


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("", None),
    ("bytes=0-10", (0, 11)), ("bytes=5-", (5, LENGTH)), ("bytes=-3", (LENGTH - 3, LENGTH)),
    ("Bytes=0-0", (0, 1)), ("BYTES=99-", (99, LENGTH)),  # the unit is case-insensitive (RFC 9110 §14.1)
    ("bytes=0-1000", (0, LENGTH)), ("bytes=-1000", (0, LENGTH)),  # clipped to the file
    (f"bytes=0-{HUGE}", (0, LENGTH)), (f"bytes=-{HUGE}", (0, LENGTH)),  # any numeral length (§14.1.1)
    (f"bytes=0-{MAX_BYTES + 1}", (0, LENGTH)), ("bytes=007-0010", (7, 11)),
    # Whitespace (SP, HTAB) around the value and the list's elements; empty list elements (RFC 9110 §5.6.1.2).
    (" bytes=0-1\t", (0, 2)), ("bytes= 0-1 ", (0, 2)), ("bytes=0-1,", (0, 2)), ("bytes=, 0-1", (0, 2)),
    ("bytes=-0", UNSATISFIABLE), ("bytes=100-", UNSATISFIABLE), ("bytes=100-200", UNSATISFIABLE),
    (f"bytes={HUGE}-", UNSATISFIABLE), (f"bytes={HUGE}-{HUGE}", UNSATISFIABLE),
    # Ignored (the whole file): not the grammar, several ranges, other units, other digits.
    ("bytes=0-²", None), ("bytes=²-", None), ("bytes=-²", None), ("bytes=0-1²", None), ("bytes=¹-2", None),
    ("bytes=0-\u0661\u0662", None), ("bytes=\u0661-", None), ("bytes=\uff10-\uff11", None),
    ("bytes=0-\U0001d7d7", None),
    ("bytes=+1-2", None), ("bytes=1_0-", None), ("bytes=0 - 10", None), ("bytes=0-\xa010", None),
    ("bytes=0x1-2", None), ("bytes=1.0-2", None), ("bytes=-1-2", None), ("bytes=5-2", None),
    ("bytes=0-1,2-3", None), ("bytes=0-1, 0-1", None), ("items=0-1", None), ("bytes 0-1", None),
    ("bytes=", None), ("bytes=-", None), ("bytes=1", None), ("=0-1", None), ("bytes==0-1", None),
])
def test_parse_range(header: str | None, expected: tuple[int, int] | str | None) -> None:
    if expected == UNSATISFIABLE:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, LENGTH)
    else:
        assert parse_range(header, LENGTH) == expected


def test_an_empty_file_satisfies_no_range() -> None:
    for header in ("bytes=0-", "bytes=-1", "bytes=0-0"):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, 0)


ETAG = '"zs1-abc"'


@pytest.mark.parametrize(("header", "matches"), [
    (None, True), ("", True), (ETAG, True), (f" {ETAG}\t", True), (f"W/{ETAG}", False), ('"other"', False),
    ("Sun, 06 Nov 1994 08:49:37 GMT", False),  # a date never matches (see if_range_matches)
    (f"\xa0{ETAG}", False), (f"{ETAG}\x85", False),  # only SP and HTAB are whitespace (RFC 9110 §5.6.3)
])
def test_if_range(header: str | None, matches: bool) -> None:
    assert if_range_matches(header, ETAG) is matches


def test_if_range_rules() -> None:
    assert ranges.if_range_matches(None, '"a"')
    assert ranges.if_range_matches('"a"', '"a"')
    assert not ranges.if_range_matches('"b"', '"a"')
    assert not ranges.if_range_matches('W/"a"', '"a"')
    assert not ranges.if_range_matches("Tue, 14 Nov 2023 22:13:20 GMT", '"a"')


@pytest.mark.parametrize(("header", "etag", "allowed"), [
    (None, ETAG, True), ("*", ETAG, True), (" * ", None, True), (ETAG, ETAG, True), (f'"x", {ETAG}', ETAG, True),
    (f"W/{ETAG}", ETAG, False), ('"x"', ETAG, False), (ETAG, None, False), ("\xa0*", ETAG, False),
])
def test_if_match(header: str | None, etag: str | None, allowed: bool) -> None:
    assert if_match(header, etag) is allowed


@pytest.mark.parametrize(("header", "etag", "matched"), [
    (None, ETAG, False), ("*", ETAG, True), (ETAG, ETAG, True), (f"W/{ETAG}", ETAG, True),
    (f'"x" ,\t{ETAG}', ETAG, True), ('"x"', ETAG, False), (ETAG, None, False),
])
def test_if_none_match(header: str | None, etag: str | None, matched: bool) -> None:
    assert none_match(header, etag) is matched


# -- properties over any text --

# What a header value can hold (werkzeug refuses CR and LF; they end a header on the wire).
_HEADER_CHARS = st.characters(codec="utf-8", exclude_characters="\r\n\x00")
_HEADER_TEXT = st.text(alphabet=_HEADER_CHARS)


def _digits() -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789", min_size=1, max_size=25)


def _range_like() -> st.SearchStrategy[str]:
    """Mostly near-misses of the grammar: units, digits of every script, signs, spaces, commas."""
    near = "0123456789²¹\u0663\u0661\u0662\uff10\U0001d7d7+-_ ,\t.xe"
    piece = st.one_of(_digits(), st.text(alphabet=near, max_size=8), st.text(alphabet=_HEADER_CHARS, max_size=6))
    return st.builds(lambda unit, first, last, sep: f"{unit}={first}{sep}{last}",
                     st.sampled_from(["bytes", "Bytes", "items", " bytes", ""]), piece, piece,
                     st.sampled_from(["-", "- ", "", "--", "-\xa0"]))


@given(st.one_of(st.text(), _range_like()), st.integers(min_value=0, max_value=MAX_BYTES))
@example("bytes=0-²", 100)
@example(f"bytes=0-{HUGE}", 100)
def test_parse_range_gives_a_range_inside_the_file_none_or_416(header: str, length: int) -> None:
    try:
        got = parse_range(header, length)
    except RangeNotSatisfiable:
        return
    if got is not None:
        start, stop = got
        assert 0 <= start < stop <= length


@given(st.text(), st.one_of(st.none(), st.text(max_size=20)))
def test_conditionals_answer_a_bool_for_any_text(header: str, etag: str | None) -> None:
    assert isinstance(if_range_matches(header, etag), bool)
    assert isinstance(if_match(header, etag), bool)
    assert isinstance(none_match(header, etag), bool)


# -- through the app: no Range / If-Range value is ever a 5xx --

@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FlaskClient, str]]:
    with UpstreamServer() as upstream:
        upstream.add("/a.bin", b"a" * 1000)
        tmp = tmp_path_factory.mktemp("ranges")
        config = Config.from_env({"SQLITE_PATH": str(tmp / "z.sqlite3"), "FS_INTERFACES": "https",
                                  "HTTP_ALLOW_PRIVATE": "true", "PREFLIGHT_FETCH_BYTES": "0"})
        client = create_app(config).test_client()
        bundle = client.post("/", json={"files": [{"src": upstream.url("/a.bin")}]}).get_json()
        yield client, bundle["id"]


def _status(served: tuple[FlaskClient, str], method: str, headers: dict[str, str]) -> int:
    client, bundle_id = served
    response = client.open(f"/{bundle_id}", method=method, headers=headers, buffered=True)
    return response.status_code


@pytest.mark.parametrize(("value", "status"), [
    ("bytes=0-²", 200), ("bytes=²-", 200), ("bytes=-²", 200), ("bytes=0-\u0661\u0662", 200),
    ("bytes=0-1_0", 200), ("bytes=0-+5", 200), (f"bytes=0-{HUGE}", 206), (f"bytes={HUGE}-", 416),
])
def test_a_malformed_range_is_ignored_not_a_500(served: tuple[FlaskClient, str], value: str, status: int) -> None:
    client, bundle_id = served
    whole = client.get(f"/{bundle_id}")
    response = client.get(f"/{bundle_id}", headers={"Range": value})
    assert response.status_code == status
    if status == 416:
        assert response.headers["Content-Range"] == f"bytes */{len(whole.data)}"
    else:
        assert response.data == whole.data  # the whole zip: as a 200, or as a 206 of all of it


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(_HEADER_TEXT, _range_like()), st.one_of(st.none(), _HEADER_TEXT),
       st.sampled_from(["GET", "HEAD"]))
@example("bytes=0-²", None, "GET")
def test_no_range_or_if_range_value_is_a_5xx(served: tuple[FlaskClient, str], value: str,
                                             if_range: str | None, method: str) -> None:
    headers = {"Range": value} | ({"If-Range": if_range} if if_range is not None else {})
    # 428: a resume without If-Range from a byte this zip version never sent (see response.ZipResponse).
    assert _status(served, method, headers) in (200, 206, 416, 428)


def test_a_superscript_digit_on_the_wire_is_ignored_under_gunicorn(serve: Callable[..., LiveServer],
                                                                  upstream: UpstreamServer) -> None:
    """`²` is one Latin-1 byte (0xB2): what curl sends for `-H 'Range: bytes=0-²'`, and gunicorn hands on."""
    upstream.add("/a.bin", b"a" * 1000)
    server = serve()
    created = requests.post(server.url("/"), json={"files": [{"src": upstream.url("/a.bin")}]}, timeout=30)
    url = server.url(f"/{created.json()['id']}")
    whole = requests.get(url, timeout=30)
    for value in ("bytes=0-²", "bytes=²-", "bytes=-¹", "bytes=0-\xa010"):
        response = requests.get(url, headers={"Range": value, "If-Range": whole.headers["ETag"]}, timeout=30)
        assert response.status_code == 200, (value, response.text[:300])
        assert response.content == whole.content
