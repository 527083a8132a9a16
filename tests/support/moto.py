"""A real S3/DynamoDB endpoint for tests: moto's ThreadedMotoServer on 127.0.0.1, spoken to over HTTP.

Never combine it with moto's in-process decorator: that patches botocore inside the test process and
wipes the server's state, so the code under test would no longer speak HTTP to a real endpoint.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from .live import free_port

REGION = "us-east-1"


@dataclass(frozen=True)
class MotoServer:
    """Where the server listens and the environment that points boto3 (and gunicorn) at it."""

    endpoint: str
    port: int
    env: dict[str, str]


class AtomicMotoServer(ThreadedMotoServer):
    """ThreadedMotoServer whose requests are handled one at a time.

    Real DynamoDB applies each write to an item atomically (that is what makes a conditional
    `list_append` safe under concurrency); moto applies it as an unlocked read-modify-write on
    its in-memory item, so two concurrent appends can lose one. Handling requests one at a time
    gives moto the guarantee the real service documents; clients still talk to it concurrently.
    """

    def _server_entry(self) -> None:
        lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)

        def serialised(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            with lock:
                return list(app(environ, start_response))

        self._server = make_server(
            self._ip_address, self._port, serialised, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """Start moto once per session and point every boto3 client (ours, the tests', gunicorn's) at it."""
    port = free_port()
    server = AtomicMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }
    # boto3 reads endpoints and credentials from os.environ only; restore it afterwards.
    cleared = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_DYNAMODB")
    saved = {name: os.environ.get(name) for name in (*env, *cleared)}
    for name in cleared:
        os.environ.pop(name, None)
    os.environ.update(env)
    try:
        yield MotoServer(endpoint=endpoint, port=port, env=env)
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class CuttingProxy:
    """A TCP pass-through to the moto server that can cut the connection once, part-way through a response.

    `cut_after(n)`: the next n bytes sent towards the client pass, then that connection is closed
    (once). Used to prove that a body cut mid-way is resumed where it stopped.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._budget: int | None = None
        self._lock = threading.Lock()
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_after(self, n: int) -> None:
        with self._lock:
            self._budget = n

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, downstream: bool) -> None:
        try:
            while data := source.recv(65536):
                if downstream:
                    with self._lock:
                        if self._budget is not None and len(data) >= self._budget:
                            data, self._budget, cut = data[: self._budget], None, True
                        else:
                            if self._budget is not None:
                                self._budget -= len(data)
                            cut = False
                    sink.sendall(data)
                    if cut:
                        self.cuts += 1
                        break
                else:
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
