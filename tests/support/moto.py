"""A real S3/DynamoDB endpoint for tests: moto's ThreadedMotoServer on 127.0.0.1, spoken to over HTTP.

Never combine it with `mock_aws`: that patches botocore in-process and wipes the server's state.
"""

from __future__ import annotations

import os
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
        yield MotoServer(endpoint=endpoint, env=env)
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
