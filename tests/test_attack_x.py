"""Holes found by the issue-14 attack pass (helper X), each through a real gunicorn."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from zipstream.config import Config
from zipstream.errors import SourceError, SourceNotFound, SourceRefused
from zipstream.sources.file import FileSource

from .support.live import LiveServer


def _raw_post(server: LiveServer, path: str, content_type: str, body: bytes, finish: bool) -> bytes:
    """POST `body` as is after a `Transfer-Encoding: chunked` head; the whole answer (or what came in 15 s)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode() + body)
        if finish:  # the client sends no more: a body cut short
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


# Each was a 500 (and an "unexpected error" traceback in the log): gunicorn's chunked reader raised
# out of the MAX_BODY_BYTES guard.
MALFORMED_CHUNKED = [
    pytest.param(b"1\r\nab\r\n0\r\n\r\n", False, id="chunk-longer-than-its-size"),
    pytest.param(b"zz\r\n{}\r\n0\r\n\r\n", False, id="size-not-hex"),
    pytest.param(b"-2\r\n{}\r\n0\r\n\r\n", False, id="negative-size"),
    pytest.param("\u0662\r\n{}\r\n0\r\n\r\n".encode(), False, id="arabic-indic-digit-size"),
    pytest.param(b"2\r\n{}", True, id="cut-after-a-chunk"),
]


@pytest.mark.parametrize(("body", "finish"), MALFORMED_CHUNKED)
@pytest.mark.parametrize(("path", "content_type"), [
    ("/bundle", "application/json"),
    ("/", "application/x-www-form-urlencoded"),
    ("/", "multipart/form-data; boundary=x"),
])
def test_malformed_chunked_body_is_400_not_500(serve: Callable[..., LiveServer], body: bytes, finish: bool,
                                               path: str, content_type: str) -> None:
    server = serve()
    answer = _raw_post(server, path, content_type, body, finish)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 400 BAD REQUEST", answer[:300]
    assert json.loads(payload)["error"]["code"] == "bad_request"
    assert "unexpected error" not in server.log_text()


# -- file://: a folder swapped for a symlink between resolving a path and opening it ----------------


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """FILE_ROOT with `up/d/s.txt` (a decoy anyone who may write below FILE_ROOT could make), and a
    folder outside it holding `s.txt`."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "up" / "d").mkdir(parents=True)
    (root / "up" / "d" / "s.txt").write_bytes(b"decoy")
    outside.mkdir()
    (outside / "s.txt").write_bytes(b"SECRET-OUTSIDE")
    return root, outside


def _swap_for_symlink(folder: Path, target: Path) -> None:
    folder.rename(folder.with_name(folder.name + "-was"))
    folder.symlink_to(target)


def test_folder_swapped_for_a_symlink_after_resolution_is_not_followed_at_preflight(
        planted: tuple[Path, Path], make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    """The swap lands right after the path was resolved (what a tight loop of renames does now and
    then: 36 of 1,500 downloads through gunicorn held the outside file). Before, the open followed the
    new symlink in the folder part of the path (O_NOFOLLOW covers only the last segment)."""
    root, outside = planted
    source = FileSource.from_config(make_config(FS_INTERFACES="file", FILE_ROOT=str(root)))
    resolve = os.path.realpath

    def resolve_then_swap(path: str, *args: Any, **kwargs: Any) -> str:  # the attacker's moment
        resolved = resolve(path, *args, **kwargs)
        folder = root / "up" / "d"
        if str(path).endswith("s.txt") and not folder.is_symlink():
            _swap_for_symlink(folder, outside)
        return resolved

    monkeypatch.setattr(os.path, "realpath", resolve_then_swap)
    with pytest.raises((SourceNotFound, SourceRefused)):
        source.stat("file:///up/d/s.txt")  # was a SourceInfo of the outside file (14 bytes)


def test_folder_swapped_for_a_symlink_after_preflight_is_not_followed_when_streaming(
        planted: tuple[Path, Path], make_config: Callable[..., Config]) -> None:
    root, outside = planted
    source = FileSource.from_config(make_config(FS_INTERFACES="file", FILE_ROOT=str(root)))
    (info,) = source.stat("file:///up/d/s.txt")
    _swap_for_symlink(root / "up" / "d", outside)
    with pytest.raises(SourceError):
        b"".join(source.open(info))
