"""Never trust a conditional request (issue 14, point 8, HTTP sources).

A continuation asks `Range: bytes=N-` with `If-Range`; a server that ignores If-Range (or If-Match), drops
its validators from some answers, or labels a range with a length it no longer has would hand over the
rest of another version. Every answer's validators and lengths are compared with pre-flight's before a
byte of it is used: a mismatch, or an answer that vouches for no version at all, ends the read (a
download part-way through the member is cut) instead of splicing two versions. Against a real local
HTTP server (tests/support/upstream.py, `ignore_conditionals`), the zips checked by the real readers.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from zipstream import create_app
from zipstream.config import Config
from zipstream.errors import SourceChanged, SourceError, StreamAborted
from zipstream.sources import SourceInfo, Sources, build_sources

from .support.readers import expect_truncated
from .support.upstream import UpstreamServer

KB = 1024
SIZE = 300 * KB
START = 100 * KB  # where the continuation asks to go on from
PATH = "/a.bin"


def _data(size: int, seed: int) -> bytes:
    return bytes((index * 31 + seed) % 251 for index in range(size))


OLD, NEW = _data(SIZE, 1), _data(SIZE, 2)


@pytest.fixture
def sources(make_config: Callable[..., Config]) -> Sources:
    return build_sources(make_config(HTTP_TIMEOUT="5"))


def _read(chunks: Iterator[bytes]) -> tuple[bytes, SourceError | None]:
    """The bytes handed out before the read ended, and the error that ended it (None: it completed)."""
    got = bytearray()
    try:
        for chunk in chunks:
            got += chunk
    except SourceError as error:
        return bytes(got), error
    return bytes(got), None


def _preflight(sources: Sources, upstream: UpstreamServer) -> SourceInfo:
    [info] = sources.stat(upstream.url(PATH))
    assert info.validated and info.size == SIZE
    return info


# Each: server-wide behaviour from the start (pre-flight sees it), then what the file and the server
# become before the continuation. `failed_before`: whether main (trusting the answer) spliced.
_CHANGES: dict[str, tuple[dict[str, Any], Callable[[UpstreamServer], None]]] = {
    # A server that honours If-Range answers the new version whole (200, its own ETag).
    "honours If-Range: 200 of the new version": (
        {}, lambda up: up.add(PATH, NEW)),
    # Ignores If-Range: a 206 of the new version, under its own ETag.
    "ignores If-Range: 206 with another ETag": (
        {"ignore_conditionals": True}, lambda up: up.add(PATH, NEW)),
    # Ignores If-Range and leaves every validator out of its 206s (pre-flight got them from the HEAD):
    # a 206 of the new version that names no version at all. Spliced on main.
    "ignores If-Range, 206 without validators": (
        {"ignore_conditionals": True, "omit_on_206": ("ETag", "Last-Modified")}, lambda up: up.add(PATH, NEW)),
    # The validators vanish with the new version (another backend host behind the same name): a 206 of
    # it with none. Spliced on main.
    "ignores If-Range, validators gone with the new version": (
        {"ignore_conditionals": True},
        lambda up: (up.add(PATH, NEW), up.set_behaviour(no_validators=("ETag", "Last-Modified")))),
    # Ignores Range altogether, and sends the new version whole with no validators: its first START
    # bytes would be skipped and the rest used. Spliced on main.
    "200 of the new version without validators": (
        {}, lambda up: (up.add(PATH, NEW), up.set_behaviour(no_range=True, no_validators=("ETag", "Last-Modified")))),
    # A weak ETag that never changes (W/ promises equivalent, not equal, bytes) and no Last-Modified on
    # 206s: only the date could tell, and the 206 leaves it out. Spliced on main.
    "a constant weak ETag, no date on 206s": (
        {"ignore_conditionals": True, "omit_on_206": ("Last-Modified",)},
        lambda up: up.add(PATH, NEW, etag='W/"v"', last_modified=1_000_000_500.0)),
    # The total in Content-Range differs from pre-flight's size (the same ETag and date: a server whose
    # validators don't follow the content).
    "206 with another total": (
        {"ignore_conditionals": True},
        lambda up: up.add(PATH, NEW + b"more", etag='"v"', last_modified=1_000_000_000.0)),
    # The same, the total not given (`/*`) and the body chunked: nothing announced a length, so the new
    # version's bytes were used up to the old size before the excess showed. Used on main.
    "206 with an unknown total, chunked": (
        {"ignore_conditionals": True},
        lambda up: (up.add(PATH, NEW + b"more", etag='"v"', last_modified=1_000_000_000.0),
                    up.set_behaviour(range_total_unknown=True, no_length=True))),
}


@pytest.mark.parametrize("case", list(_CHANGES))
def test_a_continuation_uses_no_byte_of_another_version(sources: Sources, upstream: UpstreamServer,
                                                        case: str) -> None:
    behaviour, change = _CHANGES[case]
    etag = '"v"' if "total" in case else None
    weak = 'W/"v"' if "weak" in case else etag
    upstream.add(PATH, OLD, etag=weak, last_modified=1_000_000_000.0 if weak else None)
    if behaviour:
        upstream.set_behaviour(**behaviour)
    info = _preflight(sources, upstream)
    change(upstream)
    got, error = _read(sources.open(info, START))
    assert isinstance(error, SourceError), f"{case}: the read completed ({len(got)} bytes)"
    assert got == b"", f"{case}: {len(got)} bytes used before the mismatch showed ({error})"
    asked = [r.headers for r in upstream.requests_for(PATH, "GET") if r.range == f"bytes={START}-"]
    assert asked and all(headers.get("if-range") for headers in asked)


@pytest.mark.parametrize("behaviour", [
    {"ignore_conditionals": True},
    {"ignore_conditionals": True, "omit_on_206": ("ETag",)},  # the date vouches
    {"ignore_conditionals": True, "omit_on_206": ("Last-Modified",)},  # the strong ETag vouches
    {"no_range": True},  # 200 whole, same version: the first START bytes skipped
], ids=str)
def test_a_continuation_of_the_same_version_still_works(sources: Sources, upstream: UpstreamServer,
                                                        behaviour: dict[str, Any]) -> None:
    upstream.add(PATH, OLD)
    upstream.set_behaviour(**behaviour)
    info = _preflight(sources, upstream)
    assert _read(sources.open(info, START)) == (OLD[START:], None)


@pytest.mark.parametrize("behaviour", [
    {"range_early": -1},  # a 206 from a later byte than asked (Content-Range accurate)
    {"range_early": -1, "no_length": True},
], ids=str)
def test_a_206_of_another_range_is_refused(sources: Sources, upstream: UpstreamServer,
                                           behaviour: dict[str, Any]) -> None:
    upstream.add(PATH, OLD)
    info = _preflight(sources, upstream)
    upstream.set_behaviour(**behaviour)
    got, error = _read(sources.open(info, START))
    assert isinstance(error, SourceError) and got == b""


def test_a_plain_read_of_an_answer_without_validators_is_read_whole_again(
        sources: Sources, upstream: UpstreamServer) -> None:
    """Nothing of the member sent yet (a whole read with `unstable`): an answer that vouches for no
    version is read again rather than used, and the src is reported unstable once it read whole."""
    upstream.add(PATH, OLD)
    info = _preflight(sources, upstream)
    upstream.add(PATH, NEW)
    upstream.set_behaviour(no_validators=("ETag", "Last-Modified"))
    reported: list[SourceInfo] = []
    got, error = _read(sources.open(info, 0, unstable=reported.append))
    assert (got, error) == (NEW, None)  # a whole version, never a mixture
    assert reported == [info]
    # Without `unstable` (part of the member already went out), it is refused.
    got, error = _read(sources.open(info, 0))
    assert isinstance(error, SourceChanged) and got == b""


# -- the whole path: a member cut part-way, the file overwritten, the read continued --


_IGNORING = [
    {"ignore_conditionals": True, "omit_on_206": ("ETag", "Last-Modified")},
    {"ignore_conditionals": True},
]


@pytest.mark.parametrize("behaviour", _IGNORING, ids=["206s without validators", "206s with the new ETag"])
def test_a_member_cut_and_overwritten_is_never_spliced(
        make_config: Callable[..., Config], upstream: UpstreamServer, tmp_path: Path,
        behaviour: dict[str, Any]) -> None:
    """The member's body is reset after 1 MB (read whole from byte 0: no first bytes held) and the file
    is overwritten at that moment; the server ignores If-Range. On main the first case was a zip
    every reader accepted, its member the old first MB followed by the new rest (its CRC computed
    over that mixture). Now the download is cut."""
    client: FlaskClient = create_app(make_config(HTTP_TIMEOUT="5", PREFETCH="0",
                                                 PREFLIGHT_FETCH_BYTES="0")).test_client()
    old, new = _data(3_000_000, 5), _data(3_000_000, 6)
    upstream.add(PATH, old)
    upstream.set_behaviour(**behaviour)  # server-wide: it outlives the per-path reset below
    response = client.post("/bundle", json={"files": [{"src": upstream.url(PATH)}]}, buffered=False)
    assert response.status_code == 200, response.get_data(as_text=True)
    upstream.set_behaviour(PATH, reset_after=1_000_000, replace_after_reset=new)
    got = bytearray()
    aborted = False
    try:
        for chunk in response.response:
            got += chunk
    except StreamAborted:
        aborted = True
    path = tmp_path / "cut.zip"
    path.write_bytes(bytes(got))
    if not aborted:
        member = zipfile.ZipFile(path).read("a.bin")
        kind = "old" if member == old else "new" if member == new else "spliced"
        pytest.fail(f"the download completed, its member {kind}: "
                    f"{'old bytes then new ones' if kind == 'spliced' else 'one version, yet not aborted'}")
    expect_truncated(path)
    ranged = [r for r in upstream.requests_for(PATH, "GET") if r.range and r.range != "bytes=0-0"]
    assert ranged and all(r.headers.get("if-range") for r in ranged)  # it did continue, conditionally


@pytest.mark.parametrize("behaviour", [*_IGNORING, {"ignore_conditionals": True, "omit_on_206": ("ETag",)}],
                         ids=["206s without validators", "206s with validators", "206s with a date only"])
@pytest.mark.parametrize("fetch", ["0", "65536"], ids=["read from byte 0", "first bytes held"])
def test_a_member_cut_but_unchanged_is_continued(
        make_config: Callable[..., Config], upstream: UpstreamServer, tmp_path: Path, zip_readers: Any,
        behaviour: dict[str, Any], fetch: str) -> None:
    """The control: the same cut, once, the file not overwritten. Where a 206 vouches for pre-flight's
    version the read goes on from where it was cut; where none does (206s without validators), the
    file is asked for whole (a 200 carries its validators) and read on from the cut. The zip is whole
    either way."""
    client: FlaskClient = create_app(make_config(HTTP_TIMEOUT="5", PREFETCH="0",
                                                 PREFLIGHT_FETCH_BYTES=fetch)).test_client()
    old = _data(3_000_000, 5)
    upstream.add(PATH, old)
    upstream.set_behaviour(**behaviour)
    response = client.post("/bundle", json={"files": [{"src": upstream.url(PATH)}]}, buffered=False)
    assert response.status_code == 200, response.get_data(as_text=True)
    upstream.set_behaviour(PATH, reset_after=1_000_000, reset_times=1)
    data = b"".join(response.response)
    path = tmp_path / "whole.zip"
    path.write_bytes(data)
    zip_readers(path, {"a.bin": old})
