"""SQLite: the embedded default (`DB_INTERFACE=sqlite`, `SQLITE_PATH`), nothing to install.

Built so one SQLite file never stops a gevent worker:

- WAL journal: readers see a snapshot and never wait for a writer, nor a writer for them.
- Reads (`transaction(write=False)`: get, known, ping) are deferred transactions that only
  read, so they never take the write lock; writes take it up front (`BEGIN IMMEDIATE`), so
  concurrent appends queue instead of failing on a lock upgrade.
- Every sqlite3 call runs in a real thread under gevent (`cooperative.offload`): waiting for the
  write lock (the busy timeout, DB_TIMEOUT) is a C-level sleep that would otherwise freeze every
  greenlet of the worker. Reads and writes have separate thread pools, so writers queued on the
  lock cannot take the threads reads need.
- Write transactions of one process take turns (a semaphore, greenlet-aware under gevent) before
  `BEGIN IMMEDIATE`: each statement of a transaction is a separate call into the write pool, so
  writers waiting in `BEGIN IMMEDIATE` could otherwise hold every thread while the writer that has
  the lock waits for one to run its INSERT or COMMIT, and all of them time out ("database is
  locked"). SQLite has one writer at a time anyway; the queue and the busy wait share DB_TIMEOUT.
- Space: new files are created with `auto_vacuum=INCREMENTAL`, and purge-expired gives freed pages
  back (`PRAGMA incremental_vacuum`) and truncates the WAL. A file created before this keeps
  `auto_vacuum=NONE` (SQLite can only change it with a full `VACUUM`, which holds the write lock
  for its whole run): convert it once, service stopped, with
  `sqlite3 zipstream.sqlite3 'PRAGMA auto_vacuum=INCREMENTAL; VACUUM;'`.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self

from ..config import Config
from ..cooperative import offload
from ..errors import SchemaNotReady, ServiceUnavailable
from .contract import MIGRATE_HINT
from .sql import SqlRepository

READ_THREADS = 4  # per worker; a read waits for nothing in WAL mode, so few are needed
WRITE_THREADS = 4  # per worker; write transactions take turns (see _write_turn), so one is busy at a time
VACUUM_PAGES = 2000  # pages freed per incremental_vacuum transaction (8 MB at 4 KiB pages)


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

    migrate_on_start = True  # the embedded file has no release step: the web process creates its schema

    def __init__(self, path: str, table: str = "bundles", timeout: float = 5.0) -> None:
        """`timeout`: seconds an operation may wait for the write lock before ServiceUnavailable."""
        super().__init__(table)
        self.path = path
        self.timeout = timeout
        self._prepared = False
        self._writers = threading.BoundedSemaphore(1)
        self._writers_pid = os.getpid()

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """SQLITE_PATH, TABLE_NAME, DB_TIMEOUT."""
        return cls(config.sqlite_path, config.table_name, timeout=config.db_timeout)

    def _write_turn(self) -> threading.BoundedSemaphore:
        """This process's turn for write transactions: one at a time (SQLite has one writer anyway).

        Made again in a forked process: a semaphore does not survive a fork, and `threading`'s is only
        greenlet-aware when created after gevent's monkey-patching (which gunicorn's worker does first,
        so a repository built in the master before the fork gets a new one in each worker).
        """
        if self._writers_pid != os.getpid():
            self._writers = threading.BoundedSemaphore(1)
            self._writers_pid = os.getpid()
        return self._writers

    def _open(self, timeout: float | None = None) -> sqlite3.Connection:
        """A new connection whose busy wait lasts `timeout` seconds (default: the repository's)."""
        # Used from the pool's threads one call at a time, never concurrently: hence check_same_thread.
        connection = sqlite3.connect(self.path, timeout=self.timeout if timeout is None else timeout,
                                     isolation_level=None, check_same_thread=False)
        if not self._prepared:
            # Both persist in the file. auto_vacuum only takes effect on a file with no table yet
            # (it must come before WAL, which writes the first page); on others it is a no-op.
            connection.execute("PRAGMA auto_vacuum=INCREMENTAL")
            connection.execute("PRAGMA journal_mode=WAL")
            self._prepared = True
        return connection

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Any]:
        if not write:
            with self._transaction(False, self.timeout) as cursor:
                yield cursor
            return
        deadline = time.monotonic() + self.timeout
        turn = self._write_turn()
        if not turn.acquire(timeout=self.timeout):
            raise ServiceUnavailable(
                f"database is locked: this process's writes queued longer than DB_TIMEOUT ({self.timeout:g} s)",
                retry_after=max(1, round(self.timeout)))
        try:
            # What is left of DB_TIMEOUT after queueing is the busy wait for another process's lock.
            with self._transaction(True, max(deadline - time.monotonic(), 0.05)) as cursor:
                yield cursor
        finally:
            turn.release()

    @contextmanager
    def _transaction(self, write: bool, timeout: float) -> Iterator[Any]:
        run: Callable[..., Any] = functools.partial(
            offload, "sqlite-write" if write else "sqlite-read", WRITE_THREADS if write else READ_THREADS)
        try:
            connection: sqlite3.Connection = run(self._open, timeout)
        except sqlite3.Error as error:
            raise _translate(error) from None
        try:
            run(connection.execute, "BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")
            cursor = _Cursor(connection.cursor(), run)
            try:
                yield cursor
            except BaseException:
                run(connection.execute, "ROLLBACK")
                raise
            run(connection.execute, "COMMIT")
        except sqlite3.Error as error:
            raise _translate(error) from None
        finally:
            connection.close()

    def _between_batches(self, batch_seconds: float) -> None:
        # SQLite's busy handler polls (every 100 ms once it has waited a while) and is not fair:
        # without a gap the purge would take the lock again before a waiting request saw it free.
        # Sleeping as long as the batch took leaves writers at least half of the time.
        time.sleep(max(batch_seconds, 0.05))

    def _reclaim_space(self) -> None:
        """Give the pages purge freed back to the filesystem, a few thousand per short transaction."""
        try:
            connection = self._open()
        except sqlite3.Error as error:
            raise _translate(error) from None
        try:
            if connection.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:  # 2: INCREMENTAL
                free = connection.execute("PRAGMA freelist_count").fetchone()[0]
                for _ in range(free // VACUUM_PAGES + 1):
                    started = time.monotonic()
                    # executescript steps the pragma to the end; execute() would free a single page.
                    connection.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
                    self._between_batches(time.monotonic() - started)
            # The WAL grew by everything the purge wrote; fold it back into the file and truncate it.
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as error:
            raise _translate(error) from None
        finally:
            connection.close()

    def close(self) -> None:
        """Nothing is held between operations."""


class _Cursor:
    """A sqlite3 cursor whose calls go through `run` (a thread of the pool, under gevent)."""

    def __init__(self, cursor: sqlite3.Cursor, run: Callable[..., Any]) -> None:
        self._cursor = cursor
        self._run = run

    def execute(self, statement: str, parameters: Sequence[Any] = ()) -> _Cursor:
        self._run(self._cursor.execute, statement, parameters)
        return self

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> _Cursor:
        self._run(self._cursor.executemany, statement, rows)
        return self

    def fetchone(self) -> Any:
        return self._run(self._cursor.fetchone)

    def fetchall(self) -> list[Any]:
        rows: list[Any] = self._run(self._cursor.fetchall)
        return rows

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount
