"""PostgreSQL (`DB_INTERFACE=postgres`, `DB_CNXN` or Heroku's `DATABASE_URL`) through psycopg2.

Under gevent, psycopg2 is made cooperative by psycogreen's wait callback (installed by
`zipstream.cooperative.patch()` from gunicorn's `post_worker_init`); the pool below hands out
connections with a timeout instead of psycopg2's ThreadedConnectionPool, which raises at once when
empty and knows nothing of greenlets. Its lock and semaphore are `threading`'s, which gevent's
monkey-patching makes greenlet-aware, so a greenlet waiting for a slot lets the others run.

Connections idle for `idle_timeout` seconds are closed by a reaper (a daemon thread, a greenlet
under gevent), so a quiet service gives its slots of the server's `max_connections` back.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self

import psycopg2
import psycopg2.extensions

from ..config import Config
from ..errors import SchemaNotReady, ServiceUnavailable, ZipStreamError
from ..peek import peek
from .contract import MIGRATE_HINT
from .sql import SqlRepository

log = logging.getLogger(__name__)

# SQLSTATEs of a schema that is missing or older than the code: undefined_table, undefined_column.
_SCHEMA_NOT_READY = frozenset({"42P01", "42703"})


class PostgresRepository(SqlRepository):
    """Bundles in PostgreSQL; connections are pooled, never held while a download streams."""

    placeholder = "%s"

    def __init__(self, dsn: str, table: str = "bundles", pool_size: int = 10, timeout: float = 5.0,
                 idle_timeout: float = 60.0) -> None:
        """`pool_size` connections at most (per process); `timeout` seconds for a slot, a connection and
        a statement; pooled connections unused for `idle_timeout` seconds are closed."""
        super().__init__(table)
        # Heroku and the Node service write postgres://; libpq takes both spellings.
        self.dsn = dsn
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        # (connection, when it was put back), most recently used last: reuse takes from the end, so
        # the ones at the front are those a lull left unused, and the reaper closes them.
        self._idle: list[tuple[psycopg2.extensions.connection, float]] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._reaper: threading.Thread | None = None
        self._closed = False

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """DB_CNXN (or DATABASE_URL), TABLE_NAME, DB_POOL_SIZE, DB_TIMEOUT, DB_IDLE_TIMEOUT."""
        return cls(config.db_cnxn, config.table_name, pool_size=config.db_pool_size, timeout=config.db_timeout,
                   idle_timeout=config.db_idle_timeout)

    def _connect(self) -> psycopg2.extensions.connection:
        # pg_stat_activity then tells which process holds a connection (unless the DSN names itself).
        try:
            named = "application_name" in psycopg2.extensions.parse_dsn(self.dsn)
        except psycopg2.Error:  # a malformed DSN: connect() below reports it
            named = False
        extra: dict[str, Any] = {} if named else {"application_name": f"zipstream-{os.getpid()}"}
        connection: psycopg2.extensions.connection = psycopg2.connect(
            self.dsn,
            connect_timeout=max(1, int(self.timeout)),
            options=f"-c statement_timeout={int(self.timeout * 1000)}",
            # Notice a dead server quickly instead of hanging on a half-open socket.
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=2,
            **extra,
        )
        return connection

    def _take_idle(self) -> psycopg2.extensions.connection | None:
        """The most recently used idle connection that is still alive, or None; dead ones are closed."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                connection = self._idle.pop()[0]
            if _alive(connection):
                return connection
            # Cut by the server (failover, restart, pgbouncer, pg_terminate_backend): handing it out
            # would cost a user a 503, one per pooled connection.
            with contextlib.suppress(psycopg2.Error):
                connection.close()

    def _put_idle(self, connection: psycopg2.extensions.connection) -> None:
        with self._lock:
            self._idle.append((connection, time.monotonic()))
            if self._reaper is None and not self._closed:
                # Started on first use, so in the gunicorn worker (after gevent patched `threading`).
                self._reaper = threading.Thread(target=self._reap, name="zipstream-pg-reaper", daemon=True)
                self._reaper.start()

    def _reap(self) -> None:
        """Close pooled connections idle longer than idle_timeout; ends when none is left (the next
        connection put back starts a new reaper), so a forgotten repository holds no thread."""
        while not self._closed:
            time.sleep(min(max(self.idle_timeout / 4, 0.05), 15.0))
            self.close_idle(older_than=self.idle_timeout)
            with self._lock:
                if not self._idle:
                    self._reaper = None
                    return

    def close_idle(self, older_than: float = 0.0) -> int:
        """Close pooled connections unused for more than `older_than` seconds; how many were closed."""
        cutoff = time.monotonic() - older_than
        with self._lock:
            stale = [connection for connection, since in self._idle if since <= cutoff]
            self._idle = [(connection, since) for connection, since in self._idle if since > cutoff]
        for connection in stale:
            with contextlib.suppress(psycopg2.Error):
                connection.close()
        return len(stale)

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Any]:
        # `write` is for SQLite's sake: PostgreSQL's reads never wait for writers (MVCC).
        if not self._slots.acquire(timeout=self.timeout):
            raise ServiceUnavailable("database pool exhausted; try again shortly")
        try:
            idle = self._take_idle()
            # A reused connection may still have been cut since the check: its first statement may
            # then run again on a fresh one (see _Cursor).
            cursor = _Cursor(idle, self._connect) if idle is not None else _Cursor(self._connect(), None)
        except psycopg2.Error as error:
            self._slots.release()
            raise _translate(error) from None
        reusable = True
        try:
            try:
                yield cursor
            except BaseException:
                try:
                    if not cursor.connection.closed:
                        cursor.connection.rollback()
                except psycopg2.Error:  # the error that brought us here is the one to report
                    reusable = False
                raise
            cursor.connection.commit()
        except psycopg2.Error as error:
            # Rolled back; only a broken connection is not given back.
            reusable = reusable and not isinstance(error, (psycopg2.OperationalError, psycopg2.InterfaceError))
            raise _translate(error) from None
        finally:
            connection = cursor.connection
            with contextlib.suppress(psycopg2.Error):
                cursor.close()
            if reusable and not connection.closed:
                self._put_idle(connection)
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
        self._closed = True
        self.close_idle()


class _Cursor:
    """psycopg2's cursor, except that a reused connection found cut at the first statement is replaced once.

    The pool's check (`_alive`) cannot see a connection cut a moment later, or one a proxy keeps
    open towards us after losing the server. Before anything ran in the transaction, running its
    first statement again on a fresh connection is the same transaction, so no user sees the cut.
    Other attributes (fetchone, fetchall, rowcount...) are the current cursor's.
    """

    def __init__(self, connection: psycopg2.extensions.connection,
                 reconnect: Callable[[], psycopg2.extensions.connection] | None) -> None:
        self.connection = connection
        self._cursor = connection.cursor()
        self._reconnect = reconnect  # None: a fresh connection, or something already ran

    def execute(self, statement: str, parameters: Any = None) -> None:
        self._run("execute", statement, parameters)

    def executemany(self, statement: str, rows: Any) -> None:
        self._run("executemany", statement, rows)

    def _run(self, method: str, statement: str, parameters: Any) -> None:
        reconnect, self._reconnect = self._reconnect, None
        try:
            getattr(self._cursor, method)(statement, parameters)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            # A statement timeout or a lock error leaves the connection open: never run twice.
            if reconnect is None or not self.connection.closed:
                raise
            log.info("a pooled database connection was cut by the server; its first statement runs on a new one")
            with contextlib.suppress(psycopg2.Error):
                self.connection.close()
            self.connection = reconnect()
            self._cursor = self.connection.cursor()
            getattr(self._cursor, method)(statement, parameters)

    def close(self) -> None:
        self._cursor.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


def _alive(connection: psycopg2.extensions.connection) -> bool:
    """Whether an idle pooled connection may still be used, checked without a round trip.

    An idle libpq connection has nothing to read: a readable socket means the server sent a
    termination notice (`pg_terminate_backend`, shutdown) or closed it (see zipstream.peek).
    """
    if connection.closed:
        return False
    try:
        return peek(connection.fileno()) is None
    except (OSError, psycopg2.Error):  # reset, or the descriptor is gone
        return False


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
