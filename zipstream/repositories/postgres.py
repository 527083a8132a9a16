"""PostgreSQL (`DB_INTERFACE=postgres`, `DB_CNXN` or Heroku's `DATABASE_URL`) through psycopg2.

Under gevent, psycopg2 is made cooperative by psycogreen's wait callback (installed by
`zipstream.cooperative.patch()`); the pool below hands out connections with a timeout instead of
psycopg2's ThreadedConnectionPool, which raises at once when empty and knows nothing of greenlets.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions

from ..errors import SchemaNotReady, ServiceUnavailable, ZipStreamError
from . import MIGRATE_HINT
from .sql import SqlRepository

log = logging.getLogger(__name__)

# SQLSTATEs of a schema that is missing or older than the code: undefined_table, undefined_column.
_SCHEMA_NOT_READY = frozenset({"42P01", "42703"})


class PostgresRepository(SqlRepository):
    """Bundles in PostgreSQL; connections are pooled, never held while a download streams."""

    placeholder = "%s"

    def __init__(self, dsn: str, table: str = "bundles", pool_size: int = 10, timeout: float = 5.0) -> None:
        super().__init__(table)
        # Heroku and the Node service write postgres://; libpq takes both spellings.
        self.dsn = dsn
        self.timeout = timeout
        self._idle: queue.LifoQueue[psycopg2.extensions.connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)

    def _connect(self) -> psycopg2.extensions.connection:
        return psycopg2.connect(
            self.dsn,
            connect_timeout=max(1, int(self.timeout)),
            options=f"-c statement_timeout={int(self.timeout * 1000)}",
            # Notice a dead server quickly instead of hanging on a half-open socket.
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=2,
        )

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        if not self._slots.acquire(timeout=self.timeout):
            raise ServiceUnavailable("database pool exhausted; try again shortly")
        try:
            try:
                connection = self._idle.get_nowait()
            except queue.Empty:
                connection = self._connect()
        except psycopg2.Error as error:
            self._slots.release()
            raise _translate(error) from None
        reusable = True
        try:
            with connection, connection.cursor() as cursor:  # commits, or rolls back on error
                yield cursor
        except psycopg2.Error as error:
            # `with connection` rolled back; only a broken connection is not given back.
            reusable = not isinstance(error, (psycopg2.OperationalError, psycopg2.InterfaceError))
            raise _translate(error) from None
        finally:
            if reusable and not connection.closed:
                self._idle.put(connection)
            else:
                with contextlib.suppress(psycopg2.Error):
                    connection.close()
            self._slots.release()

    def _lock_migrations(self, cursor: Any) -> None:
        # A transaction-scoped advisory lock: released at commit, or when a crashed run's session ends.
        # A waiter may wait as long as the migration before it takes, not DB_TIMEOUT.
        cursor.execute("SET LOCAL statement_timeout = 0")
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(f"zipstream migrate {self.table}"),))

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _translate(error: psycopg2.Error) -> ZipStreamError:
    """Every psycopg2 error as the service's: schema not ready, database unavailable, or (a bug) a 500."""
    if error.pgcode in _SCHEMA_NOT_READY:
        not_ready = SchemaNotReady(f"the database schema is not ready ({_first_line(error)}): {MIGRATE_HINT}",
                                   retry_after=10)
        not_ready.reason = _first_line(error)
        return not_ready
    if isinstance(error, (psycopg2.IntegrityError, psycopg2.ProgrammingError, psycopg2.DataError,
                          psycopg2.NotSupportedError)):
        # Our statement is wrong for this database: not the client's fault, not transient.
        log.error("database refused a statement: %s", _first_line(error))
        return ZipStreamError(f"database error: {_first_line(error)}")
    return ServiceUnavailable(f"database unavailable: {_first_line(error)}")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
