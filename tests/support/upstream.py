"""A real local HTTP file server with scriptable misbehaviour, for tests and benchmarks.

Usage::

    with UpstreamServer({"/a.txt": b"hello", "/big.bin": Path("/tmp/big.bin")}) as up:
        up.set_behaviour("/a.txt", status=503, fail_times=2)
        requests.get(up.url("/a.txt"))

or import the ``upstream`` / ``upstream_factory`` fixtures into conftest.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import gzip as gzip_module
import hashlib
import math
import os
import re
import socket
import socketserver
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NamedTuple, cast
from urllib.parse import quote, unquote

import pytest

from zipstream.chunks import close_iterator

# The fake upstream's write size, 256 KiB on purpose: not zipstream.chunks.CHUNK_SIZE, since a real
# server's writes never line up with our reads (the sources must not assume they do).
WRITE_SIZE: Final = 256 * 1024
# Idle keep-alive connections are dropped after this; long enough for any benchmark pause.
IDLE_TIMEOUT_S: Final = 120.0
# Client-side disconnects are normal in failure tests; they must not print tracebacks.
_CLIENT_GONE: Final = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class RequestRecord(NamedTuple):
    """One logged request; header names are lower-cased, path is percent-decoded without query."""

    method: str
    path: str
    headers: dict[str, str]
    range: str | None


@dataclass(frozen=True)
class Behaviour:
    """How the server (mis)behaves for a path; see UpstreamServer.set_behaviour."""

    latency: float = 0.0  # seconds slept before every response
    status: int | None = None  # force this status (e.g. 500, 503, 404, 403) instead of serving
    fail_times: int | None = None  # with status: only the first N requests fail, then serve normally
    retry_after: int | str | None = None  # Retry-After on forced-status responses (seconds, or any text)
    reset_after: int | None = None  # send N body bytes, then abort the connection with a TCP RST
    stall_after: int | None = None  # send N body bytes, then pause stall_seconds before the rest
    stall_seconds: float = 30.0
    wrong_length: int = 0  # announced Content-Length minus bytes really sent (+: short body, -: extra)
    gzip: bool = False  # gzip the body with Content-Encoding: gzip whatever the client accepts
    no_length: bool = False  # no Content-Length: body delimited by closing the connection
    redirect_to: str | None = None  # answer 302 with this Location
    no_head: bool = False  # HEAD -> 405
    no_range: bool = False  # ignore Range/If-Range, always 200 full body, Accept-Ranges: none
    omit_on_206: tuple[str, ...] = ()  # header names left out of 206 answers (RFC 9110 requires only ETag)
    no_validators: tuple[str, ...] = ()  # "ETag" / "Last-Modified": never sent, on any answer
    silent: bool = False  # read the request, then never answer (until the server stops)
    trickle_seconds: float = 0.0  # send the headers, then one body byte every trickle_seconds
    # -- continuations and redirects (issue 13) --
    redirect_utf8: bool = False  # with redirect_to: send the Location's characters as raw UTF-8 bytes
    redirect_after: int = 0  # with redirect_to: the first N requests are served, only later ones redirected
    # With redirect_to: the Location gets `?expires=<epoch>` this many seconds ahead, like a signed URL.
    # Any request carrying an `expires=` query that has passed is answered 403 (an expired signature).
    redirect_expires: float | None = None
    range_early: int = 0  # a 206 starts this many bytes before the asked start (Content-Range accurate)
    range_status: int | None = None  # answer this status to every ranged request starting past byte 0
    # With status + retry_after: after a forced answer, requests within Retry-After get it again
    # (not counted toward fail_times), as a rate limiter enforcing its Retry-After does.
    retry_after_enforced: bool = False
    content_encoding: str | None = None  # label the (unencoded) body with this Content-Encoding, e.g. "br"
    deflate: bool = False  # zlib-deflate the body with Content-Encoding: deflate whatever the client accepts
    throttle_bps: int = 0  # body sent at about this many bytes per second (0: as fast as possible)
    replace_after_reset: bytes | None = None  # with reset_after: from the reset on (replaced just before
    #                                           it is sent), the path serves these bytes (a new version), no faults
    read_status: int | None = None  # GETs other than a Range from byte 0 get this status (HEAD and
    #                                 pre-flight's first-bytes GET answer normally): fails reads only
    head_status: int | None = None  # answer every HEAD with this status (403: an S3 presigned GET URL)
    head_no_length: bool = False  # HEAD answered HTTP/1.0-style: no Content-Length, close-delimited
    # Each response comes from the next of N hosts behind a load balancer, with that host's ETag and
    # Last-Modified (Apache inode ETags, per-host mtimes); a huge N: a new ETag on every response.
    validator_hosts: int = 0
    # -- conditionals not honoured (issue 14) --
    ignore_conditionals: bool = False  # If-Range and If-Match ignored: a range of whatever version is there now
    range_total_unknown: bool = False  # 206 answers end their Content-Range in `/*` (length not given)
    reset_times: int | None = None  # with reset_after: only the first N bodies are cut, later ones sent whole
    # -- framing and numbers (issue 14) --
    chunked: bool = False  # body sent with Transfer-Encoding: chunked, no Content-Length (a streaming server)
    # (name, value) pairs sent in place of the server's own field of that name, or added: a hostile or
    # broken server's numbers (`("Content-Length", "1²")`). A replaced Content-Length closes the connection.
    header_values: tuple[tuple[str, str], ...] = ()


_BEHAVIOUR_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(Behaviour))
_SERVER_WIDE: Final = "*"  # behaviour/counter key for server-wide settings


@dataclass(frozen=True)
class _Resource:
    """Content for one path: in-memory bytes or a file on disk streamed in chunks."""

    data: bytes | None
    file: Path | None
    etag: str | None
    last_modified: float | None
    content_type: str

    def validators(self) -> tuple[int, str, float]:
        """Return (size, strong ETag, Last-Modified timestamp) as of now."""
        if self.data is not None:
            assert self.etag is not None
            assert self.last_modified is not None
            return len(self.data), self.etag, self.last_modified
        assert self.file is not None
        st = self.file.stat()  # stat per request so a rewritten file gets new validators
        etag = self.etag or f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        return st.st_size, etag, self.last_modified or st.st_mtime

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        """Yield bytes [start, end) in WRITE_SIZE pieces without loading a disk file whole."""
        if self.data is not None:
            view = memoryview(self.data)
            for offset in range(start, end, WRITE_SIZE):
                yield bytes(view[offset : min(offset + WRITE_SIZE, end)])
            return
        assert self.file is not None
        with self.file.open("rb") as fh:
            fh.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = fh.read(min(WRITE_SIZE, remaining))
                if not chunk:  # file shrank underneath us; stop short like a real server would
                    return
                remaining -= len(chunk)
                yield chunk


# --------------------------------------------------------------------------- HTTP helpers

_RANGE_RE: Final = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


class Unsatisfiable(NamedTuple):
    """Marker result of parse_range: the range lies outside the representation (416)."""


UNSATISFIABLE: Final = Unsatisfiable()


def parse_range(value: str | None, size: int) -> tuple[int, int] | Unsatisfiable | None:
    """Parse a single-range header into [start, end); None means ignore it (serve 200)."""
    match = _RANGE_RE.match(value or "")
    if match is None:  # absent, malformed or multi-range: RFC 9110 lets a server ignore it
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        return None  # syntactically invalid range: ignore it
    if start >= size:
        return UNSATISFIABLE
    return start, min(int(last) + 1, size) if last else size


def if_range_matches(value: str, etag: str, mtime: float) -> bool:
    """Return True when If-Range still names this representation (strong ETag or exact date)."""
    value = value.strip()
    if value.startswith("W/"):
        return False  # weak validators never match If-Range
    if value.startswith('"'):
        return value == etag
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return False
    return int(when.timestamp()) == int(mtime)


def if_match_ok(value: str | None, etag: str) -> bool:
    """Return True unless an If-Match header is present and names none of our (strong) ETags."""
    if value is None:
        return True
    tags = [t.strip() for t in value.split(",")]
    return "*" in tags or etag in tags


def _chunked(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`chunks` in HTTP/1.1 chunked transfer coding (RFC 9112 §7.1), ending with the last chunk."""
    for chunk in chunks:
        if chunk:
            yield b"%x\r\n%s\r\n" % (len(chunk), chunk)
    yield b"0\r\n\r\n"


def _gzip_stream(chunks: Iterator[bytes]) -> Iterator[bytes]:
    compressor = zlib.compressobj(wbits=31)  # 31 = gzip container
    for chunk in chunks:
        out = compressor.compress(chunk)
        if out:
            yield out
    yield compressor.flush()


# --------------------------------------------------------------------------- server


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], upstream: UpstreamServer) -> None:
        self.upstream = upstream
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a DNS lookup we do not need on loopback.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, _CLIENT_GONE) or self.upstream.stopping:
            return
        self.upstream._record_error(f"{type(exc).__name__}: {exc}")
        super().handle_error(request, client_address)


class UpstreamServer:
    """Threaded HTTP/1.1 file server on 127.0.0.1 with Range/ETag support and fault injection."""

    def __init__(
        self, files: Mapping[str, bytes | os.PathLike[str]] | None = None, *, host: str = "127.0.0.1"
    ) -> None:
        self._host = host
        self._lock = threading.Lock()
        self._resources: dict[str, _Resource] = {}
        self._behaviours: dict[str, dict[str, Any]] = {}
        self._failures: Counter[str] = Counter()
        self._requests: list[RequestRecord] = []
        self._arrivals: list[float] = []  # time.monotonic() of each logged request, same order
        self._bytes_sent: Counter[str] = Counter()
        self._turns: Counter[str] = Counter()  # requests per path, for validator_hosts
        self._errors: list[str] = []
        self._blocked_until: dict[str, float] = {}  # path -> time.monotonic() before which Retry-After holds
        self._redirect_counts: Counter[str] = Counter()
        self._reset_counts: Counter[str] = Counter()
        self._connections: set[socket.socket] = set()
        self._responding: set[socket.socket] = set()  # connections in the middle of answering a request
        self._accepted = 0
        self._idle = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        for path, content in (files or {}).items():
            if isinstance(content, bytes):
                self.add(path, content)
            elif isinstance(content, os.PathLike):
                self.add_file(path, content)
            else:
                raise TypeError(f"{path}: content must be bytes or a path, not {type(content).__name__}")

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> UpstreamServer:
        """Bind a free port and serve in a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        self._stop.clear()
        self._httpd = _HTTPServer((self._host, 0), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="upstream", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, wake stalled handlers, drop open connections and close the socket."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stop.set()
        httpd.shutdown()
        with self._lock:
            for conn in self._connections:
                # Wakes handler threads blocked reading the next keep-alive request.
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._idle.wait_for(lambda: not self._connections, timeout)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> UpstreamServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_port

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def url(self, path: str, *, encode: bool = True) -> str:
        """Return the URL for path, percent-encoding it (UTF-8, spaces...) unless encode=False."""
        path = _normalise(path)
        return self.base_url + (quote(path, safe="/") if encode else path)

    # ----------------------------------------------------------------- content

    def add(
        self,
        path: str,
        content: bytes,
        *,
        etag: str | None = None,
        last_modified: float | None = None,
        content_type: str = "application/octet-stream",
    ) -> None:
        """Serve in-memory bytes at path (replacing any previous content)."""
        tag = etag or '"' + hashlib.sha256(content).hexdigest()[:32] + '"'
        # Whole seconds: HTTP dates have no finer resolution, and If-Range compares them.
        modified = float(int(time.time())) if last_modified is None else last_modified
        with self._lock:
            self._resources[_normalise(path)] = _Resource(content, None, tag, modified, content_type)

    def add_file(
        self, path: str, file: str | os.PathLike[str], *, content_type: str = "application/octet-stream"
    ) -> None:
        """Serve a file on disk at path, streamed in WRITE_SIZE pieces (fine for huge sparse files)."""
        source = Path(file)
        if not source.is_file():
            raise FileNotFoundError(source)
        with self._lock:
            self._resources[_normalise(path)] = _Resource(None, source, None, None, content_type)

    def remove(self, path: str) -> None:
        """Stop serving path (later requests get 404)."""
        with self._lock:
            self._resources.pop(_normalise(path), None)

    def _resource(self, path: str) -> _Resource | None:
        with self._lock:
            return self._resources.get(path)

    # ----------------------------------------------------------------- behaviour

    def set_behaviour(self, path: str | None = None, /, **options: Any) -> None:
        """Merge options into the behaviour of path (or server-wide when path is None)."""
        unknown = set(options) - _BEHAVIOUR_FIELDS
        if unknown:
            known = sorted(_BEHAVIOUR_FIELDS)
            raise TypeError(f"unknown behaviour options {sorted(unknown)}; known: {known}")
        key = _SERVER_WIDE if path is None else _normalise(path)
        with self._lock:
            merged = {**self._behaviours.get(key, {}), **options}
            Behaviour(**merged)  # validate the combination eagerly
            self._behaviours[key] = merged
            if {"status", "fail_times"} & set(options):
                self._failures[key] = 0  # a new failure plan starts counting afresh
            if {"redirect_to", "redirect_after"} & set(options):
                self._redirect_counts[key] = 0  # redirect_after counts from now
            if {"reset_after", "reset_times"} & set(options):
                self._reset_counts[key] = 0  # reset_times counts from now

    def clear_behaviour(self, path: str | None = None) -> None:
        """Drop the behaviour set for path (or the server-wide one when path is None)."""
        key = _SERVER_WIDE if path is None else _normalise(path)
        with self._lock:
            self._behaviours.pop(key, None)
            self._failures.pop(key, None)

    def behaviour_for(self, path: str) -> Behaviour:
        """Effective behaviour: per-path options override server-wide ones."""
        with self._lock:
            return Behaviour(**{**self._behaviours.get(_SERVER_WIDE, {}), **self._behaviours.get(path, {})})

    def _should_fail(self, path: str, behaviour: Behaviour) -> bool:
        """Decide whether to force behaviour.status now, counting toward fail_times."""
        if behaviour.status is None:
            return False
        if behaviour.fail_times is None:
            return True
        with self._lock:
            # Count against whichever scope supplied the status setting.
            key = path if "status" in self._behaviours.get(path, {}) else _SERVER_WIDE
            if self._failures[key] >= behaviour.fail_times:
                return False
            self._failures[key] += 1
            return True

    def _enforced(self, path: str) -> float | None:
        """Seconds left of an enforced Retry-After for path, or None if none holds now."""
        with self._lock:
            left = self._blocked_until.get(path, 0.0) - time.monotonic()
        return left if left > 0 else None

    def _enforce(self, path: str, seconds: float) -> None:
        with self._lock:
            self._blocked_until[path] = time.monotonic() + seconds

    def _redirect_due(self, path: str, behaviour: Behaviour) -> bool:
        """Whether this request for path is redirected (after the first redirect_after ones)."""
        with self._lock:
            self._redirect_counts[path] += 1
            return self._redirect_counts[path] > behaviour.redirect_after

    def _reset_due(self, path: str, behaviour: Behaviour) -> bool:
        """Whether this body for path is cut (reset_after), counting toward reset_times."""
        if behaviour.reset_after is None:
            return False
        if behaviour.reset_times is None:
            return True
        with self._lock:
            self._reset_counts[path] += 1
            return self._reset_counts[path] <= behaviour.reset_times

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up immediately when the server stops."""
        if seconds > 0:
            self._stop.wait(seconds)

    # ----------------------------------------------------------------- log

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of every request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    def requests_since(self, moment: float) -> int:
        """How many requests arrived at or after `moment` (a time.monotonic() value)."""
        with self._lock:
            return sum(1 for arrival in self._arrivals if arrival >= moment)

    def requests_for(self, path: str, method: str | None = None) -> list[RequestRecord]:
        """Requests for path (optionally only one method)."""
        path = _normalise(path)
        return [r for r in self.requests if r.path == path and (method is None or r.method == method)]

    def ranges_for(self, path: str) -> list[str | None]:
        """Range headers of the GET requests for path, in order (None for full fetches)."""
        return [r.range for r in self.requests_for(path, "GET")]

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted since start (a kept-alive connection counts once)."""
        with self._lock:
            return self._accepted

    @property
    def bytes_sent(self) -> dict[str, int]:
        """Response body bytes written per path (what reached the socket, before any reset)."""
        with self._lock:
            return dict(self._bytes_sent)

    @property
    def errors(self) -> list[str]:
        """Unexpected server-side exceptions (client disconnects excluded); tests can assert empty."""
        with self._lock:
            return list(self._errors)

    def clear_log(self) -> None:
        """Forget logged requests, byte counters and errors."""
        with self._lock:
            self._requests.clear()
            self._arrivals.clear()
            self._bytes_sent.clear()
            self._errors.clear()

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)
            self._arrivals.append(time.monotonic())

    def _record_error(self, message: str) -> None:
        with self._lock:
            self._errors.append(message)

    def _next_host(self, path: str, hosts: int) -> int:
        """Which of `hosts` load-balanced hosts answers this request for path (round robin)."""
        with self._lock:
            turn = self._turns[path]
            self._turns[path] += 1
            return turn % hosts

    def _count_sent(self, path: str, n: int) -> None:
        with self._lock:
            self._bytes_sent[path] += n

    @property
    def responding(self) -> int:
        """Connections answering a request right now (an idle kept-alive connection is not one)."""
        with self._lock:
            return len(self._responding)

    def _answering(self, conn: socket.socket, active: bool) -> None:
        with self._lock:
            if active:
                self._responding.add(conn)
            else:
                self._responding.discard(conn)

    def _track(self, conn: socket.socket, active: bool) -> None:
        with self._lock:
            if active:
                if conn not in self._connections:
                    self._accepted += 1
                self._connections.add(conn)
            else:
                self._connections.discard(conn)
                self._idle.notify_all()


def _normalise(path: str) -> str:
    return path if path.startswith("/") else "/" + path


# --------------------------------------------------------------------------- handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    timeout = IDLE_TIMEOUT_S
    disable_nagle_algorithm = True  # small responses must not wait 40 ms for delayed ACKs
    server_version = "ZipStreamTestUpstream/1.0"
    _replaced: frozenset[str] = frozenset()  # lower-cased names behaviour.header_values replaces

    @property
    def upstream(self) -> UpstreamServer:
        return cast(_HTTPServer, self.server).upstream

    def setup(self) -> None:
        super().setup()
        self.upstream._track(self.connection, True)

    def finish(self) -> None:
        try:
            with contextlib.suppress(*_CLIENT_GONE, ValueError):
                super().finish()
        finally:
            self.upstream._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging; tests read server.requests instead."""

    def do_GET(self) -> None:
        self.upstream._answering(self.connection, True)
        try:
            self._serve(head=False)
        finally:
            self.upstream._answering(self.connection, False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    # ----------------------------------------------------------------- dispatch

    def _serve(self, *, head: bool) -> None:
        up = self.upstream
        path, _, query = self.path.partition("?")
        path = unquote(path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        up._record(RequestRecord(self.command, path, headers, headers.get("range")))
        behaviour = up.behaviour_for(path)
        up._sleep(behaviour.latency)
        if behaviour.silent:
            up._stop.wait()  # accepted and read, never answered: only a client-side deadline ends it
            self.close_connection = True
            return None

        signed = re.search(r"(?:^|&)expires=(\d+(?:\.\d+)?)", query)
        if signed is not None and float(signed.group(1)) < time.time():
            return self._send_simple(HTTPStatus.FORBIDDEN, head)  # a signed URL that has expired
        if behaviour.redirect_to is not None and up._redirect_due(path, behaviour):
            location = behaviour.redirect_to
            if behaviour.redirect_expires is not None:
                expires = f"expires={time.time() + behaviour.redirect_expires:.3f}"
                location += ("&" if "?" in location else "?") + expires
            if behaviour.redirect_utf8:
                location = location.encode("utf-8").decode("latin-1")  # send_header writes latin-1
            return self._send_simple(HTTPStatus.FOUND, head, {"Location": location})
        if head and behaviour.no_head:
            return self._send_simple(HTTPStatus.METHOD_NOT_ALLOWED, head, {"Allow": "GET"})
        if head and behaviour.head_status is not None:
            return self._send_simple(behaviour.head_status, head)
        if behaviour.status is not None and behaviour.retry_after_enforced:
            left = up._enforced(path)
            if left is not None:
                return self._send_simple(behaviour.status, head, {"Retry-After": str(math.ceil(left))})
        if (behaviour.read_status is not None and not head
                and not re.match(r"bytes=0-", headers.get("range", "").replace(" ", ""))):
            return self._send_simple(behaviour.read_status, head)
        if behaviour.status is not None and up._should_fail(path, behaviour):
            extra = {} if behaviour.retry_after is None else {"Retry-After": str(behaviour.retry_after)}
            if isinstance(behaviour.retry_after, int) and behaviour.retry_after_enforced:
                up._enforce(path, behaviour.retry_after)
            return self._send_simple(behaviour.status, head, extra)
        resource = up._resource(path)
        if resource is None:
            return self._send_simple(HTTPStatus.NOT_FOUND, head)
        self._serve_resource(path, resource, behaviour, headers, head=head)

    def _serve_resource(
        self, path: str, resource: _Resource, behaviour: Behaviour, headers: dict[str, str], *, head: bool
    ) -> None:
        size, etag, mtime = resource.validators()
        if behaviour.validator_hosts:
            host = self.upstream._next_host(path, behaviour.validator_hosts)
            etag, mtime = f'{etag[:-1]}-h{host}"', mtime + host
        if not behaviour.ignore_conditionals and not if_match_ok(headers.get("if-match"), etag):
            return self._send_simple(HTTPStatus.PRECONDITION_FAILED, head, {"ETag": etag})

        span = None
        if not behaviour.no_range:
            span = parse_range(headers.get("range"), size)
            if_range = headers.get("if-range")
            if (span is not None and if_range is not None and not behaviour.ignore_conditionals
                    and not if_range_matches(if_range, etag, mtime)):
                span = None  # representation changed: send it whole
        if isinstance(span, Unsatisfiable):
            return self._send_simple(
                HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, head, {"Content-Range": f"bytes */{size}"}
            )
        if span is not None and span[0] > 0 and behaviour.range_status is not None:
            return self._send_simple(behaviour.range_status, head)
        if span is not None and behaviour.range_early:
            span = (max(0, span[0] - behaviour.range_early), span[1])
        start, end = span or (0, size)

        body: Iterator[bytes] = resource.chunks(start, end)
        length: int | None = end - start
        if behaviour.gzip:
            body, length = self._gzipped(resource, start, end)
        elif behaviour.deflate:
            body, length = iter([zlib.compress(b"".join(resource.chunks(start, end)))]), None

        if head and behaviour.head_no_length:
            # An HTTP/1.0 answer (this connection then closes): no length, the close ends the body.
            self.protocol_version = "HTTP/1.0"
        self._replaced = frozenset(name.lower() for name, _value in behaviour.header_values)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if span else HTTPStatus.OK)
        self.send_header("Content-Type", resource.content_type)
        omitted = {*behaviour.no_validators, *(behaviour.omit_on_206 if span else ())}
        if "ETag" not in omitted:
            self.send_header("ETag", etag)
        if "Last-Modified" not in omitted:
            self.send_header("Last-Modified", email.utils.formatdate(mtime, usegmt=True))
        self.send_header("Accept-Ranges", "none" if behaviour.no_range else "bytes")
        if span:
            total = "*" if behaviour.range_total_unknown else str(size)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{total}")
        if behaviour.gzip or behaviour.deflate:
            self.send_header("Content-Encoding", "gzip" if behaviour.gzip else "deflate")
        elif behaviour.content_encoding is not None:
            self.send_header("Content-Encoding", behaviour.content_encoding)
        no_length = behaviour.no_length or (head and behaviour.head_no_length)
        if behaviour.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            if not head:
                body = _chunked(body)
        elif length is not None and not no_length:
            self.send_header("Content-Length", str(max(0, length + behaviour.wrong_length)))
        if (length is None or no_length or behaviour.wrong_length) and not behaviour.chunked:
            # Without a correct length the only framing left is closing the connection.
            self.send_header("Connection", "close")
        self._end_headers(behaviour)
        if head:
            return
        try:
            self._send_body(path, body, behaviour)
        finally:
            close_iterator(body)  # generators: release an open disk file now

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() not in self._replaced:  # else behaviour.header_values sends its own
            super().send_header(keyword, value)

    def _end_headers(self, behaviour: Behaviour) -> None:
        """End the headers, with behaviour.header_values in place of the fields of the same names."""
        for name, value in behaviour.header_values:
            super().send_header(name, value)
        if self._replaced & {"content-length", "transfer-encoding"}:
            super().send_header("Connection", "close")  # the framing may be a lie: never reuse it
            self.close_connection = True
        self._replaced = frozenset()
        self.end_headers()

    def _gzipped(self, resource: _Resource, start: int, end: int) -> tuple[Iterator[bytes], int | None]:
        """Gzip the selected bytes: whole in memory for small content, streamed (no length) from disk."""
        if resource.data is not None:
            compressed = gzip_module.compress(resource.data[start:end], mtime=0)
            return iter([compressed]), len(compressed)
        return _gzip_stream(resource.chunks(start, end)), None

    def _send_simple(self, status: int, head: bool, extra: Mapping[str, str] | None = None) -> None:
        """Send a short text/plain response such as 404 or a forced 503."""
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:  # unusual codes (e.g. 599) are allowed when forcing a status
            phrase = ""
        data = f"{int(status)} {phrase}\n".encode()
        self.send_response(status)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    # ----------------------------------------------------------------- body

    def _send_body(self, path: str, body: Iterator[bytes], behaviour: Behaviour) -> None:
        """Write body chunks, injecting a stall or a reset at the configured byte offsets."""
        up = self.upstream
        sent = 0
        stalled = False
        reset_after = behaviour.reset_after if up._reset_due(path, behaviour) else None
        for chunk in body:
            while chunk:
                limit = len(chunk)
                if behaviour.trickle_seconds:
                    limit = 1  # an "endless" body: each read gets a byte, so no read timeout fires
                    up._sleep(behaviour.trickle_seconds)
                    if up.stopping:
                        self.close_connection = True
                        return None
                if behaviour.throttle_bps:
                    limit = min(limit, max(1, behaviour.throttle_bps // 50))
                if reset_after is not None:
                    limit = min(limit, reset_after - sent)
                if behaviour.stall_after is not None and not stalled:
                    limit = min(limit, max(0, behaviour.stall_after - sent))
                piece, chunk = chunk[:limit], chunk[limit:]
                if piece:
                    self.wfile.write(piece)
                    sent += len(piece)
                    up._count_sent(path, len(piece))
                    if behaviour.throttle_bps:
                        up._sleep(len(piece) / behaviour.throttle_bps)
                        if up.stopping:
                            self.close_connection = True
                            return None
                if reset_after is not None and sent >= reset_after:
                    if behaviour.replace_after_reset is not None:
                        # Before the reset: the client's next request can't arrive before the new version.
                        up.clear_behaviour(path)
                        up.add(path, behaviour.replace_after_reset)
                    self._reset()
                    return None
                if behaviour.stall_after is not None and not stalled and sent >= behaviour.stall_after:
                    stalled = True
                    up._sleep(behaviour.stall_seconds)
                    if up.stopping:
                        self.close_connection = True
                        return None
        if reset_after is not None:
            self._reset()  # body shorter than reset_after: still end with a reset, as asked
        return None

    def _reset(self) -> None:
        """Abort the connection with a TCP RST after the bytes written so far reach the client."""
        conn = self.connection
        self._wait_until_acked(conn)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.rfile.close()  # makefile() holds a reference; without this close() keeps the fd open
        conn.close()

    @staticmethod
    def _wait_until_acked(conn: socket.socket, timeout: float = 2.0) -> None:
        """Wait until the kernel send queue drains; RST would otherwise discard unsent bytes."""
        try:
            import fcntl
            import termios
        except ImportError:  # not Linux: best effort
            return
        deadline = time.monotonic() + timeout
        buf = bytearray(4)
        while time.monotonic() < deadline:
            try:
                fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ, buf)
            except OSError:
                return
            if struct.unpack("i", buf)[0] == 0:
                return
            time.sleep(0.001)


# --------------------------------------------------------------------------- pytest fixtures


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    """Fixture: a started, empty UpstreamServer; add content with .add()/.add_file()."""
    with UpstreamServer() as server:
        yield server


@pytest.fixture
def upstream_factory() -> Iterator[Callable[..., UpstreamServer]]:
    """Fixture: make(files=None, **kwargs) starts extra servers, all stopped at teardown."""
    servers: list[UpstreamServer] = []

    def make(files: Mapping[str, bytes | os.PathLike[str]] | None = None, **kwargs: Any) -> UpstreamServer:
        server = UpstreamServer(files, **kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
