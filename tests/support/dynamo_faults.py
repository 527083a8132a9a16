"""A DynamoDB endpoint that misbehaves on demand: an HTTP proxy on 127.0.0.1 in front of the moto server.

By default every request passes through to moto. Rules make chosen operations (the `X-Amz-Target`
name: `GetItem`, `UpdateTimeToLive`, ...; None for every operation):

- `fail(code, message)`: answer with DynamoDB's own JSON error body and status 400 (or `status`),
  `{"__type": "com.amazonaws.dynamodb.v20120810#<code>", "message": ...}`, as the real service does
  for AccessDeniedException, UnrecognizedClientException, UnknownOperationException, ...;
- `hang()`: read the request, then never answer (until `clear()` or `close()`): a hung DynamoDB;
- `lose()`: pass the request to moto (so it is applied), then never answer: an answer lost on the way.

`times` limits a rule to its first N matching requests (then they pass through again). Every request
is logged with its operation and the time it arrived, so tests count attempts and retries.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

DYNAMODB_ERROR_PREFIX = "com.amazonaws.dynamodb.v20120810#"


@dataclass
class _Rule:
    operations: frozenset[str] | None  # None: every operation
    code: str | None  # None: hang (after passing the request on, with `forward`)
    message: str
    status: int
    times: int | None  # None: for ever
    forward: bool = False

    def matches(self, operation: str) -> bool:
        return (self.operations is None or operation in self.operations) and self.times != 0


@dataclass(frozen=True)
class Seen:
    """One request the proxy received: its DynamoDB operation and when it arrived (time.monotonic())."""

    operation: str
    at: float


class DynamoFaults:
    """`DynamoFaults(moto_port)`; point boto3 at `endpoint` (AWS_ENDPOINT_URL_DYNAMODB)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._seen: list[Seen] = []
        self._released = threading.Event()  # set: hung requests end (their connection is closed)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.faults = self  # type: ignore[attr-defined]
        self.port: int = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    # -- rules --
    def fail(self, code: str, message: str, operations: str | tuple[str, ...] | None = None,
             status: int = 400, times: int | None = None) -> None:
        """Answer `operations` with DynamoDB's JSON error `code` and `message` (HTTP `status`)."""
        self._add(_Rule(_names(operations), code, message, status, times))

    def hang(self, operations: str | tuple[str, ...] | None = None, times: int | None = None) -> None:
        """Read `operations`' requests and never answer them."""
        self._released.clear()
        self._add(_Rule(_names(operations), None, "", 0, times))

    def lose(self, operations: str | tuple[str, ...] | None = None, times: int | None = None) -> None:
        """Pass `operations`' requests to moto, then never answer them."""
        self._released.clear()
        self._add(_Rule(_names(operations), None, "", 0, times, forward=True))

    def clear(self) -> None:
        """Pass everything through again; hung requests are let go (their connections closed)."""
        with self._lock:
            self._rules.clear()
        self._released.set()

    def _add(self, rule: _Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    def _rule_for(self, operation: str) -> _Rule | None:
        with self._lock:
            self._seen.append(Seen(operation, time.monotonic()))
            for rule in self._rules:
                if rule.matches(operation):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None

    # -- what was received --
    def seen(self, operation: str | None = None, since: float = float("-inf")) -> list[Seen]:
        """Requests received (of `operation`, at or after `since`), in order."""
        with self._lock:
            return [s for s in self._seen if (operation is None or s.operation == operation) and s.at >= since]

    def count(self, operation: str | None = None, since: float = float("-inf")) -> int:
        return len(self.seen(operation, since))

    def close(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> DynamoFaults:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


def _names(operations: str | tuple[str, ...] | None) -> frozenset[str] | None:
    if operations is None:
        return None
    return frozenset((operations,) if isinstance(operations, str) else operations)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as DynamoDB: botocore reuses its connections

    @property
    def faults(self) -> DynamoFaults:
        faults: DynamoFaults = self.server.faults  # type: ignore[attr-defined]
        return faults

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        operation = (self.headers.get("X-Amz-Target") or "").rpartition(".")[2]
        rule = self.faults._rule_for(operation)
        if rule is None:
            self._forward(body)
        elif rule.code is None:
            if rule.forward:
                self._forward(body, answer=False)
            self.faults._released.wait()
            self.close_connection = True
        else:
            self._answer(rule.status, {"__type": DYNAMODB_ERROR_PREFIX + rule.code, "message": rule.message})

    def _answer(self, status: int, payload: dict[str, str]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("x-amzn-RequestId", "FAULT" + str(len(self.faults.seen())))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _forward(self, body: bytes, answer: bool = True) -> None:
        upstream = http.client.HTTPConnection("127.0.0.1", self.faults.target_port, timeout=30)
        try:
            headers = {name: value for name, value in self.headers.items() if name.lower() != "connection"}
            upstream.request("POST", self.path, body=body, headers=headers)
            reply = upstream.getresponse()
            data = reply.read()
        finally:
            upstream.close()
        if not answer:
            return
        self.send_response(reply.status)
        for name, value in reply.getheaders():
            if name.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
