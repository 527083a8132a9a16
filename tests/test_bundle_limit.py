"""MAX_BUNDLE_BYTES holds whatever pre-flight knew: member bytes are counted as they stream, and a zip
that passes the limit is cut (an aborted transfer no reader accepts), never ended cleanly."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from .support.live import LiveServer
from .support.readers import expect_truncated
from .support.upstream import UpstreamServer

Serve = Callable[..., LiveServer]
MB = 1_000_000
LIMIT = 3 * MB
FIRST = 2 * MB  # sized and random: deflate's output reaches the client before the limit is passed


def _download(server: LiveServer, files: list[dict[str, object]], compression: str) -> tuple[int, bytes]:
    """(status, the bytes that arrived) of a one-off zip the server must cut part-way: an incomplete
    chunked body (gunicorn closes the connection without the last chunk)."""
    got = bytearray()
    with (  # noqa: PT012 - reading the body is what must fail
        pytest.raises(requests.exceptions.ChunkedEncodingError),
        requests.post(server.url("/bundle"), json={"files": files, "compression": compression},
                      stream=True, timeout=60) as response,
    ):
        for chunk in response.iter_content(65536):
            got.extend(chunk)
    return response.status_code, bytes(got)


@pytest.mark.parametrize("compression", ["stored", "deflate"])
@pytest.mark.parametrize("behaviour", [
    {"chunked": True, "no_range": True},  # a streaming server: no length, Range ignored
    {"no_length": True, "no_range": True},  # HTTP/1.0 style: the close ends the body
    {"gzip": True, "no_range": True},  # a decoded body: 20 MB of zeros is a few KB on the wire
], ids=["chunked", "close-delimited", "gzip"])
def test_a_source_without_a_size_is_cut_at_the_limit(serve: Serve, upstream: UpstreamServer, tmp_path: Path,
                                                     compression: str, behaviour: dict[str, bool]) -> None:
    """Pre-flight counts a source without a size as 0 bytes; its bytes are counted as they stream
    (decoded bytes for a gzip body) and the download is cut once the members pass the limit."""
    first = os.urandom(FIRST)
    upstream.add("/first.bin", first)
    upstream.add("/endless.bin", b"\0" * (50 * MB) if behaviour.get("gzip") else os.urandom(20 * MB))
    upstream.set_behaviour("/endless.bin", **behaviour)
    server = serve(MAX_BUNDLE_BYTES=str(LIMIT))
    files: list[dict[str, object]] = [{"src": upstream.url("/first.bin")}, {"src": upstream.url("/endless.bin")}]
    status, got = _download(server, files, compression)
    assert status == 200
    # Cut at the limit: what went out is at most the members' first LIMIT bytes plus the zip's own.
    assert len(got) < LIMIT + 64 * 1024
    if compression == "stored":
        assert len(got) > LIMIT - 2 * 1024 * 1024  # cut at the limit, not at some earlier error
    path = tmp_path / "cut.zip"
    path.write_bytes(got)
    expect_truncated(path)
    assert "MAX_BUNDLE_BYTES" in server.log_text()


@pytest.mark.parametrize("compression", ["stored", "deflate"])
def test_a_source_streaming_more_than_pre_flight_saw_is_cut_at_its_size(
        serve: Serve, upstream: UpstreamServer, tmp_path: Path, compression: str) -> None:
    """Pre-flight's ranged GET says 100 kB (`Content-Range: bytes 0-0/100000`); the GET that streams it
    sends 20 MB, chunked. The member is cut at the size the zip promised, under the limit's room."""
    upstream.add("/first.bin", os.urandom(FIRST))
    upstream.add("/liar.bin", os.urandom(20 * MB))
    upstream.set_behaviour("/liar.bin", chunked=True, header_values=(("Content-Range", "bytes 0-0/100000"),))
    server = serve(MAX_BUNDLE_BYTES=str(LIMIT), PREFLIGHT_FETCH_BYTES="0")
    files: list[dict[str, object]] = [{"src": upstream.url("/first.bin")}, {"src": upstream.url("/liar.bin")}]
    status, got = _download(server, files, compression)
    assert status == 200
    assert len(got) < FIRST + 100_000 + 64 * 1024
    path = tmp_path / "cut.zip"
    path.write_bytes(got)
    expect_truncated(path)
