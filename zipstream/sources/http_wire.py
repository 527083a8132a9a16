"""Pre-flight's HTTP/1.1 exchange, written for its one kind of request, on urllib3's connection pools.

Pre-flight asks every file of a bundle one body-less GET (or HEAD) and reads at most a small body whose
length the answer states. Through requests, each such exchange cost about 0.3 ms of worker CPU (bench B7:
a PreparedRequest and a Response, a cookie jar, URL parsing three times over, urllib3's request and
response objects, and http.client's header parsing through the `email` package), which is most of the
0.5 ms per source issue 16 measured. Here the same exchange is one formatted request written to the
socket and one parse of the answer's head: a source's whole stat costs ~0.1 ms, half of it the socket's
own cost under gevent.

What is *not* written here, so as not to be written twice: connections, TLS (certificate checks, SNI),
the address policy on every resolved address (netguard.py's connection classes, through `conn.connect()`)
and pooling are urllib3's, in the very pools requests uses, so a connection opened by pre-flight carries
the member's GET afterwards (and the other way round). Retries, redirects and their checks are the
transport's (http_transport.py), the meaning of an answer the source's (http.py).

What is: the request line and fields (the bytes http.client would send for them), the response head
(RFC 9112 §4, §5: status line, field lines; http.client's own limits of 64 KiB a line and 100 fields) and
the body's framing (RFC 9112 §6.3) only as far as pre-flight needs it: a body is only ever read when
its Content-Length is stated, else the connection is not reused. h11 (python-hyper) parses the same
and was measured: ~0.05 ms per exchange more than this module, a third of the issue's whole target.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, cast

import requests
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.url import _encode_target, parse_url

from ..deadline import Deadline, shut
from .netguard import AddressRefused, RequestStopped

if TYPE_CHECKING:
    from urllib3.connection import HTTPConnection
    from urllib3.connectionpool import HTTPConnectionPool

MAX_LINE = 65536  # bytes of one line of a response head: http.client's _MAXLINE
MAX_FIELDS = 100  # field lines of a response head: http.client's _MAXHEADERS
MAX_HEAD = 1 << 20  # bytes buffered while looking for a head's end (http.client's limits allow ~6.5 MB)
READ_SIZE = 65536  # bytes asked of the socket per recv
# A body this small is read out to keep its connection (a 416's, a 3xx's): cheaper than a new one.
READ_OUT = 65536
DEFAULT_PORTS = {"http": 80, "https": 443}

# A URL already in the form requests would send it in: lower-case scheme and host, a non-default or
# explicit port without leading zeros, a path of characters no quoting or normalising step changes
# (RFC 3986 unreserved, sub-delims, ':' and '@'; no '%', so nothing is decoded), no dot segment (checked
# apart), a query likewise, no fragment. Anything else takes `Target._as_requests`, which is requests'
# own code: the fast form must give the same bytes (tests/test_sources_http_wire.py compares them).
_PLAIN_URL = re.compile(
    r"(https?)://([a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\])(?::([1-9][0-9]{0,4}))?"
    r"(/[A-Za-z0-9._~!$&'()*+,;=:@/-]*)(\?[A-Za-z0-9._~!$&'()*+,;=:@/?-]+)?")
# RFC 9110 §5.1 field-name (token) and §5.5 field-value characters (obs-text allowed, no CR/LF/NUL).
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Field lines as servers write them: a token, ':', the value (no CR or LF in it), CRLF.
_FIELD_BLOCK = re.compile(r"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n]*\r\n)*")
_FIELD = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):([^\r\n]*)\r\n")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


class WireError(Exception):
    """An exchange that failed before its answer's head was read whole (or a body cut short); `kind`
    names what happened, for error reasons (the socket error's or urllib3's class name)."""

    def __init__(self, message: str, kind: str = "ProtocolError") -> None:
        super().__init__(message)
        self.kind = kind


class WireTimeout(WireError):
    """No connection, or no answer, within the attempt's timeout."""


class Target:
    """Where one URL's request goes: the pool's scheme, host and port, the request-target and Host
    field, and the URL as requests would report it (`url`). Raises ValueError for a URL requests
    refuses (no host, a bad port)."""

    __slots__ = ("host", "host_field", "path", "port", "scheme", "url")

    def __init__(self, url: str, fast: bool = True) -> None:
        plain = _PLAIN_URL.fullmatch(url) if fast else None  # fast=False: requests' way for every URL (tests)
        if plain is not None and "/." not in plain[4] and (plain[3] is None or int(plain[3]) <= 65535):
            self.scheme, host, port = plain[1], plain[2], plain[3]
            self.url = url
            self.path = plain[4] + (plain[5] or "")
            self.host = host[1:-1] if host.startswith("[") else host
            self.port = int(port) if port else DEFAULT_PORTS[self.scheme]
        else:
            self._as_requests(url)
        # http.client's Host field: the connection's host (urllib3 drops a trailing dot), bracketed if
        # IPv6, the port only when not the scheme's default.
        name = self.host.rstrip(".")
        name = f"[{name}]" if ":" in name else name
        self.host_field = name if self.port == DEFAULT_PORTS[self.scheme] else f"{name}:{self.port}"

    def _as_requests(self, url: str) -> None:
        """What requests' PreparedRequest.prepare_url, its adapter and urllib3's pool make of `url`
        (IDNA, quoting, dot segments): their own code, for URLs outside the plain form."""
        prepared = requests.PreparedRequest()
        try:
            prepared.prepare_url(url, None)
        except requests.RequestException as error:
            raise ValueError(str(error)) from None
        final = str(prepared.url)
        parsed = parse_url(final)
        if parsed.scheme not in DEFAULT_PORTS or not parsed.host:
            raise ValueError(f"not an http(s) URL with a host: {final[:200]!r}")
        self.scheme = parsed.scheme
        self.url = final
        self.host = parsed.host.strip("[]").lower()
        self.port = parsed.port or DEFAULT_PORTS[self.scheme]
        self.path = _encode_target(prepared.path_url)


class Headers(dict[str, str]):
    """An answer's header fields by lower-case name; fields that repeat are joined with ", " (as
    urllib3 and requests join them). Looked up by a name in any case."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name.lower() if isinstance(name, str) else name)


def request_bytes(method: str, target: Target, headers: dict[str, str]) -> bytes:
    """The request as http.client writes it for urllib3: request line, Host, then `headers` in order.
    Raises ValueError for a field value with CR, LF or NUL (http.client refuses those too)."""
    lines = [f"{method} {target.path} HTTP/1.1\r\nHost: {target.host_field}\r\n"]
    for name, value in headers.items():
        if _BAD_VALUE.search(value):
            raise ValueError(f"invalid value for the {name} header: {value[:80]!r}")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def _parse_head(head: bytes) -> tuple[int, bool, Headers]:
    """(status, HTTP/1.1 or later, fields) of a response head without its blank line; WireError if
    it is not one (RFC 9112 §4 status line, §5 field lines; obs-fold joined with SP as §5.2 allows).

    A head of CRLF-ended `name: value` lines, as servers send them, is read by two regular
    expressions in C; any other (folded lines, bare LF, a malformed line, a long one) line by line."""
    text = head.decode("latin-1")
    status_line, crlf, block = text.partition("\r\n")
    if len(text) <= MAX_LINE and "\n" not in status_line:
        block += crlf
        if _FIELD_BLOCK.fullmatch(block):
            pairs = _FIELD.findall(block)
            fields = Headers({name.lower(): value.strip(" \t") for name, value in pairs})
            if len(fields) == len(pairs) <= MAX_FIELDS:  # else a name repeats: joined line by line
                status, modern = _status_line(status_line)
                return status, modern, fields
    return _parse_head_lines(head)


def _status_line(line: str) -> tuple[int, bool]:
    """(status, HTTP/1.1 or later) of `HTTP/x.y SSS[ reason]`; WireError for anything else."""
    version, _, rest = line.partition(" ")
    code = rest[:3]
    # 3 digits from 100 (http.client refuses less): "000" or "099" is no status a response can have.
    if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit() or not code.isascii() \
            or code[0] == "0" or rest[3:4] not in ("", " "):
        raise WireError(f"not an HTTP/1.x status line: {line[:80]!r}", "BadStatusLine")
    if not version.startswith("HTTP/1.") and version != "HTTP/0.9":
        # "HTTP/2.0", "HTTP/x": http.client (a member's GET) refuses them (UnknownProtocol), so must this.
        raise WireError(f"not an HTTP/1.x answer: {line[:80]!r}", "UnknownProtocol")
    return int(code), version != "HTTP/1.0" and version != "HTTP/0.9"


def _parse_head_lines(head: bytes) -> tuple[int, bool, Headers]:
    """`_parse_head` line by line, for heads its regular expressions don't take as they are."""
    lines = head.split(b"\n")
    status, modern = _status_line(lines[0].rstrip(b"\r").decode("latin-1"))
    if len(lines) > MAX_FIELDS + 1:
        raise WireError(f"more than {MAX_FIELDS} header fields", "HTTPException")
    if max(map(len, lines)) > MAX_LINE:
        raise WireError(f"a line of more than {MAX_LINE} bytes in the answer's head", "LineTooLong")
    fields = Headers()
    last = ""
    crlf = True  # the line before ended in CRLF, not a bare LF
    for raw in lines[1:]:
        line = raw[:-1] if raw.endswith(b"\r") else raw  # the CR of a CRLF, no more ("\r\r\n" has a bare CR)
        if b"\r" in line:  # a bare CR (RFC 9112 §2.2): http.client's reader ends a line there, this one not
            raise WireError(f"a bare CR in a header line: {line[:80]!r}", "HeaderParsingError")
        if line[:1] in (b" ", b"\t"):  # obs-fold: part of the previous field's value
            if not last:
                raise WireError("a folded line before any field", "HeaderParsingError")
            if not crlf:  # urllib3 (a member's GET) keeps that LF in the value: the two would read it apart
                raise WireError("a folded line after a line ended by a bare LF", "HeaderParsingError")
            fields[last] += " " + line.strip(b" \t").decode("latin-1")
            crlf = raw.endswith(b"\r")
            continue
        crlf = raw.endswith(b"\r")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):  # no whitespace before ':' (RFC 9112 §5.1)
            raise WireError(f"malformed header line: {line[:80]!r}", "HeaderParsingError")
        last = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        fields[last] = f"{fields[last]}, {text}" if last in fields else text
    return status, modern, fields


class Watch:
    """The socket a pre-flight request is using right now, for its deadline to shut.

    A stat registers `shut` with its deadline once (`Deadline.aborting`); each of its exchanges
    (retries, redirects, a HEAD after the GET) sets `sock` while it waits on the socket and clears it
    when its connection goes back to the pool, so the deadline never shuts another request's
    connection. One registration per source, not one per wait: this runs 10,000 times a bundle.
    """

    __slots__ = ("sock",)

    def __init__(self) -> None:
        self.sock: object | None = None

    def shut(self) -> None:
        """Wake whoever waits on the socket (see deadline.shut); nothing if none is in use."""
        shut(self.sock)  # type: ignore[arg-type]


class WireResponse:
    """One answer, its head read, its body not (or only partly, in `_buffer`). Give it back with
    `release()` or by reading its body (`read_body`): its connection goes back to the pool when the
    body was read whole and the server keeps it open; or with `close()`, which closes it."""

    __slots__ = ("_buffer", "_conn", "_length", "_pool", "_reusable", "_watch", "headers", "method",
                 "status_code", "url")

    def __init__(self, pool: HTTPConnectionPool, conn: HTTPConnection, method: str, url: str, status: int,
                 headers: Headers, buffer: bytes, keep_alive: bool, watch: Watch) -> None:
        self._pool: HTTPConnectionPool | None = pool
        self._conn = conn
        self._watch = watch
        self.method = method
        self.url = url
        self.status_code = status
        self.headers = headers
        self._buffer = buffer
        self._length = self._body_length(method, status, headers)  # None: unknown, read to close
        self._reusable = keep_alive and self._length is not None

    @staticmethod
    def _body_length(method: str, status: int, headers: Headers) -> int | None:
        """RFC 9112 §6.3: none after HEAD, 1xx, 204, 304; a Transfer-Encoding overrides Content-Length;
        a Content-Length of digits (equal repeats allowed) else unknown."""
        if method == "HEAD" or status < 200 or status in (204, 304):
            return 0
        value = headers.get("content-length")
        if value is None or "transfer-encoding" in headers:
            return None
        values = {part.strip(" \t") for part in value.split(",")}
        only = values.pop() if len(values) == 1 else ""
        return int(only) if only.isdigit() and only.isascii() and len(only) <= 19 else None

    @property
    def is_redirect(self) -> bool:
        """A redirect with somewhere to go (requests' `Response.is_redirect`)."""
        return self.status_code in (301, 302, 303, 307, 308) and "location" in self.headers

    def read_body(self, limit: int) -> bytes | None:
        """The whole body if its stated length is at most `limit`, else None (the connection dropped).
        Raises WireError (WireTimeout) if it ends early or stalls."""
        length = self._length
        if length is None or length > limit:
            self.close()
            return None
        conn = self._conn
        data = self._buffer
        try:
            if len(data) < length:
                parts = [data]
                got = len(data)
                sock = conn.sock
                while got < length:
                    chunk = sock.recv(min(READ_SIZE, length - got)) if sock is not None else b""
                    if not chunk:
                        raise WireError(f"the body ended after {got} of {length} bytes", "IncompleteRead")
                    parts.append(chunk)
                    got += len(chunk)
                data = b"".join(parts)
        except TimeoutError as error:
            self._drop()
            raise WireTimeout(f"no more of the body within the timeout ({error})", "ReadTimeout") from None
        except OSError as error:
            self._drop()
            raise WireError(f"the body was cut ({error})", type(error).__name__) from None
        except WireError:
            self._drop()
            raise
        if len(data) > length:  # more than the answer stated: nothing after it can be trusted
            self._reusable = False
            data = data[:length]
        self._buffer = b""
        self._finish()
        return data

    def release(self) -> None:
        """Done with an answer whose body is not needed: read out when small (the connection kept),
        else closed."""
        if self._length is not None and self._length <= READ_OUT and self._reusable:
            with contextlib.suppress(WireError):  # it ends the response either way
                self.read_body(READ_OUT)
        else:
            self.close()

    def close(self) -> None:
        """Done with the answer, its connection closed (as requests' `Response.close()` closes an answer
        not read whole): after an error, a 5xx being retried, a redirect. `release()` keeps it."""
        self._drop()

    def _finish(self) -> None:
        """The connection back to the pool if `_reusable`, else closed (its place freed)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        self._watch.sock = None  # from now on the connection may be another request's
        if self._reusable:
            pool._put_conn(self._conn)
        else:
            self._conn.close()
            pool._put_conn(None)

    def _drop(self) -> None:
        self._reusable = False
        self._finish()


def exchange(pool: HTTPConnectionPool, method: str, target: Target, headers: dict[str, str],
             timeout: tuple[float, float], deadline: Deadline, watch: Watch) -> WireResponse:
    """Send `method target` with `headers` on a connection of `pool`, body-less, and read the answer's
    head; the body is left to the WireResponse. `timeout`: (connect, read) seconds. Nothing is sent
    once `deadline` has passed or was cancelled; while a socket is waited on it is `watch`'s, for the
    deadline to shut (the caller registers `watch.shut` with it).

    A kept-alive connection the server closed meanwhile (nothing of the answer read) is replaced by a
    new one once: GET and HEAD are idempotent (RFC 9110 §9.2.2), and the race is the server's.
    Raises AddressRefused (the address policy), RequestStopped (the pre-flight deadline passed while
    connecting), WireTimeout, WireError; ValueError for a header value that can't be sent.
    """
    data = request_bytes(method, target, headers)
    connect, read = timeout
    for first_try in (True, False):
        conn = cast("HTTPConnection", pool._get_conn())  # the pools' connections are netguard's
        may_be_stale = first_try and conn.sock is not None
        try:
            if conn.sock is None:
                conn.timeout = connect
                conn.connect()
            sock = conn.sock
            assert sock is not None
            watch.sock = sock
            if deadline.cancelled or deadline.expired:  # connecting (TLS included) took the time left
                raise RequestStopped("pre-flight's deadline passed before the request was sent")
            sock.settimeout(read)
            sent = sock.send(data)  # one call, as good as sendall for a request this small
            if sent < len(data):
                sock.sendall(data[sent:])
            rest, keep_alive, status, fields = _read_answer(sock, may_be_stale, deadline)
        except _Stale:
            _discard(pool, conn, watch)
            continue
        except (AddressRefused, RequestStopped, WireError):
            _discard(pool, conn, watch)
            raise
        except Exception as error:  # socket, TLS and urllib3 errors of every kind
            _discard(pool, conn, watch)
            raise _wire_error(error) from error
        except BaseException:  # GreenletExit and the like: the connection is in an unknown state
            _discard(pool, conn, watch)
            raise
        return WireResponse(pool, conn, method, target.url, status, fields, rest, keep_alive, watch)
    raise AssertionError("unreachable: the second try raises or returns")  # pragma: no cover


def _discard(pool: HTTPConnectionPool, conn: HTTPConnection, watch: Watch) -> None:
    """Close `conn` and free its place in `pool` (as urllib3 does after a failed request)."""
    watch.sock = None
    conn.close()
    pool._put_conn(None)


class _Stale(Exception):
    """A reused connection closed by the server before any of the answer came."""


def _read_answer(sock: object, may_be_stale: bool, deadline: Deadline) -> tuple[bytes, bool, int, Headers]:
    """(bytes after the head, keep-alive, status, fields) of the final answer (1xx skipped). On a
    kept-alive connection (`may_be_stale`) an EOF or reset before any byte raises _Stale."""
    buffer = bytearray()  # appended to in place: a head trickling in is copied once, not once a read
    while True:
        end = _HEAD_END.search(buffer)
        while end is None:
            if len(buffer) > MAX_HEAD:
                raise WireError(f"no end of the answer's head in {MAX_HEAD} bytes", "LineTooLong")
            try:
                chunk = sock.recv(READ_SIZE)  # type: ignore[attr-defined]
            except (ConnectionResetError, BrokenPipeError) as error:
                if not buffer and may_be_stale and not deadline.cancelled and not deadline.expired:
                    raise _Stale() from None
                raise WireError(f"connection lost before the answer ({error})", type(error).__name__) from None
            if not chunk:
                if not buffer and may_be_stale and not deadline.cancelled and not deadline.expired:  # not its shutdown
                    raise _Stale()
                raise WireError("the server closed the connection without an answer", "RemoteDisconnected")
            may_be_stale = False
            # Only the new bytes (and the 3 before them) can end the head: a head sent a few bytes a
            # read is searched once over, not once a read (up to MAX_HEAD: seconds of CPU a source).
            searched = max(0, len(buffer) - 3)
            buffer += chunk
            end = _HEAD_END.search(buffer, searched)
        head, rest = bytes(buffer[:end.start()]), bytes(buffer[end.end():])
        status, modern, fields = _parse_head(head)
        if 100 <= status < 200 and status != 101:  # interim (100 Continue, 103 Early Hints): the next one
            buffer = bytearray(rest)
            continue
        tokens = {token.strip(" \t").lower() for token in (fields.get("connection") or "").split(",")}
        # 101: the connection now speaks another protocol (never asked for; never reused).
        keep_alive = "close" not in tokens and (modern or "keep-alive" in tokens) and status != 101
        return rest, keep_alive, status, fields


def _wire_error(error: BaseException) -> WireError:
    """A connect/send/receive failure as a WireError (a WireTimeout for a timeout), named by its class."""
    kind = type(error).__name__
    if isinstance(error, ConnectTimeoutError) and not isinstance(error, NewConnectionError):
        return WireTimeout(f"no connection within the timeout ({error})", "ConnectTimeout")
    if isinstance(error, TimeoutError):
        return WireTimeout(f"no answer within the timeout ({error})", "ReadTimeout")
    return WireError(str(error) or kind, kind)
