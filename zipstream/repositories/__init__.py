"""Where bundles and the download cache are kept: one backend per DB_INTERFACE, and the app's accessors.

    contract.py   BundleRepository, CrcCache (+ Known), Backend (construction); SchemaState, schema errors
    readiness.py  the 503 gate until the database answers and its schema is current
    sql.py        the SQL both relational backends share (sql_cache.py: the cache's); sqlite.py and
                  postgres.py, their connections
    dynamodb/     the DynamoDB backend

As flaskr's db.py: `init_app(app, config)` builds the backend into the app, and `get_repository()` /
`get_cache()` are how every other module reaches it, once it is ready.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import Config
from ..errors import SchemaNotReady
from .contract import (
    CACHE_LIFETIME,
    MIGRATE_HINT,
    Backend,
    BundleRepository,
    CrcCache,
    Known,
    MigrationsMissing,
    SchemaConflict,
    SchemaError,
    SchemaState,
)
from .readiness import Readiness

if TYPE_CHECKING:
    from flask import Flask

__all__ = [
    "BACKENDS", "CACHE_LIFETIME", "MIGRATE_HINT", "Backend", "BundleRepository", "CrcCache", "Known",
    "MigrationsMissing", "Readiness", "SchemaConflict", "SchemaError", "SchemaState", "build_repository",
    "confirm_ready", "get_cache", "get_repository", "init_app", "schema_gone",
]

log = logging.getLogger(__name__)


def _sqlite() -> type[Backend]:
    from .sqlite import SqliteRepository

    return SqliteRepository


def _postgres() -> type[Backend]:
    from .postgres import PostgresRepository

    return PostgresRepository


def _dynamodb() -> type[Backend]:
    from .dynamodb import DynamoRepository

    return DynamoRepository


# DB_INTERFACE -> its backend class, imported only when chosen (psycopg2 and boto3 are slow to load).
BACKENDS: dict[str, Callable[[], type[Backend]]] = {"sqlite": _sqlite, "postgres": _postgres, "dynamodb": _dynamodb}


def build_repository(config: Config) -> Backend:
    """The backend DB_INTERFACE selects, built from the settings (see Config.describe_database)."""
    return BACKENDS[config.db_interface]().from_config(config)


@dataclass(frozen=True)
class _Installed:
    backend: Backend
    readiness: Readiness


_EXTENSION = "zipstream.repositories"


def init_app(app: Flask, config: Config, backend: Backend | None = None) -> None:
    """Build the backend and its readiness gate into `app`, logging what it uses and whether it is ready.

    `backend`: use this one instead of the one the settings select (a test of one backend).
    Never raises for the database's state: a web process started before the release step (or while
    the database is down) serves 503s naming the fix, and becomes ready without a restart.
    """
    if backend is None:
        backend = build_repository(config)
        log.info("database: %s", config.describe_database())
    previous: _Installed | None = app.extensions.get(_EXTENSION)
    if previous is not None and previous.backend is not backend:
        previous.backend.close()
    readiness = Readiness(backend, config.table_name, auto_migrate=backend.migrate_on_start)
    problem = readiness.check()
    if problem is not None:
        log.error("not ready: %s", problem.message)
    app.extensions[_EXTENSION] = _Installed(backend, readiness)


def _installed() -> _Installed:
    from flask import current_app  # only the web layer asks: the CLI and the data path never load Flask

    installed: _Installed = current_app.extensions[_EXTENSION]
    return installed


def _ready() -> Backend:
    installed = _installed()
    installed.readiness.require()
    return installed.backend


def get_repository() -> BundleRepository:
    """The app's bundles once the database is ready; raises ServiceUnavailable / SchemaNotReady (503) until then."""
    return _ready()


def get_cache() -> CrcCache:
    """The app's download cache once the database is ready; raises as get_repository()."""
    return _ready()


def confirm_ready() -> None:
    """Check the database and its whole schema now (a readiness probe); raises ServiceUnavailable / SchemaNotReady."""
    _installed().readiness.confirm()


def schema_gone(error: SchemaNotReady) -> None:
    """A request met a missing table after start-up: the app is not ready until the schema is back."""
    _installed().readiness.invalidate(error)
