"""The pre-flight deadline's parts: Deadline arithmetic, the 502/504 rule, the setting.

Pre-flight's cancellation by the deadline: tests/test_preflight.py.
"""

from __future__ import annotations

import os
import resource
import socket
from collections.abc import Callable
from typing import Any

import gevent.socket
import pytest

from zipstream.config import Config, ConfigError
from zipstream.deadline import Deadline
from zipstream.disconnect import client_gone
from zipstream.errors import SourceError, SourceNotFound, SourcesFailed, SourceTimeout
from zipstream.sources import build_sources


def test_deadline_arithmetic() -> None:
    now = [100.0]
    deadline = Deadline(5, clock=lambda: now[0])
    assert deadline.remaining() == 5
    assert deadline.cap(30) == 5 and deadline.cap(1) == 1
    now[0] = 104.5
    assert deadline.cap(30) == pytest.approx(0.5)
    assert not deadline.expired
    now[0] = 106
    assert deadline.remaining() == 0 and deadline.expired
    unlimited = Deadline(None)
    assert unlimited.cap(30) == 30 and not unlimited.expired


def test_504_only_when_timeouts_are_the_worst_failure() -> None:
    timeout = SourceTimeout("http://a/x", "no answer")
    broken = SourceError("http://b/y", "upstream answered HTTP 500")
    missing = SourceNotFound("http://c/z", "not found")
    assert SourcesFailed([timeout]).status == 504
    assert SourcesFailed([timeout]).code == "upstream_timeout"
    assert SourcesFailed([timeout, missing]).status == 504
    assert SourcesFailed([timeout, broken]).status == 502  # something answered, wrongly: a bad gateway
    assert SourcesFailed([missing]).status == 422


def test_preflight_timeout_setting() -> None:
    assert Config.from_env({}).preflight_timeout == 20.0
    assert Config.from_env({"PREFLIGHT_TIMEOUT": "2.5"}).preflight_timeout == 2.5
    with pytest.raises(ConfigError, match="PREFLIGHT_TIMEOUT"):
        Config.from_env({"PREFLIGHT_TIMEOUT": "0"})


def test_a_connect_timeout_is_a_timeout(make_config: Callable[..., Config]) -> None:
    # A full accept queue: connect() waits. Each attempt gives up after HTTP_TIMEOUT (connect part),
    # and that is a SourceTimeout (504) like a read timeout, not "connection failed" (502).
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            sources = build_sources(make_config(HTTP_TIMEOUT="0.2"))
            with pytest.raises(SourceTimeout, match=r"HTTP_TIMEOUT\), 4 attempts"):
                sources.stat(f"http://127.0.0.1:{port}/never.bin", Deadline(20))


def test_client_gone_means_eof_or_reset_only() -> None:
    server, client = socket.socketpair()
    with server, client:
        assert not client_gone(server)  # nothing to read
        client.sendall(b"GET /next HTTP/1.1\r\n")
        assert not client_gone(server)  # a pipelined request: peeked at, not consumed
        assert server.recv(100) == b"GET /next HTTP/1.1\r\n"
        client.close()
        assert client_gone(server)


@pytest.mark.parametrize("make_pair", [socket.socketpair, gevent.socket.socketpair], ids=["stdlib", "gevent"])
def test_client_gone_on_a_descriptor_past_fd_setsize(make_pair: Callable[[], tuple[Any, Any]]) -> None:
    """select() refuses descriptors >= 1024: a worker holding that many connections took every live
    client for gone, and its download was cancelled as a 499 (found by bench B8)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    server, client = make_pair()
    high = os.dup2(server.fileno(), 1500)
    server.close()
    server = type(client)(fileno=high)
    with server, client:
        assert server.fileno() >= 1024
        assert not client_gone(server)
        client.sendall(b"GET /next HTTP/1.1\r\n")
        assert not client_gone(server)
        assert server.recv(100) == b"GET /next HTTP/1.1\r\n"
        client.close()
        assert client_gone(server)
