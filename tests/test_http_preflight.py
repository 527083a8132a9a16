"""Pre-flight that every server answers (issue 13): sources whose HEAD is refused or says less than
their GET, and sources whose validators differ between requests for the same bytes.

Against a real local upstream behaving that way, on POST /bundle, GET /:id, HEAD /:id and resumes
(Range + If-Range) at several offsets; every zip produced is checked by the real readers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from zipstream.errors import StreamAborted

from .support.readers import CheckZip
from .support.upstream import UpstreamServer

# Held whole by pre-flight, continued after its first 64 KiB, and an empty file.
SIZES = {"small.bin": 1000, "big.bin": 200_000, "bigger.bin": 150_000, "empty.bin": 0}
# Headers that describe the zip: HEAD /:id must say what GET /:id says.
ZIP_HEADERS = ("Content-Length", "ETag", "Accept-Ranges", "Last-Modified", "Content-Type")


def _add_files(upstream: UpstreamServer) -> dict[str, bytes]:
    files = {name: os.urandom(size) for name, size in SIZES.items()}
    for name, data in files.items():
        upstream.add(f"/{name}", data, last_modified=1_700_000_000.0)
    return files


def _refs(upstream: UpstreamServer, files: Mapping[str, bytes]) -> list[dict[str, str]]:
    return [{"src": upstream.url(f"/{name}")} for name in files]


def _bundle(client: FlaskClient, upstream: UpstreamServer, files: Mapping[str, bytes]) -> str:
    response = client.post("/", json={"files": _refs(upstream, files)})
    assert response.status_code == 201
    bundle_id: str = response.get_json()["id"]
    return bundle_id


def _check(tmp_path: Path, zip_readers: CheckZip, content: bytes, files: Mapping[str, bytes], name: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    zip_readers(path, dict(files))


def _zip_headers(response: Any) -> dict[str, str | None]:
    return {name: response.headers.get(name) for name in ZIP_HEADERS}


def _resumes_at_several_offsets(client: FlaskClient, bundle_id: str, whole: bytes, etag: str) -> None:
    for offset in (1, 1000, 65_600, 150_000, len(whole) - 30):
        response = client.get(f"/{bundle_id}", headers={"Range": f"bytes={offset}-", "If-Range": etag})
        assert response.status_code == 206, (offset, response.status_code)
        assert response.headers["Content-Range"] == f"bytes {offset}-{len(whole) - 1}/{len(whole)}"
        assert response.data == whole[offset:]


# -- a source that refuses HEAD (S3 presigned GET URLs answer 403; others 405, 501) --


@pytest.mark.parametrize("head_status", [403, 405, 501])
def test_source_refusing_head_is_bundled_and_resumed(client: FlaskClient, upstream: UpstreamServer,
                                                     tmp_path: Path, zip_readers: CheckZip,
                                                     head_status: int) -> None:
    files = _add_files(upstream)
    upstream.set_behaviour(head_status=head_status)
    bundle_id = _bundle(client, upstream, files)
    whole = client.get(f"/{bundle_id}")
    assert whole.status_code == 200
    _check(tmp_path, zip_readers, whole.data, files, "whole.zip")
    head = client.head(f"/{bundle_id}")
    assert head.status_code == 200, head.get_json()
    assert _zip_headers(head) == _zip_headers(whole)
    assert head.headers["Accept-Ranges"] == "bytes"
    assert int(head.headers["Content-Length"]) == len(whole.data)
    _resumes_at_several_offsets(client, bundle_id, whole.data, whole.headers["ETag"])
    one_off = client.post("/bundle", json={"files": _refs(upstream, files)})
    assert one_off.status_code == 200
    _check(tmp_path, zip_readers, one_off.data, files, "one-off.zip")


def test_head_is_asked_only_for_what_the_get_lacks(client: FlaskClient, upstream: UpstreamServer) -> None:
    files = _add_files(upstream)
    bundle_id = _bundle(client, upstream, files)
    upstream.clear_log()
    head = client.head(f"/{bundle_id}")
    assert head.status_code == 200
    resume = client.get(f"/{bundle_id}", headers={"Range": "bytes=100-", "If-Range": head.headers["ETag"]})
    assert resume.status_code == 206
    assert resume.data
    # The 206s carry size and validators, and the empty file's 416 is followed by a plain GET.
    assert [record.path for record in upstream.requests if record.method == "HEAD"] == []
    assert upstream.ranges_for("/empty.bin")[:2] == ["bytes=0-0", None]
    assert upstream.ranges_for("/small.bin")[:2] == ["bytes=0-0"] * 2


def test_a_refused_head_leaves_the_get_answer(client: FlaskClient, upstream: UpstreamServer,
                                              tmp_path: Path, zip_readers: CheckZip) -> None:
    """A 206 without Last-Modified sends pre-flight to HEAD; a 403 there is not 'access denied'."""
    files = _add_files(upstream)
    upstream.set_behaviour(head_status=403, omit_on_206=("Last-Modified",))
    bundle_id = _bundle(client, upstream, files)
    whole = client.get(f"/{bundle_id}")
    assert whole.status_code == 200, whole.get_json()
    _check(tmp_path, zip_readers, whole.data, files, "whole.zip")
    head = client.head(f"/{bundle_id}")
    assert _zip_headers(head) == _zip_headers(whole)
    _resumes_at_several_offsets(client, bundle_id, whole.data, whole.headers["ETag"])


# -- a HEAD without Content-Length (HTTP/1.0, close-delimited) while ranged GETs carry Content-Range --


def test_head_without_length_changes_nothing(client: FlaskClient, upstream: UpstreamServer,
                                             tmp_path: Path, zip_readers: CheckZip) -> None:
    files = _add_files(upstream)
    upstream.set_behaviour(head_no_length=True)
    bundle_id = _bundle(client, upstream, files)
    head = client.head(f"/{bundle_id}")  # first: nothing learned by an earlier GET
    whole = client.get(f"/{bundle_id}")
    assert whole.status_code == 200
    _check(tmp_path, zip_readers, whole.data, files, "whole.zip")
    assert int(whole.headers["Content-Length"]) == len(whole.data)
    assert _zip_headers(head) == _zip_headers(whole)
    assert head.headers["Accept-Ranges"] == "bytes"
    _resumes_at_several_offsets(client, bundle_id, whole.data, whole.headers["ETag"])


# -- validators that differ between requests for the same bytes --


# 2: two hosts behind a round-robin balancer (Apache inode ETags, per-host mtimes after a deploy);
# 10**9: a new ETag and Last-Modified on every response.
@pytest.mark.parametrize("hosts", [2, 10**9])
def test_validators_that_differ_between_requests(client: FlaskClient, upstream: UpstreamServer,
                                                 tmp_path: Path, zip_readers: CheckZip, hosts: int) -> None:
    files = _add_files(upstream)
    upstream.set_behaviour(validator_hosts=hosts)
    bundle_id = _bundle(client, upstream, files)
    # The first download meets the disagreement on a member nothing of which was sent yet: that
    # member is read whole again, and the zip completes at its announced length.
    first = client.get(f"/{bundle_id}")
    assert first.status_code == 200
    content = first.data
    assert len(content) == int(first.headers["Content-Length"])
    _check(tmp_path, zip_readers, content, files, "first.zip")
    # From then on its bytes can't be vouched for across requests: no ETag, no ranges, and HEAD /:id
    # says what GET /:id says.
    head = client.head(f"/{bundle_id}")
    again = client.get(f"/{bundle_id}")
    assert again.status_code == 200
    # (Last-Modified is the newest source's, and such a source may give another on every answer.)
    assert {**_zip_headers(head), "Last-Modified": None} == {**_zip_headers(again), "Last-Modified": None}
    assert head.headers["Accept-Ranges"] == "none"
    assert "ETag" not in head.headers
    assert head.headers["Content-Length"] == again.headers["Content-Length"] == str(len(content))
    _check(tmp_path, zip_readers, again.data, files, "again.zip")
    # A resume of it (with the first download's ETag, or none) is answered with the whole zip.
    for offset in (1, 70_000, len(content) - 30):
        for extra in ({"If-Range": first.headers["ETag"]}, {}):
            resumed = client.get(f"/{bundle_id}", headers={"Range": f"bytes={offset}-", **extra})
            assert resumed.status_code == 200
            assert "Content-Range" not in resumed.headers
            _check(tmp_path, zip_readers, resumed.data, files, f"resumed-{offset}.zip")
    one_off = client.post("/bundle", json={"files": _refs(upstream, files)})
    assert one_off.status_code == 200
    _check(tmp_path, zip_readers, one_off.data, files, "one-off.zip")


def test_one_off_bundle_of_unstable_validators_completes(client: FlaskClient, upstream: UpstreamServer,
                                                         tmp_path: Path, zip_readers: CheckZip) -> None:
    files = _add_files(upstream)
    upstream.set_behaviour(validator_hosts=10**9)
    for compression in ("stored", "deflate"):
        response = client.post("/bundle", json={"files": _refs(upstream, files), "compression": compression})
        assert response.status_code == 200
        _check(tmp_path, zip_readers, response.data, files, f"{compression}.zip")


def test_unstable_validators_after_bytes_were_sent_still_abort(client: FlaskClient,
                                                               upstream: UpstreamServer) -> None:
    """Once some of a member went out, a body cut and re-opened under other validators is never
    spliced: the download is cut, as before."""
    files = _add_files(upstream)
    upstream.set_behaviour("/big.bin", validator_hosts=2, reset_after=100_000)
    response = client.post("/bundle", json={"files": _refs(upstream, files)})
    assert response.status_code == 200
    with pytest.raises(StreamAborted):
        response.get_data()
    # Never a range asked without the version it must continue (If-Range): no splice possible.
    for record in upstream.requests_for("/big.bin", "GET"):
        assert record.range is None or record.range == "bytes=0-65535" or "if-range" in record.headers


def test_head_that_disagrees_with_the_get_makes_the_bundle_unresumable_at_once(
        client: FlaskClient, upstream: UpstreamServer, tmp_path: Path, zip_readers: CheckZip) -> None:
    """A 206 without Last-Modified sends pre-flight to HEAD; a HEAD from another host with another
    ETag shows the validators can't be trusted: no ETag and no ranges from the first answer on."""
    files = _add_files(upstream)
    upstream.set_behaviour(validator_hosts=2, omit_on_206=("Last-Modified",))
    bundle_id = _bundle(client, upstream, files)
    head = client.head(f"/{bundle_id}")
    whole = client.get(f"/{bundle_id}")
    assert whole.status_code == 200
    _check(tmp_path, zip_readers, whole.data, files, "whole.zip")
    for response in (head, whole):
        assert "ETag" not in response.headers
        assert response.headers["Accept-Ranges"] == "none"
        assert response.headers["Content-Length"] == str(len(whole.data))
