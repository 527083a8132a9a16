"""Pre-flight by ranged GET: small files are fetched once and held for the stream (sources/held.py).

Against a real local upstream: which requests are sent, that no byte is read twice, that the bytes
are the file's, that the budget is always given back, and that holding never changes the zip.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient

from zipstream.config import Config
from zipstream.download import prepare
from zipstream.errors import SourceChanged, SourceError, SourcesFailed
from zipstream.models import FileRef
from zipstream.sources import HoldScope, SourceInfo, Sources, build_sources
from zipstream.sources.held import HoldBudget
from zipstream.sources.http import HttpSource

from .support.live import LiveServer
from .support.readers import CheckZip
from .support.upstream import UpstreamServer
from .support.waiting import wait_for

FETCH = 64 * 1024
FIRST = f"bytes=0-{FETCH - 1}"


@pytest.fixture
def sources(make_config: Callable[..., Config]) -> Sources:
    return build_sources(make_config())


def _budget(sources: Sources) -> HoldBudget:
    """The worker's budget of held bytes: the HTTP source's own."""
    source = sources.backend("http://upstream/")
    assert isinstance(source, HttpSource)
    return source.budget


def _stat(sources: Sources, src: str, scope: HoldScope | None = None) -> list[SourceInfo]:
    """`sources.stat(src)` as the pre-flight of a download that may hold runs it (in `scope`, else a new one)."""
    with (scope or HoldScope()).applying():
        return sources.stat(src)


def _methods_and_ranges(upstream: UpstreamServer, path: str) -> list[tuple[str, str | None]]:
    return [(record.method, record.range) for record in upstream.requests_for(path)]


def test_small_file_costs_one_request(sources: Sources, upstream: UpstreamServer) -> None:
    data = os.urandom(5000)
    upstream.add("/a.bin", data)
    holding = HoldScope()
    [info] = _stat(sources, upstream.url("/a.bin"), holding)
    assert info.size == 5000
    assert info.etag is not None
    assert holding.used == 5000  # the rest of the 64 KiB reservation went back at once
    assert b"".join(sources.open(info)) == data
    assert _methods_and_ranges(upstream, "/a.bin") == [("GET", FIRST)]
    assert holding.used == 0
    assert _budget(sources).used == 0


def test_big_file_continues_after_the_held_part_without_reading_a_byte_twice(
        sources: Sources, upstream: UpstreamServer) -> None:
    data = os.urandom(300_000)
    upstream.add("/big.bin", data)
    [info] = _stat(sources, upstream.url("/big.bin"))
    assert info.size == 300_000
    assert info.head is not None
    assert info.head.size == FETCH
    assert b"".join(sources.open(info)) == data
    assert _methods_and_ranges(upstream, "/big.bin") == [("GET", FIRST), ("GET", f"bytes={FETCH}-")]
    assert upstream.requests_for("/big.bin")[1].headers["if-range"] == info.etag
    # The upstream counts a response's bytes after writing them: the client can be done first.
    wait_for(lambda: upstream.bytes_sent["/big.bin"] >= len(data), "the upstream's count of what it sent")
    assert upstream.bytes_sent["/big.bin"] == len(data)
    assert _budget(sources).used == 0


def test_a_range_inside_the_held_part_is_served_from_it(sources: Sources, upstream: UpstreamServer) -> None:
    data = os.urandom(9000)
    upstream.add("/a.bin", data)
    [info] = _stat(sources, upstream.url("/a.bin"))
    assert b"".join(sources.open(info, 1234)) == data[1234:]
    assert len(upstream.requests_for("/a.bin")) == 1


def test_file_changed_after_preflight_is_refused_not_spliced(sources: Sources, upstream: UpstreamServer) -> None:
    upstream.add("/big.bin", os.urandom(200_000))
    [info] = _stat(sources, upstream.url("/big.bin"))
    upstream.add("/big.bin", os.urandom(200_000))  # new content, new ETag
    with pytest.raises(SourceChanged):
        b"".join(sources.open(info))
    assert _budget(sources).used == 0


def test_empty_file(sources: Sources, upstream: UpstreamServer) -> None:
    upstream.add("/empty.bin", b"")
    [info] = _stat(sources, upstream.url("/empty.bin"))
    assert info.size == 0
    assert b"".join(sources.open(info)) == b""
    # "bytes=0-65535" of nothing is a 416, which need not carry the validators: a plain GET gets them.
    assert _methods_and_ranges(upstream, "/empty.bin") == [("GET", FIRST), ("GET", None)]


def test_server_that_ignores_range(sources: Sources, upstream: UpstreamServer) -> None:
    small, big = os.urandom(3000), os.urandom(400_000)
    upstream.add("/small.bin", small)
    upstream.add("/big.bin", big)
    upstream.set_behaviour(no_range=True)
    holding = HoldScope()
    [small_info] = _stat(sources, upstream.url("/small.bin"), holding)
    [big_info] = _stat(sources, upstream.url("/big.bin"), holding)
    assert small_info.head is not None  # the whole file came in the 200: kept
    assert big_info.head is None  # a whole big file we didn't ask for: dropped, not read
    assert big_info.size == 400_000
    assert b"".join(sources.open(small_info)) == small
    assert b"".join(sources.open(big_info)) == big
    assert len(upstream.requests_for("/small.bin")) == 1
    assert len(upstream.requests_for("/big.bin")) == 2
    assert _budget(sources).used == 0


def test_encoded_answer_is_not_held_and_has_no_size(sources: Sources, upstream: UpstreamServer) -> None:
    upstream.add("/a.txt", b"hello " * 1000)
    upstream.set_behaviour("/a.txt", gzip=True)
    [info] = _stat(sources, upstream.url("/a.txt"))
    assert info.size is None and info.head is None  # the encoded bytes are not the file's
    assert _budget(sources).used == 0
    assert b"".join(sources.open(info)) == b"hello " * 1000  # decoded, as a browser saves it


def test_an_encoding_we_cannot_decode_is_refused(sources: Sources, upstream: UpstreamServer) -> None:
    upstream.add("/a.txt", b"hello " * 1000)
    upstream.set_behaviour("/a.txt", content_encoding="br")
    with pytest.raises(SourceError, match="br-encoded"):
        _stat(sources, upstream.url("/a.txt"))
    assert _budget(sources).used == 0


def test_small_files_share_one_kept_alive_connection(sources: Sources, upstream: UpstreamServer) -> None:
    holding = HoldScope()
    for index in range(20):
        upstream.add(f"/f{index}.bin", os.urandom(100 * index))
        _stat(sources, upstream.url(f"/f{index}.bin"), holding)
    upstream.add("/big.bin", os.urandom(FETCH + 1))
    [big] = _stat(sources, upstream.url("/big.bin"), holding)
    b"".join(sources.open(big))
    assert upstream.connections_accepted == 1


def test_spent_budget_discards_the_first_bytes(make_config: Callable[..., Config],
                                               upstream: UpstreamServer) -> None:
    upstream.add("/a.bin", b"a" * 100)
    # A download may hold half the worker's budget: 50,000 bytes is less than one 64 KiB reservation.
    sources = build_sources(make_config(PREFLIGHT_HOLD_BYTES="100000"))
    [info] = _stat(sources, upstream.url("/a.bin"))
    assert info.head is None
    assert b"".join(sources.open(info)) == b"a" * 100
    # A ranged GET as ever (read the same way, so the same zip), of one byte; the member is read later.
    assert _methods_and_ranges(upstream, "/a.bin") == [("GET", "bytes=0-0"), ("GET", None)]


def test_fetch_bytes_zero_means_one_byte_probe(make_config: Callable[..., Config],
                                               upstream: UpstreamServer) -> None:
    upstream.add("/a.bin", b"a" * 100)
    sources = build_sources(make_config(PREFLIGHT_FETCH_BYTES="0"))
    assert _budget(sources).total == 0
    [info] = _stat(sources, upstream.url("/a.bin"))
    assert info.head is None
    assert info.size == 100
    assert _methods_and_ranges(upstream, "/a.bin") == [("GET", "bytes=0-0")]


def test_per_download_limit_leaves_room_for_others(make_config: Callable[..., Config],
                                                   upstream: UpstreamServer) -> None:
    for index in range(8):
        upstream.add(f"/f{index}.bin", os.urandom(40_000))
    # Worker budget 512 KiB: one download may reserve 256 KiB, i.e. four 64 KiB reservations at once.
    sources = build_sources(make_config(PREFLIGHT_HOLD_BYTES=str(512 * 1024)))
    first = HoldScope()
    infos = [info for index in range(8) for info in _stat(sources, upstream.url(f"/f{index}.bin"), first)]
    held = [info for info in infos if info.head is not None]
    assert 4 <= len(held) < 8  # 40,000 bytes kept per file: six fit in 256 KiB after the first ones
    assert first.used == 40_000 * len(held) <= 256 * 1024
    second = HoldScope()
    [other] = _stat(sources, upstream.url("/f0.bin"), second)
    assert other.head is not None  # the other half of the worker's budget is still there


def test_failed_preflight_gives_the_bytes_back(make_config: Callable[..., Config], upstream: UpstreamServer) -> None:
    config = make_config()
    sources = build_sources(config)
    files = [FileRef(upstream.url(f"/f{index}.bin")) for index in range(10)] + [FileRef(upstream.url("/gone"))]
    for index in range(10):
        upstream.add(f"/f{index}.bin", os.urandom(1000))
    with pytest.raises(SourcesFailed) as failed:
        prepare(files, "x.zip", "stored", 0, sources, None, config, hold=True)
    assert failed.value.__traceback__ is not None  # its frames still see the held bytes: given back anyway
    assert _budget(sources).used == 0


def test_abandoned_download_gives_the_bytes_back(make_config: Callable[..., Config],
                                                 upstream: UpstreamServer) -> None:
    config = make_config()
    sources = build_sources(config)
    for index in range(10):
        upstream.add(f"/f{index}.bin", os.urandom(30_000))
    files = [FileRef(upstream.url(f"/f{index}.bin")) for index in range(10)]
    prepared = prepare(files, "x.zip", "stored", 0, sources, None, config, hold=True)
    assert _budget(sources).used == 300_000
    stream = prepared.stream()
    next(stream)
    stream.close()  # the client went away after the first chunk
    assert _budget(sources).used == 0
    # A prepared zip that is never streamed (HEAD, 304) gives them back when it goes.
    prepared = prepare(files, "x.zip", "stored", 0, sources, None, config, hold=True)
    assert _budget(sources).used == 300_000
    del prepared
    assert _budget(sources).used == 0


def test_holding_never_changes_a_byte_of_the_zip(serve: Callable[..., LiveServer], upstream: UpstreamServer,
                                                 tmp_path: Path, zip_readers: CheckZip) -> None:
    expected = {}
    files = []
    for index, size in enumerate([0, 1, 1000, FETCH - 1, FETCH, FETCH + 1, 300_000, 16 * 1024]):
        data = os.urandom(size)
        upstream.add(f"/f{index}.bin", data)
        files.append({"src": upstream.url(f"/f{index}.bin")})
        expected[f"f{index}.bin"] = data
    holding = serve()
    heads_only = serve(PREFLIGHT_FETCH_BYTES="0")
    response = requests.post(holding.url("/"), json={"files": files}, timeout=30)
    bundle_id = response.json()["id"]
    response = requests.post(heads_only.url("/"), json={"files": files}, timeout=30)
    other_id = response.json()["id"]
    upstream.clear_log()
    held = requests.get(holding.url(f"/{bundle_id}"), timeout=60)
    assert held.status_code == 200
    # One GET per file, plus a plain GET for the empty one (its 416 has no validators) and a second
    # GET for the two bigger than 64 KiB, which continue after their first part.
    methods = [record.method for record in upstream.requests]
    assert (methods.count("GET"), methods.count("HEAD")) == (len(files) + 3, 0)
    not_held = requests.get(heads_only.url(f"/{other_id}"), timeout=60)
    assert not_held.content == held.content
    assert not_held.headers["ETag"] == held.headers["ETag"]
    path = tmp_path / "held.zip"
    path.write_bytes(held.content)
    zip_readers(path, expected)
    # A HEAD of the zip or a range of it holds nothing: a one-byte ranged GET of each (and a plain
    # GET for the empty file), then only the members the range needs.
    upstream.clear_log()
    assert requests.head(holding.url(f"/{bundle_id}"), timeout=30).status_code == 200
    assert sorted((record.method, record.range or "") for record in upstream.requests) == sorted(
        [("GET", "bytes=0-0")] * len(files) + [("GET", "")])
    upstream.clear_log()
    tail = requests.get(holding.url(f"/{bundle_id}"), headers={"Range": "bytes=-100"}, timeout=30)
    assert tail.status_code == 206
    assert tail.content == held.content[-100:]
    assert len([record for record in upstream.requests if record.method == "GET"]) == len(files) + 1


def test_deflate_bundle_streams_held_and_continued_members(serve: Callable[..., LiveServer],
                                                           upstream: UpstreamServer, tmp_path: Path,
                                                           zip_readers: CheckZip) -> None:
    expected = {}
    for index, size in enumerate([10, 20_000, 3 * FETCH + 5]):
        expected[f"f{index}.txt"] = (f"line {index}\n" * (size // 7 + 1)).encode()[:size]
        upstream.add(f"/f{index}.txt", expected[f"f{index}.txt"])
    server = serve()
    files = [{"src": upstream.url(f"/{name}")} for name in expected]
    response = requests.post(server.url("/bundle"), json={"files": files, "compression": "deflate"}, timeout=30)
    assert response.status_code == 200
    path = tmp_path / "deflate.zip"
    path.write_bytes(response.content)
    zip_readers(path, expected)
    assert len(upstream.requests) == len(files) + 1  # the big one continues after its first 64 KiB


# -- servers whose ranged answer says less than their HEAD: the HEAD decides, the zip is the same --


def _zip(sources: Sources, config: Config, files: list[FileRef], hold: bool) -> tuple[bytes, str | None]:
    prepared = prepare(files, "x.zip", "stored", 0, sources, None, config, hold=hold)
    return b"".join(prepared.stream()), prepared.etag


@pytest.mark.parametrize("behaviour", [
    {"omit_on_206": ("Last-Modified",)},
    {"omit_on_206": ("ETag",)},
    {"omit_on_206": ("ETag", "Last-Modified")},
    {"no_validators": ("ETag",)},
    {"no_validators": ("ETag", "Last-Modified")},
    {"no_range": True, "no_length": True},  # whole body, chunked; the HEAD has a Content-Length
    {"no_range": True, "no_validators": ("ETag",)},  # a plain static server: 200, Last-Modified only
    {"head_status": 403},  # an S3 presigned GET URL
    {"head_status": 403, "omit_on_206": ("Last-Modified",)},  # the HEAD asked for, and refused
    {"head_no_length": True},  # HTTP/1.0 HEAD, close-delimited
    {"no_range": True, "no_length": True, "head_no_length": True},  # no size anywhere: unsized zip
], ids=lambda behaviour: ",".join(f"{key}={value}" for key, value in behaviour.items()))
def test_zip_is_the_same_whichever_preflight_ran(make_config: Callable[..., Config], upstream: UpstreamServer,
                                                  behaviour: dict[str, object]) -> None:
    config = make_config()
    sources = build_sources(config)
    files = []
    for index, size in enumerate([0, 700, 30_000, 200_000]):
        upstream.add(f"/f{index}.bin", os.urandom(size))
        files.append(FileRef(upstream.url(f"/f{index}.bin")))
    upstream.set_behaviour(**behaviour)
    held, held_etag = _zip(sources, config, files, hold=True)
    assert _budget(sources).used == 0
    not_held, not_held_etag = _zip(sources, config, files, hold=False)
    assert held == not_held
    assert held_etag == not_held_etag


def test_a_server_without_range_or_etag_costs_one_request_per_small_file(sources: Sources,
                                                                         upstream: UpstreamServer) -> None:
    data = os.urandom(3000)
    upstream.add("/a.bin", data)
    upstream.set_behaviour(no_range=True, no_validators=("ETag",))  # like `python -m http.server`
    [info] = _stat(sources, upstream.url("/a.bin"))
    assert info.etag is None
    assert info.last_modified is not None
    assert b"".join(sources.open(info)) == data
    assert _methods_and_ranges(upstream, "/a.bin") == [("GET", FIRST)]  # its 200 said all a HEAD would


def test_a_first_part_needs_a_strong_etag(sources: Sources, upstream: UpstreamServer) -> None:
    upstream.add("/weak-big.bin", os.urandom(200_000), etag='W/"v1"')
    upstream.add("/weak-small.bin", os.urandom(2000), etag='W/"v1"')
    upstream.add("/dated-big.bin", os.urandom(200_000))
    upstream.set_behaviour("/dated-big.bin", no_validators=("ETag",))
    holding = HoldScope()
    [weak_big] = _stat(sources, upstream.url("/weak-big.bin"), holding)
    [weak_small] = _stat(sources, upstream.url("/weak-small.bin"), holding)
    [dated_big] = _stat(sources, upstream.url("/dated-big.bin"), holding)
    # A continuation after a weak ETag or a date could splice two versions: read those whole later.
    assert weak_big.head is None
    assert dated_big.head is None
    assert weak_small.head is not None  # a whole file needs no continuation
    assert b"".join(sources.open(weak_big)) and upstream.ranges_for("/weak-big.bin")[-1] is None
    for info in (weak_small, dated_big):
        b"".join(sources.open(info))
    assert _budget(sources).used == 0


def test_content_range_beyond_its_total_is_not_trusted() -> None:
    from zipstream.sources.http import _content_range

    assert _content_range("bytes 0-5999/5000") is None
    assert _content_range("bytes 0-4999/5000") == (0, 4999, 5000)
    assert _content_range("bytes 0-99/*") == (0, 99, None)
    assert _content_range("bytes 5-4/10") is None


def test_empty_file_on_a_server_without_head(sources: Sources, upstream: UpstreamServer) -> None:
    upstream.add("/empty.bin", b"")
    upstream.set_behaviour(no_head=True)  # HEAD -> 405, and "bytes=0-0" of nothing -> 416
    [held] = _stat(sources, upstream.url("/empty.bin"))
    [not_held] = sources.stat(upstream.url("/empty.bin"))
    assert held.size == 0
    assert held == not_held
    assert b"".join(sources.open(held)) == b"" == b"".join(sources.open(not_held))


def test_conditional_get_holds_nothing(client: FlaskClient, upstream: UpstreamServer) -> None:
    upstream.add("/a.bin", os.urandom(1000))
    bundle = client.post("/", json={"files": [{"src": upstream.url("/a.bin")}]}).get_json()
    etag = client.head(f"/{bundle['id']}").headers["ETag"]
    upstream.clear_log()
    response = client.get(f"/{bundle['id']}", headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert _methods_and_ranges(upstream, "/a.bin") == [("GET", "bytes=0-0")]


def test_weak_etag_alone_is_not_a_validator(make_config: Callable[..., Config], upstream: UpstreamServer) -> None:
    """Equal weak ETags need not mean equal bytes: a zip of such a file is not resumable, and a body cut
    part-way is not continued (that could splice two versions); the download fails visibly instead."""
    config = make_config()
    sources = build_sources(config)
    upstream.add("/weak.bin", os.urandom(300_000), etag='W/"v1"')
    upstream.set_behaviour("/weak.bin", no_validators=("Last-Modified",), reset_after=100_000)
    [info] = sources.stat(upstream.url("/weak.bin"))
    assert info.etag == 'W/"v1"'
    assert not info.validated
    prepared = prepare([FileRef(upstream.url("/weak.bin"))], "x.zip", "stored", 0, sources, None, config)
    assert not prepared.rangeable
    assert prepared.etag is None
    with pytest.raises(SourceError):
        b"".join(sources.open(info))
    assert upstream.ranges_for("/weak.bin")[-1] is None  # never continued with a bare Range


def test_giving_back_from_a_finalizer_inside_reserve_does_not_deadlock() -> None:
    """The garbage collector may free a Head (caught in a cycle) while this thread is inside reserve()."""
    import threading

    from zipstream.sources.held import HoldBudget, Holding

    budget = HoldBudget(1000)
    holding = Holding(budget, 500)
    assert holding.reserve(100)
    head = holding.keep(b"x" * 40, 100)

    def free_inside_reserve() -> None:
        nonlocal head
        with holding._lock, budget._lock:  # where reserve() is when the collector strikes
            del head

    worker = threading.Thread(target=free_inside_reserve, daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "deadlocked"
    assert holding.used == 0
    assert budget.used == 0


def test_a_zip_refused_after_preflight_gives_the_bytes_back(make_config: Callable[..., Config],
                                                            upstream: UpstreamServer) -> None:
    from zipstream.errors import LimitExceeded

    config = make_config(MAX_BUNDLE_BYTES="100")
    sources = build_sources(config)
    upstream.add("/a.bin", b"a" * 60)
    upstream.add("/b.bin", b"b" * 60)
    files = [FileRef(upstream.url("/a.bin")), FileRef(upstream.url("/b.bin"))]
    with pytest.raises(LimitExceeded) as refused:
        prepare(files, "x.zip", "stored", 0, sources, None, config, hold=True)
    # Given back at once, not whenever the exception (whose frames still see them) is collected.
    assert refused.value.__traceback__ is not None
    assert _budget(sources).used == 0
    assert all(record.range == FIRST for record in upstream.requests)  # they were held, then given back
