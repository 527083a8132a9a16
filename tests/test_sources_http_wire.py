"""Pre-flight's own HTTP/1.1 exchange (sources/http_wire.py): the bytes it sends are the ones requests
sends, the answers it reads are read as http.client reads them (or refused where that is lenient
about framing), and its connections are the pool's, kept alive, replaced and woken as requests' are.

Against real sockets: UpstreamServer for ordinary answers, tests/support/scripted.py where a server
must answer in ways no ordinary server will.
"""

from __future__ import annotations

import http.client
import io
import random
import threading
from collections.abc import Callable, Mapping

import pytest
from urllib3._collections import HTTPHeaderDict
from urllib3.connection import _normalize_header_values

from zipstream.config import Config
from zipstream.deadline import Deadline
from zipstream.errors import ClientGone, SourceError
from zipstream.numbers import NotANumber, http_date
from zipstream.sources import http as http_source
from zipstream.sources import http_wire
from zipstream.sources.held import HoldBudget, HoldScope
from zipstream.sources.http import HttpSource
from zipstream.sources.http_transport import NO_DEADLINE, content_length
from zipstream.sources.http_wire import Target, Watch, WireError, WireResponse, _parse_head, _parse_head_lines
from zipstream.sources.netguard import FinalResponse

from .support.scripted import CLOSE, SILENT, ScriptedServer, answer
from .support.upstream import UpstreamServer

# A 206 that says all pre-flight asks (size, ETag, Last-Modified): no HEAD follows it.
VALIDATORS = ("ETag: \"v1\"", "Last-Modified: Tue, 14 Nov 2023 22:13:20 GMT")
SMALL = answer("206 Partial Content", (*VALIDATORS, "Content-Range: bytes 0-4/5"), b"hello")


def _source(make_config: Callable[..., Config]) -> HttpSource:
    return HttpSource.from_config(make_config())


def _head_fields(head: bytes) -> tuple[bytes, list[bytes]]:
    request_line, *fields = head.split(b"\r\n")
    return request_line, fields


# -- what is sent --------------------------------------------------------------------------------------

PATHS = (
    "/a.bin", "/dir/a.bin?x=1&y=two", "", "/a b.bin", "/%41%2f%7e?q=%20", "/dir/../a.bin", "/./a", "/a/.",
    "/\u00fc.bin", "/a?q=[1]", "/a#fragment", "/a?", "/~user/a;b=c", "/a%zz", "/A/B?C=D&e=%E2%82%AC", "/a\"b<c>",
    "/.hidden", "/a//b", "/a?b?c", "/a%", "/a@b:c!$&'()*+,=-._~",
)


@pytest.mark.parametrize("path", PATHS)
def test_the_request_is_the_one_requests_sends(path: str, make_config: Callable[..., Config]) -> None:
    """Same request line and header fields, in the same order, byte for byte, as requests' adapter
    (which pre-flight used before) sends for the same URL; and the same URL reported."""
    with ScriptedServer(lambda _connection, _index: answer(body=b"x")) as server:
        source = _source(make_config)
        src = server.url(path)
        old = source.transport.send("GET", src, {"Range": "bytes=0-0"})
        old_url = old.url
        old.close()
        new = source.transport.probe("GET", src, src, {"Range": "bytes=0-0"}, NO_DEADLINE, Watch())
        new.close()
        (_, by_requests), (_, by_wire) = server.requests
        assert _head_fields(by_wire) == _head_fields(by_requests)
        assert new.url == old_url


_PLAIN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/"


def test_the_fast_reading_of_a_plain_url_is_requests_reading() -> None:
    """Target's shortcut for URLs already in requests' form gives what requests' own code gives."""
    chooser = random.Random(16)
    hosts = ("example.com", "a-b.example", "127.0.0.1", "[::1]", "[2001:db8::1]", "x.y.z")
    for _ in range(3000):
        scheme = chooser.choice(("http", "https"))
        port = chooser.choice(("", ":80", ":443", ":8080", ":65535", ":1"))
        path = "/" + "".join(chooser.choice(_PLAIN) for _ in range(chooser.randrange(0, 30)))
        query = "".join(chooser.choice(_PLAIN + "?") for _ in range(chooser.randrange(0, 20)))
        query = chooser.choice(("", "?" + query))
        url = f"{scheme}://{chooser.choice(hosts)}{port}{path}{query}"
        fast, slow = Target(url), Target(url, fast=False)
        assert (fast.scheme, fast.host, fast.port, fast.path, fast.host_field, fast.url) == (
            slow.scheme, slow.host, slow.port, slow.path, slow.host_field, slow.url), url


def test_a_url_no_request_can_be_made_of_fails_at_once(make_config: Callable[..., Config]) -> None:
    """A port past 65535 passes check() (urlsplit reads the host) but no request can go out: one
    SourceError naming the src, not four attempts with back-off in between."""
    with pytest.raises(SourceError, match=r"http://127\.0\.0\.1:99999/a\.bin: invalid URL"):
        _source(make_config).stat("http://127.0.0.1:99999/a.bin", Deadline(0.5))


def test_a_header_value_that_would_split_the_request_is_refused(make_config: Callable[..., Config]) -> None:
    with ScriptedServer(lambda _connection, _index: answer()) as server:
        source = _source(make_config)
        with pytest.raises(ValueError, match="invalid value"):
            source.transport.probe("GET", server.url("/a"), server.url("/a"), {"Range": "bytes=0-0\r\nX: y"},
                                   NO_DEADLINE, Watch())
        assert server.requests == []


# -- what is read --------------------------------------------------------------------------------------

def _stat(make_config: Callable[..., Config], reply: bytes, deadline: Deadline | None = None) -> object:
    with ScriptedServer(lambda _connection, _index: reply) as server:
        [info] = _source(make_config).stat(server.url("/a.bin"), deadline)
        return info


def test_answers_read_as_http_client_reads_them(make_config: Callable[..., Config]) -> None:
    folded = answer("206 Partial Content", (*VALIDATORS, "Content-Range: bytes", "\t 0-4/5"), b"hello")
    assert _stat(make_config, folded).size == 5  # type: ignore[attr-defined]  # obs-fold: joined with SP
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + SMALL
    assert _stat(make_config, interim).etag == '"v1"'  # type: ignore[attr-defined]
    bare = SMALL.replace(b"\r\n", b"\n", SMALL.index(b"\r\n\r\n") // 2)  # some lines end in LF only
    assert _stat(make_config, bare).size == 5  # type: ignore[attr-defined]
    no_reason = SMALL.replace(b"206 Partial Content", b"206")
    assert _stat(make_config, no_reason).size == 5  # type: ignore[attr-defined]
    twice = answer("200 OK", (*VALIDATORS, "Content-Length: 5"), b"hello", length=False)
    twice = twice.replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\n", 1)
    assert _stat(make_config, twice).size == 5  # type: ignore[attr-defined]  # repeats joined: "5, 5"
    with pytest.raises(SourceError, match="invalid Content-Length"):
        _stat(make_config, twice.replace(b"Content-Length: 5\r\n", b"Content-Length: 4\r\n", 1))


def test_the_quick_reading_of_a_head_is_the_line_by_line_one() -> None:
    """Heads as servers write them are read by regular expressions, the rest line by line: the same
    fields (or the same refusal) either way, for heads made of every piece that matters to either."""
    chooser = random.Random(9112)
    pieces = [b"a", b"B", b"-", b":", b" ", b"\t", b"\r\n", b"\n", b"\xe9", b"x", b"1", b"\r", b"(", b"  "]
    for _ in range(20_000):
        head = b"HTTP/1.1 200 OK\r\n" + b"".join(chooser.choice(pieces) for _ in range(chooser.randrange(0, 30)))
        results = []
        for parse in (_parse_head, _parse_head_lines):
            try:
                results.append(parse(head))
            except WireError as error:
                results.append(("refused", error.kind))
        assert results[0] == results[1], head


@pytest.mark.parametrize(("reply", "kind"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello", "HeaderParsingError"),  # space before ':'
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "HeaderParsingError"),
    # A fold after a bare-LF line: urllib3 keeps that LF in the value, a member would read another ETag.
    (b"HTTP/1.1 200 OK\r\nETag: \"v1\"\n x\r\n\r\n", "HeaderParsingError"),
    (b"ICY 200 OK\r\n\r\n", "BadStatusLine"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "BadStatusLine"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", "HTTPException"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", "LineTooLong"),
])
def test_a_malformed_answer_is_a_failed_connection(reply: bytes, kind: str,
                                                   make_config: Callable[..., Config]) -> None:
    """What http.client would refuse, or read two ways (whitespace before the colon smuggles a framing
    field past one reader and not another: RFC 9112 §5.1), fails like a broken connection, retried."""
    with ScriptedServer(lambda _connection, _index: reply) as server, \
            pytest.raises(SourceError, match=f"connection failed \\({kind}\\), 4 attempts"):
        _source(make_config).stat(server.url("/a.bin"))


# -- connections -----------------------------------------------------------------------------------------

def test_a_kept_alive_connection_dropped_by_the_server_is_replaced_at_once(
        make_config: Callable[..., Config]) -> None:
    """A server may close a kept-alive connection just as the next request goes out on it (its idle
    timeout, its request limit). That request is sent again on a new connection at once: GET is
    idempotent, and waiting for a back-off (0.2 s) that doesn't fit the deadline would fail the source."""

    def script(connection: int, index: int) -> bytes:
        return CLOSE if (connection, index) == (0, 1) else SMALL

    with ScriptedServer(script) as server:
        source = _source(make_config)
        source.stat(server.url("/a.bin"))
        [info] = source.stat(server.url("/b.bin"), Deadline(0.4))
        assert info.size == 5
        assert [connection for connection, _head in server.requests] == [0, 0, 1]


def test_a_connection_the_answer_closes_is_not_reused(make_config: Callable[..., Config]) -> None:
    closing = SMALL.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
    http10 = SMALL.replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    kept10 = http10.replace(b"\r\n\r\n", b"\r\nConnection: keep-alive\r\n\r\n", 1)
    switched = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
    for reply, reused in ((closing, False), (http10, False), (kept10, True), (SMALL, True), (switched, False)):
        with ScriptedServer(lambda _connection, _index, reply=reply: reply) as server:  # type: ignore[misc]
            source = _source(make_config)
            for path in ("/a.bin", "/b.bin"):
                try:
                    source.stat(server.url(path))
                except SourceError:  # a 101 is no answer to pre-flight's GET
                    assert reply is switched
            assert server.connections == (1 if reused else len(server.requests)), reply[:40]


def test_pre_flight_and_the_members_share_connections(upstream: UpstreamServer,
                                                      make_config: Callable[..., Config]) -> None:
    """Pre-flight's exchanges use the pool requests' adapter reads members from: a member's GET goes
    out on the connection its pre-flight left open (one connection for the lot, here)."""
    upstream.add("/a.bin", b"a" * 100_000)
    with ScriptedServer(lambda _connection, _index: SMALL) as server:
        source = _source(make_config)
        [info] = source.stat(server.url("/a.bin"))
        whole = answer("200 OK", VALIDATORS, b"hello")
        server.script = lambda _connection, _index: whole
        assert b"".join(source.open(info)) == b"hello"
        assert server.connections == 1


def test_a_deadline_that_passes_later_leaves_pooled_connections_alone(make_config: Callable[..., Config]) -> None:
    """Each stat's deadline can shut only the socket that stat is waiting on: once its connection is
    back in the pool, another download's request may be using it."""
    with ScriptedServer(lambda _connection, _index: SMALL) as server:
        source = _source(make_config)
        first = Deadline(30)
        source.stat(server.url("/a.bin"), first)
        first.expire()  # pre-flight ends, its deadline runs its abort hooks
        [info] = source.stat(server.url("/b.bin"))
        assert info.size == 5
        assert server.connections == 1


def test_a_deadline_wakes_a_request_waiting_for_its_answer(make_config: Callable[..., Config]) -> None:
    """The client leaving (or pre-flight's time running out) shuts the socket a request waits on."""
    with ScriptedServer(lambda _connection, _index: SILENT) as server:
        source = _source(make_config)
        deadline = Deadline(30)
        threading.Timer(0.2, deadline.cancel).start()
        with pytest.raises(ClientGone):
            source.stat(server.url("/a.bin"), deadline)  # HTTP_TIMEOUT is 30 s: only the hook ends it
        assert len(server.requests) == 1  # and nothing is sent after it


def test_a_body_shorter_than_announced_is_not_held(make_config: Callable[..., Config]) -> None:
    """The first bytes are held only when they all came: else the member reads the file itself."""
    cut = answer("206 Partial Content", (*VALIDATORS, "Content-Range: bytes 0-4/5", "Content-Length: 5"),
                 b"hel", length=False)
    with ScriptedServer(lambda _connection, index: cut if index == 0 else CLOSE) as server:
        source = HttpSource.from_config(make_config())
        source.budget = HoldBudget(1 << 20)
        with HoldScope().applying():
            threading.Timer(0.3, server.stop).start()  # the server gives up on the rest
            [info] = source.stat(server.url("/a.bin"))
        assert info.size == 5 and info.head is None
        assert source.budget.used == 0


def test_release_reads_a_small_body_out_and_keeps_the_connection(make_config: Callable[..., Config]) -> None:
    with ScriptedServer(lambda _connection, _index: answer(body=b"x" * 1000)) as server:
        source = _source(make_config)
        for _ in range(3):
            response = source.transport.probe("GET", server.url("/a"), server.url("/a"), {}, NO_DEADLINE, Watch())
            assert isinstance(response, WireResponse)
            response.release()
        assert server.connections == 1


def test_header_fields_are_found_in_any_case(make_config: Callable[..., Config]) -> None:
    with ScriptedServer(lambda _connection, _index: SMALL) as server:
        source = _source(make_config)
        response = source.transport.probe("GET", server.url("/a"), server.url("/a"), {}, NO_DEADLINE, Watch())
        assert response.headers["CONTENT-RANGE"] == response.headers.get("content-range") == "bytes 0-4/5"
        assert "Etag" in response.headers and "X-Missing" not in response.headers
        response.close()


# -- hostile answers (issue 16's attack pass) ------------------------------------------------------------

@pytest.mark.parametrize("status", ["000 Zero", "099 Low"])
def test_a_status_below_100_is_no_answer(status: str, make_config: Callable[..., Config]) -> None:
    """http.client refuses a status under 100 (BadStatusLine); read as a final answer it would pass for
    a 200 and its body for the file."""
    with ScriptedServer(lambda _connection, _index: SMALL.replace(b"206 Partial Content", status.encode())) \
            as server, pytest.raises(SourceError, match="connection failed \\(BadStatusLine\\)"):
        _source(make_config).stat(server.url("/a.bin"))


@pytest.mark.parametrize("status", ["300 Multiple Choices", "302 Found", "203 Non-Authoritative Information",
                                    "204 No Content", "304 Not Modified"])
def test_pre_flight_takes_no_answer_but_200_or_206_for_the_file(status: str,
                                                                 make_config: Callable[..., Config]) -> None:
    """A final answer other than 200/206 (a 3xx with no Location among them) is not the file: a member's
    GET refuses it (`HttpSource._read`), so pre-flight does too, before the first byte (a 502), rather
    than holding a small body and zipping it as the file's bytes."""
    body = b"" if status.startswith(("204", "304")) else b"hello"
    with ScriptedServer(lambda _connection, _index: answer(status, VALIDATORS, body)) as server:
        source = _source(make_config)
        source.budget = HoldBudget(1 << 20)
        with HoldScope().applying(), pytest.raises(SourceError, match=f"answered HTTP {status[:3]} to a GET"):
            source.stat(server.url("/a.bin"))
        assert source.budget.used == 0


def test_a_head_that_trickles_in_is_searched_once_over(monkeypatch: pytest.MonkeyPatch,
                                                       make_config: Callable[..., Config]) -> None:
    """A hostile upstream sending its head a few bytes at a time (up to MAX_HEAD, 1 MiB) must not make the
    worker search the whole buffer again on every read: 1 MiB in reads of 100 bytes took ~30 s of CPU.
    Counted as bytes scanned for the head's end, not as time."""
    scanned = []
    real = http_wire._HEAD_END

    class Counting:
        def search(self, buffer: bytes, pos: int = 0) -> object:
            scanned.append(len(buffer) - pos)
            return real.search(buffer, pos)

    monkeypatch.setattr(http_wire, "_HEAD_END", Counting())

    class Trickle:
        def __init__(self, data: bytes) -> None:
            self.data, self.at = data, 0

        def recv(self, size: int) -> bytes:
            chunk = self.data[self.at:self.at + min(size, 100)]
            self.at += len(chunk)
            return chunk

    head = SMALL[:SMALL.index(b"\r\n\r\n")] + b"\r\nX-Pad: " + b"p" * 60_000 + b"\r\n\r\nhello"
    rest, _keep_alive, status, fields = http_wire._read_answer(Trickle(head), False, NO_DEADLINE)
    assert (status, rest, fields["content-range"]) == (206, b"hello", "bytes 0-4/5")
    assert sum(scanned) < 4 * len(head)


def test_a_bare_cr_in_a_header_line_is_refused(make_config: Callable[..., Config]) -> None:
    """http.client (a member's GET) ends a header line at a bare CR, this reader did not: pre-flight read
    ETag "v<CR>1" that a member's If-Range can't even send (requests refuses it), so the download was cut
    after its first byte. Refused at pre-flight instead (RFC 9112 §2.2 allows either)."""
    for bare in (b'ETag: "v\r1"', b'ETag: "v1"\r\r\nX-After: 1'):  # http.client: a blank line, the head's end
        reply = SMALL.replace(b'ETag: "v1"', bare)
        with ScriptedServer(lambda _connection, _index, reply=reply: reply) as server, \
                pytest.raises(SourceError, match="connection failed \\(HeaderParsingError\\)"):  # type: ignore[misc]
            _source(make_config).stat(server.url("/a.bin"))


@pytest.mark.parametrize(("fields", "etag"), [(('ETag:"v1"  ', VALIDATORS[1]), '"v1"'),
                                              (('ETag: "v1" \t', VALIDATORS[1]), '"v1"'),
                                              (("ETag:  ",), ""),  # empty, and nothing else vouches
                                              (('ETag: "v1"\r\n x', VALIDATORS[1]), '"v1" x')])  # folded
def test_an_etag_with_whitespace_after_it_is_the_same_version(fields: tuple[str, ...], etag: str,
                                                               make_config: Callable[..., Config]) -> None:
    """Pre-flight's reader drops the whitespace after a field's value (RFC 9110 §5.5), http.client keeps
    it: a server writing `ETag: "v1" ` had every member refused as another version (SourceChanged)."""
    body = bytes(range(256)) * 8
    whole = answer("200 OK", fields, body)
    with ScriptedServer(lambda _connection, _index: whole) as server:
        source = _source(make_config)
        [info] = source.stat(server.url("/a.bin"))
        assert info.etag == etag
        assert b"".join(source.open(info)) == body


@pytest.mark.parametrize("reply", [b"HTTP/1.1 206 Partial Content\r\nETag: \"v1", b"HTTP/1.1 206 Part", b"HTTP/1.1 2",
                                   SMALL.replace(b"\r\n", b"\r")])
def test_a_head_cut_by_the_server_closing_is_a_failed_connection(reply: bytes,
                                                                 make_config: Callable[..., Config]) -> None:
    with ScriptedServer(lambda _connection, _index: reply + CLOSE) as server, \
            pytest.raises(SourceError, match="connection failed \\(RemoteDisconnected\\), 4 attempts"):
        _source(make_config).stat(server.url("/a.bin"))


@pytest.mark.parametrize("late", [False, True])
def test_bytes_after_an_answer_never_become_the_next_answer(late: bool, make_config: Callable[..., Config]) -> None:
    """A server sending more than its answer stated (with it, or a moment later on the idle pooled
    connection: a response desync) must not have those bytes read as the answer to the next request:
    the connection is closed, or found unusable at checkout, and the next request gets its own."""
    forged = answer("206 Partial Content", ('ETag: "forged"', "Content-Range: bytes 0-4/5"), b"EVIL!")
    sent = threading.Event()

    def script(connection: int, index: int) -> bytes:
        if (connection, index) != (0, 0):
            return SMALL
        if not late:
            return SMALL + forged
        def later() -> None:
            with server._lock:
                conn = server._open[0]
            conn.sendall(forged)
            sent.set()
        threading.Timer(0.1, later).start()
        return SMALL

    with ScriptedServer(script) as server:
        source = _source(make_config)
        source.stat(server.url("/a.bin"))
        assert sent.wait(5) if late else True
        [info] = source.stat(server.url("/b.bin"))
        assert info.etag == '"v1"'
        assert server.connections == 2


@pytest.mark.parametrize("interim", [b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
                                     b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n"
                                     b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n"])
def test_interim_answers_are_skipped_by_members_as_by_pre_flight(interim: bytes,
                                                                 make_config: Callable[..., Config]) -> None:
    """Pre-flight skips every 1xx before the answer; a member's GET (http.client) skipped only a 100 and
    took a 103 Early Hints for the answer: pre-flight passed, then the download was cut ("HTTP 103")."""
    body = bytes(range(256)) * 8
    whole = interim + answer("200 OK", VALIDATORS, body)
    with ScriptedServer(lambda _connection, _index: whole) as server:
        source = _source(make_config)
        [info] = source.stat(server.url("/a.bin"))
        assert info.size == len(body)
        assert b"".join(source.open(info)) == body
        assert b"".join(source.open(info, 1000)) == body[1000:]


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/2", b"HTTP/x", b"HTTP/"])
def test_an_answer_in_another_version_than_http_1_is_refused(version: bytes,
                                                             make_config: Callable[..., Config]) -> None:
    """A member's GET (http.client) refuses an `HTTP/2.0 200` status line on an HTTP/1.1 connection
    (UnknownProtocol); pre-flight took it, and the download was cut at that member instead of a 502."""
    with ScriptedServer(lambda _connection, _index: SMALL.replace(b"HTTP/1.1", version, 1)) as server, \
            pytest.raises(SourceError, match="connection failed \\(UnknownProtocol\\)"):
        _source(make_config).stat(server.url("/a.bin"))


class _Replay:
    """A socket that replays `data`: for http_wire's reads (recv) and http.client's (makefile)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def recv(self, size: int) -> bytes:
        chunk = self.data[self.at:self.at + size]
        self.at += len(chunk)
        return chunk

    def makefile(self, _mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def _what_pre_flight_reads(data: bytes) -> tuple[object, ...] | None:
    try:
        _rest, _keep_alive, status, fields = http_wire._read_answer(_Replay(data), False, NO_DEADLINE)
    except WireError:
        return None  # refused: a 502 before the first byte, whatever a member's GET would read
    return _meaning(status, fields)


def _what_a_member_reads(data: bytes) -> tuple[object, ...] | str:
    response = FinalResponse(_Replay(data), method="GET")  # type: ignore[arg-type]
    try:
        response.begin()
    except http.client.HTTPException as error:
        return type(error).__name__
    # The fields as urllib3 gives them to requests (urllib3.connection.HTTPConnection.getresponse).
    return _meaning(response.status, HTTPHeaderDict(_normalize_header_values(response.msg)))


def _meaning(status: int, fields: Mapping[str, str]) -> tuple[object, ...]:
    """What the HTTP source reads of an answer: status, ETag (as compared), date, length, range, framing."""

    class Read:
        headers = fields

    try:
        length: object = content_length(Read())  # type: ignore[arg-type]
    except NotANumber:
        length = "invalid"
    return (status, http_source._etag(Read()), http_date(fields.get("Last-Modified")), length,  # type: ignore[arg-type]
            (fields.get("Content-Range") or "").strip(" \t") or None, bool(fields.get("Transfer-Encoding")),
            (fields.get("Content-Encoding") or "").strip().lower())


def test_what_pre_flight_reads_a_member_reads_the_same() -> None:
    """Pre-flight's answers are read by http_wire, a member's by http.client + urllib3. Wherever pre-flight
    takes an answer, both must read the same status, validators, length, range and framing from it:
    else pre-flight passes and the download is cut at that member ("another version", "invalid
    Content-Length"). Found this way: whitespace after an ETag, a bare CR, folds after a bare LF, 1xx."""
    chooser = random.Random(9110)
    pieces = [b"ETag", b"etag", b"Content-Length", b"Content-Range", b"Last-Modified", b"Transfer-Encoding", b"X",
              b":", b": ", b" ", b"\t", b"\r\n", b"\n", b"\r", b'"v1"', b"5", b"bytes 0-4/5", b",", b"\x00", b"\xe9",
              b"chunked", b"Tue, 14 Nov 2023 22:13:20 GMT", b"gzip", b"\r\n ", b"\r\n\t",
              b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\n\r\n"]
    for _ in range(30_000):
        middle = b"".join(chooser.choice(pieces) for _ in range(chooser.randrange(1, 14)))
        data = b'HTTP/1.1 200 OK\r\nETag: "v0"\r\n' + middle + b"\r\n\r\n"
        read = _what_pre_flight_reads(data)
        if read is not None:
            assert read == _what_a_member_reads(data), data
