"""Shared fixtures: the app on a temp SQLite file, a real upstream, a real gunicorn, real Postgres."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from zipstream import create_app
from zipstream.config import Config

from .support import ci
from .support.live import LiveServer, live_server
from .support.moto import moto_server  # noqa: F401 - fixture
from .support.netns import pytest_collection_modifyitems, pytest_runtest_logreport  # noqa: F401 - hooks
from .support.readers import zip_readers  # noqa: F401 - fixture
from .support.s3 import store  # noqa: F401 - fixture (the S3 test bucket, one per module that asks)
from .support.upstream import UpstreamServer

POSTGRES_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """Config from a mapping of env names, on a temp SQLite file, private HTTP addresses allowed."""

    def make(**env: str) -> Config:
        base = {
            "SQLITE_PATH": str(tmp_path / "zipstream.sqlite3"),
            "FS_INTERFACES": "https",
            "HTTP_ALLOW_PRIVATE": "true",
        }
        return Config.from_env({**base, **env})

    return make


@pytest.fixture
def app(make_config: Callable[..., Config]) -> Flask:
    return create_app(make_config())


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    """A real HTTP file server on 127.0.0.1 with scriptable faults."""
    with UpstreamServer() as server:
        yield server


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start the real service under gunicorn (gevent worker): `serve(ENV=value, ...)`."""
    from contextlib import ExitStack

    with ExitStack() as stack:

        def start(workers: int = 1, **env: str) -> LiveServer:
            return stack.enter_context(live_server(env, tmp_path, workers=workers))

        yield start


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The real PostgreSQL the tests use; missing -> skip locally, fail on CI."""
    import psycopg2

    try:
        psycopg2.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg2.OperationalError as error:
        ci.missing(f"PostgreSQL not reachable at {POSTGRES_URL}: {error}")
    return POSTGRES_URL
