"""SQLite: the embedded default (`DB_INTERFACE=sqlite`, `SQLITE_PATH`), nothing to install."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import SchemaNotReady, ServiceUnavailable
from . import MIGRATE_HINT
from .sql import SqlRepository


def _translate(error: sqlite3.Error) -> ServiceUnavailable:
    """Every sqlite3 error as the service's: a missing table names the fix, the rest is a 503."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if text.startswith(("no such table", "no such column")):
        not_ready = SchemaNotReady(f"the database schema is not ready ({text}): {MIGRATE_HINT}", retry_after=10)
        not_ready.reason = text
        return not_ready
    return ServiceUnavailable(f"database unavailable: {text}")


class SqliteRepository(SqlRepository):
    """Bundles in a local SQLite file; a short-lived connection per operation (WAL, busy timeout)."""

    def __init__(self, path: str, table: str = "bundles", timeout: float = 5.0) -> None:
        super().__init__(table)
        self.path = path
        self.timeout = timeout

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        try:
            connection = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as error:
            raise _translate(error) from None
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            # IMMEDIATE takes the write lock up front: concurrent appends wait instead of failing.
            connection.execute("BEGIN IMMEDIATE")
            cursor = connection.cursor()
            try:
                yield cursor
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            raise _translate(error) from None
        finally:
            connection.close()

    def close(self) -> None:
        """Nothing is held between operations."""
