"""An HTTP/1.1 proxy on 127.0.0.1 in front of one loopback server, with the faults of a careless store.

Real S3-compatible stores and HTTP servers are not all as careful as AWS: some ignore conditional
headers, some resolve `.`/`..` segments in the request path, some cut bodies. `FaultProxy` stands in
front of a real server (moto, `UpstreamServer`) and plays those parts, so the code under test still
speaks HTTP to a real endpoint::

    with FaultProxy(("127.0.0.1", moto.port), strip=CONDITIONAL_HEADERS) as proxy:
        os.environ["AWS_ENDPOINT_URL_S3"] = proxy.endpoint
        proxy.hook = lambda request: overwrite() if request.method == "GET" else None
        proxy.cut_after(1000)   # the next body is cut after 1,000 bytes

It also accepts absolute-form targets (`GET http://bucket.localhost:9000/key`), as a client sends them
to a forward proxy (`HTTP_PROXY`): the Host asked for is recorded and the request still goes to the
target, so virtual-hosted addressing can be observed with no name ever resolved.
"""

from __future__ import annotations

import contextlib
import http.client
import posixpath
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

# RFC 9110 §13.1: the request preconditions a store that "ignores conditional requests" drops.
CONDITIONAL_HEADERS = ("If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range")
# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                         "upgrade", "proxy-authorization", "proxy-authenticate"})


@dataclass(frozen=True)
class Request:
    """One request as the proxy received it (before any header was stripped)."""

    method: str
    target: str  # origin-form path and query, as sent (still percent-encoded)
    host: str  # the Host header, or the authority of an absolute-form target
    headers: dict[str, str]  # names lower-cased
    absolute: bool  # sent in absolute form (to a forward proxy)


@dataclass(frozen=True)
class Reply:
    """An answer the proxy gives instead of forwarding (a hook's return value)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


Hook = Callable[[Request], "Reply | None"]


def resolve_dot_segments(target: str) -> str:
    """`target` with `.`/`..` path segments resolved (RFC 3986 §5.2.4), as some stores and proxies do."""
    path, sep, query = target.partition("?")
    resolved = posixpath.normpath(path) if path else path
    if path.endswith("/") and not resolved.endswith("/"):
        resolved += "/"
    return resolved.replace("//", "/") + sep + query


class FaultProxy:
    """`FaultProxy(("127.0.0.1", port), strip=..., resolve_dots=...)`; see the module docstring.

    `requests`: every request received, in order. `hook(request)`: run before forwarding; a `Reply`
    it returns is sent instead of forwarding. `cut_after(n)`: the next response body longer than n
    bytes is cut after n bytes (the connection is closed); `cuts` counts them.
    """

    def __init__(self, target: tuple[str, int], strip: Iterable[str] = (), resolve_dots: bool = False) -> None:
        if target[0] not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("FaultProxy only forwards to loopback")
        self.target = target
        self.strip = frozenset(name.lower() for name in strip)
        self.resolve_dots = resolve_dots
        self.hook: Hook | None = None
        self.requests: list[Request] = []
        self.cuts = 0
        self._budget: int | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def cut_after(self, n: int) -> None:
        with self._lock:
            self._budget = n

    def _take_cut(self, length: int) -> int | None:
        with self._lock:
            if self._budget is None or length <= self._budget:
                return None
            budget, self._budget = self._budget, None
            self.cuts += 1
            return budget

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                absolute = "://" in self.path.split("?", 1)[0]
                target, host = self.path, self.headers.get("Host", "")
                if absolute:
                    parts = urlsplit(self.path)
                    host = parts.netloc
                    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
                request = Request(self.command, target, host,
                                  {name.lower(): value for name, value in self.headers.items()}, absolute)
                with proxy._lock:
                    proxy.requests.append(request)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                reply = proxy.hook(request) if proxy.hook is not None else None
                if reply is None:
                    reply = self._ask_target(target, host, body)
                self._send(reply)

            def _ask_target(self, target: str, host: str, body: bytes) -> Reply:
                if proxy.resolve_dots:
                    target = resolve_dot_segments(target)
                headers = {name: value for name, value in self.headers.items()
                           if name.lower() not in proxy.strip and name.lower() not in _HOP_BY_HOP}
                headers["Host"] = host
                connection = http.client.HTTPConnection(*proxy.target, timeout=60)
                try:
                    connection.request(self.command, target, body=body or None, headers=headers)
                    answer = connection.getresponse()
                    data = answer.read()
                    kept = {name: value for name, value in answer.getheaders() if name.lower() not in _HOP_BY_HOP}
                    return Reply(answer.status, kept, data)
                finally:
                    connection.close()

            def _send(self, reply: Reply) -> None:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                length = reply.headers.get("Content-Length") or reply.headers.get("content-length")
                if self.command == "HEAD":
                    self.send_header("Content-Length", length or str(len(reply.body)))
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                cut = proxy._take_cut(len(reply.body))
                if cut is None:
                    self.wfile.write(reply.body)
                    return
                self.wfile.write(reply.body[:cut])
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(2)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
