"""Resumes inside a member whose CRC-32 is not known start talking at once (issue 13, point 6).

The member's bytes after the cut stream out immediately while the bytes before it are read
alongside for the CRC-32 (the two parts' CRCs combined); the descriptor follows the member as
before. Checked against a slow upstream, with the resumed zip verified by the real readers.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient

from .support.live import LiveServer
from .support.readers import CheckZip
from .support.upstream import UpstreamServer
from .support.waiting import wait_for

Serve = Callable[..., LiveServer]


@pytest.mark.parametrize("split", [0, 1, 4095, 65536, 299_999, 300_000])
def test_crc32_combine_matches_one_pass(split: int) -> None:
    from zipstream.archive import crc32_combine

    data = os.urandom(300_000)
    head, tail = data[:split], data[split:]
    assert crc32_combine(zlib.crc32(head), zlib.crc32(tail), len(tail)) == zlib.crc32(data)


def test_crc32_combine_fallback_matches_zlib() -> None:
    from zipstream import archive
    from zipstream.archive import crc32_combine

    data = os.urandom(70_000)
    for split in (0, 1, 33_333, 70_000):
        head, tail = data[:split], data[split:]
        assert archive._crc32_combine_py(zlib.crc32(head), zlib.crc32(tail), len(tail)) == zlib.crc32(data)
    assert archive._crc32_combine_py(0x12345678, 0x9ABCDEF0, 6 << 30) == crc32_combine(0x12345678, 0x9ABCDEF0, 6 << 30)


def test_resume_inside_a_member_of_unknown_crc_starts_at_once(serve: Serve, upstream: UpstreamServer,
                                                              tmp_path: Path, zip_readers: CheckZip) -> None:
    data = os.urandom(300_000)
    upstream.add("/a.bin", data)
    server = serve()
    created = requests.post(server.url("/"), json={"files": [{"src": upstream.url("/a.bin")}]}, timeout=30)
    url = server.url(f"/{created.json()['id']}")
    head = requests.head(url, timeout=30)  # the ETag, without streaming (so no CRC-32 is learned)
    etag, length = head.headers["ETag"], int(head.headers["Content-Length"])
    cut = length - 40_000  # inside the member's data: its last ~30 KB, then the end records
    upstream.set_behaviour("/a.bin", throttle_bps=80_000)  # re-reading the first 260 KB takes ~3 s
    upstream.clear_log()
    started = time.monotonic()
    with requests.get(url, headers={"Range": f"bytes={cut}-", "If-Range": etag}, stream=True,
                      timeout=60) as response:
        assert response.status_code == 206, response.text[:300]
        first = response.raw.read(1)  # returns as soon as a byte has arrived
        first_byte = time.monotonic() - started
        head_read_by_then = upstream.bytes_sent.get("/a.bin", 0)
        rest = response.raw.read()
    total = time.monotonic() - started
    # The first byte did not wait for the ~260 KB before the cut to be read again (at 80 KB/s): when it
    # came, the upstream had sent less than that (counts, not a clock: the machine may be loaded).
    assert head_read_by_then < 200_000, f"{head_read_by_then} bytes read before the first byte"
    upstream.clear_behaviour("/a.bin")
    # The upstream was read in full once more (the part before the cut, for the CRC), and counted.
    # (counted by the upstream's thread after each write returns: it may lag the client's last byte)
    wait_for(lambda: upstream.bytes_sent.get("/a.bin", 0) >= len(data), "the whole member read once more")
    whole = requests.get(url, timeout=30).content  # now with the CRC learned: same bytes
    path = tmp_path / "resumed.zip"
    path.write_bytes(whole[:cut] + first + rest)
    assert path.read_bytes() == whole
    zip_readers(path, {"a.bin": data})
    print(f"first byte {first_byte:.2f} s, whole resume {total:.2f} s")


def test_a_src_named_twice_gets_its_learned_crc_in_both_members(client: FlaskClient, upstream: UpstreamServer) -> None:
    """One CRC-32 learned for a src serves every member that names it: a resume inside the first of
    two reads only the bytes it sends (it was the last member only, so the first was read again
    from its start, for its CRC-32)."""
    data = os.urandom(100_000)
    upstream.add("/a.bin", data)
    src = upstream.url("/a.bin")
    created = client.post("/", json={"files": [{"src": src, "dst": "one.bin"}, {"src": src, "dst": "two.bin"}]})
    assert created.status_code == 201, created.data
    url = f"/{created.json['id']}"
    whole = client.get(url)
    assert whole.status_code == 200
    zipped = whole.data  # streamed to the end: the CRC-32 of a.bin is learned
    upstream.clear_log()
    cut = 50_000  # inside one.bin's data
    part = client.get(url, headers={"Range": f"bytes={cut}-", "If-Range": whole.headers["ETag"]})
    assert part.status_code == 206
    assert part.data == zipped[cut:]
    reads = [record.range for record in upstream.requests_for("/a.bin", "GET") if record.range != "bytes=0-0"]
    # one.bin from the cut (a Range), two.bin whole (no Range); nothing else.
    assert len(reads) == 2 and reads.count(None) == 1, reads
