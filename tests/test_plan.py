"""zipstream.plan: entries, names, limits, layout and ETag, from pre-flight's answers alone (no I/O).

The first tests build plans from hand-made `SourceInfo`s; the last go through the app: the limits
are answered before any source is asked (a stored bundle over MAX_FILES), before any name is made
(a src expanding past MAX_FILES) and before the first byte (MAX_BUNDLE_BYTES).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from zipstream import create_app, names
from zipstream.config import Config
from zipstream.errors import LimitExceeded, SourcesFailed
from zipstream.models import FileRef
from zipstream.numbers import MAX_BYTES
from zipstream.plan import Plan, entry_names, plan_zip
from zipstream.sources import SourceInfo

from .support.live import LiveServer
from .support.upstream import UpstreamServer

Serve = Callable[..., LiveServer]
MB = 1_000_000
LIMIT = 3 * MB
WHEN = datetime(2024, 5, 6, 7, 8, 10, tzinfo=UTC)


def _info(path: str = "/a.bin", size: int | None = 10, etag: str | None = '"v1"',
          last_modified: datetime | None = WHEN) -> SourceInfo:
    return SourceInfo(src=f"https://files.example{path}", name=path.lstrip("/"), size=size, etag=etag,
                      last_modified=last_modified)


def _plan(*infos: SourceInfo, compression: str = "stored", max_bundle_bytes: int = 0,
          refs: list[FileRef] | None = None) -> Plan:
    refs = refs if refs is not None else [FileRef(src=info.src) for info in infos]
    return plan_zip(refs, [[info] for info in infos], "b.zip", compression, 0, 100, max_bundle_bytes)


# -- plans, without I/O -----------------------------------------------------------------------------


@pytest.mark.parametrize("change", [
    {"size": 11}, {"etag": '"v2"'}, {"last_modified": datetime(2024, 5, 6, 7, 8, 12, tzinfo=UTC)},
    {"src": "https://files.example/other/a.bin"},
], ids=["size", "etag", "last_modified", "src"])
def test_the_etag_changes_with_any_source_version(change: dict[str, Any]) -> None:
    before = _plan(_info(), _info("/b.bin"))
    after = _plan(_info(), replace(_info("/b.bin"), **change))
    assert before.etag is not None and after.etag is not None
    assert before.etag != after.etag
    assert _plan(_info(), _info("/b.bin")).etag == before.etag  # and with nothing else


def test_the_etag_changes_with_the_entry_names_and_crcs() -> None:
    info = _info()
    plain = _plan(info)
    renamed = _plan(info, refs=[FileRef(src=info.src, dst="x/a.bin")])
    given_crc = _plan(info, refs=[FileRef(src=info.src, crc32=1234)])
    assert len({plain.etag, renamed.etag, given_crc.etag}) == 3


@pytest.mark.parametrize(("info", "compression"), [
    (_info(size=None), "stored"),  # no size: no length
    (_info(etag=None, last_modified=None), "stored"),  # nothing would show a change
    (_info(etag='W/"v1"', last_modified=None), "stored"),  # a weak ETag alone is no validator
    (_info(), "deflate"),  # length unknown until it is written
], ids=["no size", "no validator", "weak etag", "deflate"])
def test_no_etag_and_no_ranges_without_a_size_and_a_validator(info: SourceInfo, compression: str) -> None:
    plan = _plan(_info("/b.bin"), info, compression=compression)
    assert not plan.rangeable
    assert plan.etag is None


def test_distrusted_sources_leave_no_etag_and_no_ranges() -> None:
    plan = _plan(_info(), _info("/b.bin"))
    assert plan.rangeable and plan.etag is not None
    distrusted = plan.distrust([1])
    assert not distrusted.rangeable and distrusted.etag is None
    assert not distrusted.infos[1].stable and distrusted.infos[0].stable
    assert plan.etag is not None  # a new plan: the old one is unchanged


@pytest.mark.parametrize(("sizes", "max_bundle_bytes", "limit"), [
    ([600, 400], 1000, None),
    ([600, 401], 1000, "MAX_BUNDLE_BYTES"),
    ([600, None], 1000, None),  # a member without a size is counted as it streams (stream.py)
    ([MAX_BYTES, 1], 0, "ZIP64"),
])
def test_limits(sizes: list[int | None], max_bundle_bytes: int, limit: str | None) -> None:
    infos = [_info(f"/{index}.bin", size=size) for index, size in enumerate(sizes)]
    if limit is None:
        assert _plan(*infos, max_bundle_bytes=max_bundle_bytes).sized_bytes == sum(size or 0 for size in sizes)
        return
    with pytest.raises(LimitExceeded) as raised:
        _plan(*infos, max_bundle_bytes=max_bundle_bytes)
    assert raised.value.details["limit"] == limit


@pytest.mark.parametrize("size", [-5, MAX_BYTES + 1])
def test_a_size_no_file_can_have_is_the_sources_error(size: int) -> None:
    with pytest.raises(SourcesFailed) as raised:
        _plan(_info(), _info("/b.bin", size=size))
    assert [item["src"] for item in raised.value.details["sources"]] == ["https://files.example/b.bin"]


@pytest.mark.parametrize(("ref", "found", "expected"), [
    (FileRef("s3://b/k/a.txt"), ["k/a.txt"], ["k/a.txt"]),
    (FileRef("s3://b/k/a.txt", dst="x.txt"), ["k/a.txt"], ["x.txt"]),
    (FileRef("s3://b/k/", dst="out"), ["k/a.txt", "k/b.txt"], ["out/k/a.txt", "out/k/b.txt"]),
    (FileRef("s3://b/k/", dst="out"), ["k/a.txt"], ["out/k/a.txt"]),  # a prefix: one file is still under dst
    (FileRef("s3://b/k/a.txt", dst=".."), ["k/a.txt"], ["k/a.txt"]),  # nothing left of dst: the default name
    (FileRef("s3://b/k/", dst=None), ["k/a.txt", "K/A.TXT"], ["k/a.txt", "k/A (1).TXT"]),
])
def test_entry_names(ref: FileRef, found: list[str], expected: list[str]) -> None:
    infos = [SourceInfo(src=f"s3://b/{name}", name=name, size=1) for name in found]
    assert entry_names([ref], [infos]) == expected


# -- limits, through the app --------------------------------------------------------------------------


def test_stored_bundle_over_max_files_is_413_before_any_source_is_asked(
        make_config: Callable[..., Config], upstream: UpstreamServer) -> None:
    for i in range(4):
        upstream.add(f"/f{i}.txt", b"x")
    before = create_app(make_config(MAX_FILES="4")).test_client()
    created = before.post("/", json={"files": [{"src": upstream.url(f"/f{i}.txt")} for i in range(4)]})
    assert created.status_code == 201, created.data
    after = create_app(make_config(MAX_FILES="2")).test_client()  # the limit lowered, same database
    for method in ("GET", "HEAD"):
        response = after.open(f"/{created.json['id']}", method=method)
        assert response.status_code == 413
        if method == "GET":
            assert response.json["error"]["code"] == "limit_exceeded"
            assert "MAX_FILES" in response.json["error"]["message"]
    assert upstream.requests == []
    # Its owner can still read, trim (by deleting) and see it; appending is refused as before.
    url = f"/{created.json['id']}/{created.json['secret']}"
    assert after.get(url).status_code == 200
    assert after.put(url, json={"files": [{"src": upstream.url("/f0.txt")}]}).status_code == 413
    assert after.delete(url).status_code == 200


def test_expansion_past_max_files_is_413_before_any_name_is_made(make_config: Callable[..., Config],
                                                                 tmp_path: Path) -> None:
    folder = tmp_path / "root" / "many"
    folder.mkdir(parents=True)
    for i in range(5):
        (folder / f"{i}.txt").write_bytes(b"x")
    config = make_config(FS_INTERFACES="file", FILE_ROOT=str(tmp_path / "root"), MAX_FILES="3")
    client = create_app(config).test_client()
    named: list[str] = []

    def profile(frame: Any, event: str, _arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename == names.__file__:
            named.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        response = client.post("/bundle", json={"files": [{"src": "file:///many/"}]})
    finally:
        sys.setprofile(None)
    assert response.status_code == 413, response.data
    assert "expands to 5 files" in response.json["error"]["message"]
    assert "safe_name" not in named and "add" not in named


def test_a_known_total_past_the_limit_is_refused_before_the_first_byte(serve: Serve,
                                                                        upstream: UpstreamServer) -> None:
    upstream.add("/a.bin", os.urandom(LIMIT // 2 + 1))
    upstream.add("/b.bin", os.urandom(LIMIT // 2 + 1))  # with a.bin, one byte past the limit
    upstream.add("/endless.bin", os.urandom(MB))
    upstream.set_behaviour("/endless.bin", chunked=True, no_range=True)
    server = serve(MAX_BUNDLE_BYTES=str(LIMIT))
    files = [{"src": upstream.url(path)} for path in ("/endless.bin", "/a.bin", "/b.bin")]
    response = requests.post(server.url("/bundle"), json={"files": files}, timeout=60)
    assert response.status_code == 413
    assert response.json()["error"]["limit"] == "MAX_BUNDLE_BYTES"
    assert not upstream.requests_for("/endless.bin", "GET")[1:]  # nothing read past pre-flight's request
