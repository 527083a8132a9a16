"""The SQL both relational backends share; SQLite and PostgreSQL differ only in connections."""

from __future__ import annotations

import functools
import importlib.resources
import threading
import time
import weakref
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from ..errors import LimitExceeded, SchemaNotReady, ServiceUnavailable
from ..models import Bundle, FileRef
from .contract import MigrationsMissing, SchemaConflict, SchemaError, SchemaState
from .sql_cache import SqlCrcCache

# The repository's top-level migrations/ folder; setup.py maps it into the package as
# `zipstream.migrations`, so a wheel carries it. This path only exists in a checkout.
_CHECKOUT = Path(__file__).resolve().parents[2]
TREE_MIGRATIONS = _CHECKOUT / "migrations"
MIGRATIONS_PACKAGE = "zipstream.migrations"


@functools.cache
def _shipped_scripts() -> tuple[tuple[str, str], ...]:
    """(file name, SQL with `{table}` unfilled) of every shipped migration, in order.

    Running from a checkout (setup.cfg beside migrations/): the tree's folder, so an editable
    install elsewhere never lends its copy. Installed (a wheel, any working directory): the package
    data `zipstream.migrations`, through importlib.resources.
    """
    scripts: list[tuple[str, str]] = []
    if (_CHECKOUT / "setup.cfg").is_file() and TREE_MIGRATIONS.is_dir():
        scripts = [(path.name, path.read_text(encoding="utf-8")) for path in TREE_MIGRATIONS.glob("*.sql")]
    else:
        try:
            package = importlib.resources.files(MIGRATIONS_PACKAGE)
            scripts = [(entry.name, entry.read_text(encoding="utf-8")) for entry in package.iterdir()
                       if entry.name.endswith(".sql") and entry.is_file()]
        except ModuleNotFoundError:  # the package data is missing: reported below
            pass
    if not scripts:
        raise MigrationsMissing(
            f"no migration scripts found (neither package data {MIGRATIONS_PACKAGE} nor "
            f"{TREE_MIGRATIONS}): the installed zipstream package is incomplete; reinstall it"
        )
    return tuple(sorted(scripts))


def migration_scripts(table: str) -> list[tuple[str, str]]:
    """(name, SQL) of every migration in order, with {table} filled in; MigrationsMissing if none."""
    return [(name, script.replace("{table}", table)) for name, script in _shipped_scripts()]


# purge-expired deletes in batches, each its own short write transaction, so the service keeps
# writing in between: at most this many bundles, and (bundles being up to MAX_FILES files) at most
# about this many file rows, per batch.
PURGE_BATCH_BUNDLES = 500
PURGE_BATCH_FILES = 5000
_EXPECTED_COLUMNS = "id, secret, filename, compression, expiration_date, created_at, file_count"
# Every table and column this code uses ({t}: TABLE_NAME): schema_state selects them all (no rows),
# so a table dropped after migrate makes the service not ready instead of failing request by request.
_SCHEMA_COLUMNS = (
    ("{t}", _EXPECTED_COLUMNS),
    ("{t}_files", "bundle_id, position, src, dst, crc32"),
    ("{t}_crcs", "identity, crc32, learned_at"),
    ("{t}_served", "version_sha256, delivered, recorded_at"),
    ("{t}_unstable", "src_sha256, marked_at"),
)
# Every table a migrated database holds, as suffixes of TABLE_NAME, those that refer to others first.
TABLE_SUFFIXES = ("_files", "_crcs", "_served", "_unstable", "_migrations", "")


class _BundleLock:
    """One bundle's write lock in this process (a class of its own: a bare lock takes no weak reference)."""

    def __init__(self) -> None:
        # Created at request time, so under gevent after the patching: waiting yields to other greenlets.
        self.lock = threading.Lock()


class SqlRepository(SqlCrcCache):
    """Bundles in two tables, `{table}` (one row a bundle) and `{table}_files` (one row a file); the
    download cache in `{table}_crcs`, `{table}_served` and `{table}_unstable` (migrations/)."""

    placeholder = "?"
    timeout = 5.0  # seconds; the backends set theirs (DB_TIMEOUT)
    migrate_on_start = False

    def __init__(self, table: str) -> None:
        self.table = table
        # bundle id -> its write lock while someone holds or waits for it (then forgotten).
        self._bundle_locks: weakref.WeakValueDictionary[str, _BundleLock] = weakref.WeakValueDictionary()
        self._bundle_locks_guard = threading.Lock()

    @contextmanager
    def _writing(self, bundle_id: str) -> Iterator[None]:
        """Hold this process's write lock of one bundle, waited for BEFORE taking a pool slot.

        Writes to one bundle queue on its row lock (Postgres) or the write lock (SQLite) anyway; a
        hundred concurrent appends to one bundle would otherwise each hold a pool slot while they
        wait and leave none for any other request on the worker. So at most one slot per bundle
        waits here. ServiceUnavailable (503 + Retry-After) if the lock is not had within `timeout`.
        """
        with self._bundle_locks_guard:
            entry = self._bundle_locks.get(bundle_id)
            if entry is None:
                entry = self._bundle_locks[bundle_id] = _BundleLock()
        if not entry.lock.acquire(timeout=self.timeout):
            raise ServiceUnavailable(f"bundle {bundle_id} is busy with other changes; try again shortly",
                                     retry_after=2)
        try:
            yield
        finally:
            entry.lock.release()

    @abstractmethod
    def transaction(self, write: bool = True) -> AbstractContextManager[Any]:
        """A cursor inside a transaction that commits on success and rolls back on error.

        `write=False` promises only reads: SQLite then never takes its write lock for it.
        """

    def _between_batches(self, batch_seconds: float) -> None:
        """Called between two purge batches that took `batch_seconds`; a backend may pause here."""
        return  # PostgreSQL: row locks queue fairly, nothing to leave room for

    def _reclaim_space(self) -> None:
        """Called after a purge: give freed space back to the filesystem where the backend can."""
        return  # PostgreSQL: autovacuum makes the space reusable

    def _sql(self, statement: str) -> str:
        return statement.replace("{t}", self.table).replace("?", self.placeholder)

    def _lock_migrations(self, cursor: Any) -> None:
        """Serialise concurrent `migrate` runs on one database until the transaction ends.

        SQLite: nothing to add, `transaction()` begins IMMEDIATE (the write lock, waited for).
        """
        return None

    def migrate(self) -> None:
        scripts = migration_scripts(self.table)  # none found: refuse before touching anything
        conflict = self._foreign_table()
        if conflict:
            raise SchemaConflict(
                f"table {self.table!r} exists but is not a ZipStream bundles table ({conflict}); "
                "set TABLE_NAME to a new name (bundles of the Node ZipStream are not imported)"
            )
        with self.transaction() as cursor:
            # Six pods' init containers at once: without the lock two CREATE TABLE IF NOT EXISTS race
            # in the catalogue (UniqueViolation) or two runs apply the same script.
            self._lock_migrations(cursor)
            cursor.execute(self._sql("CREATE TABLE IF NOT EXISTS {t}_migrations (name TEXT PRIMARY KEY)"))
            cursor.execute(self._sql("SELECT name FROM {t}_migrations"))
            done = {row[0] for row in cursor.fetchall()}
            # A table dropped after migrate (bookkeeping says applied): run every script again. They
            # only create what is missing (IF NOT EXISTS; tests/test_migrations.py holds them to it).
            repair = bool(done) and self._tables_missing(cursor)
            for name, script in scripts:
                if name in done and not repair:
                    continue
                for statement in _statements(script):
                    cursor.execute(statement)
                if name not in done:
                    cursor.execute(self._sql("INSERT INTO {t}_migrations (name) VALUES (?)"), (name,))
        if self.schema_state() is SchemaState.INCOMPLETE:
            raise SchemaError(
                f"tables of {self.table!r} lack columns this code uses even after running every migration "
                f"({self._schema_problem()}); restore them from a backup, or set TABLE_NAME to a new name"
            )

    def _check_tables(self, cursor: Any) -> None:
        """Select every table and column the code uses (no rows); the driver raises if one is missing."""
        for table, columns in _SCHEMA_COLUMNS:
            cursor.execute(self._sql(f"SELECT {columns} FROM {table} WHERE 1 = 0"))  # noqa: S608 - constants
            cursor.fetchall()

    def _tables_missing(self, cursor: Any) -> bool:
        """Whether `_check_tables` fails, inside the caller's transaction (a savepoint keeps it usable)."""
        cursor.execute("SAVEPOINT zipstream_check")
        try:
            self._check_tables(cursor)
        except Exception:  # noqa: BLE001 - no such table / column (each driver words it differently)
            cursor.execute("ROLLBACK TO SAVEPOINT zipstream_check")
            return True
        cursor.execute("RELEASE SAVEPOINT zipstream_check")
        return False

    def _schema_problem(self) -> str | None:
        """The database's words for the first missing table or column, or None when all are there."""
        try:
            with self.transaction(write=False) as cursor:
                self._check_tables(cursor)
        except SchemaNotReady as error:
            return error.reason or error.message
        return None

    def schema_state(self) -> SchemaState:
        """One read transaction: the bookkeeping table, then (if all is applied) every table and column used."""
        shipped = {name for name, _ in migration_scripts(self.table)}
        applied: set[str] = set()
        try:
            with self.transaction(write=False) as cursor:
                cursor.execute(self._sql("SELECT name FROM {t}_migrations"))
                applied = {row[0] for row in cursor.fetchall()}
                # Names applied that this code does not ship are a newer release's: still usable (rolling deploy).
                if applied and shipped <= applied:
                    self._check_tables(cursor)
        except SchemaNotReady:  # no bookkeeping table (never migrated), or a table gone since
            return SchemaState.INCOMPLETE if applied else SchemaState.MISSING
        if not applied:
            return SchemaState.MISSING
        return SchemaState.CURRENT if shipped <= applied else SchemaState.OUTDATED

    def _foreign_table(self) -> str | None:
        """Why an existing `{t}` is not ours, or None (absent, or ours).

        CREATE TABLE IF NOT EXISTS would keep a foreign table of the same name and every request
        would then fail (or write into someone else's rows), so it is refused before anything runs.
        """
        try:
            with self.transaction() as cursor:
                cursor.execute(self._sql("SELECT * FROM {t} WHERE 1 = 0"))
                cursor.fetchall()
        except Exception:  # noqa: BLE001 - no such table (each driver words it differently)
            return None
        try:
            with self.transaction() as cursor:
                cursor.execute(self._sql(f"SELECT {_EXPECTED_COLUMNS} FROM {{t}} WHERE 1 = 0"))  # noqa: S608
                cursor.fetchall()
        except Exception as error:  # noqa: BLE001 - a missing column, whatever the driver
            text = getattr(error, "reason", "") or str(getattr(error, "message", error))
            return text.strip().splitlines()[0]
        return None

    def ping(self) -> None:
        with self.transaction(write=False) as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()

    def create(self, bundle: Bundle) -> None:
        with self.transaction() as cursor:
            cursor.execute(
                self._sql(
                    "INSERT INTO {t} (id, secret, filename, compression, expiration_date, created_at, file_count)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)"
                ),
                (bundle.id, bundle.secret, bundle.filename, bundle.compression, bundle.expiration_date,
                 bundle.created_at, len(bundle.files)),
            )
            self._insert_files(cursor, bundle.id, 0, bundle.files)

    def _insert_files(self, cursor: Any, bundle_id: str, first: int, files: Sequence[FileRef]) -> None:
        if files:
            cursor.executemany(
                self._sql("INSERT INTO {t}_files (bundle_id, position, src, dst, crc32) VALUES (?, ?, ?, ?, ?)"),
                [(bundle_id, first + index, ref.src, ref.dst, ref.crc32) for index, ref in enumerate(files)],
            )

    def get(self, bundle_id: str) -> Bundle | None:
        with self.transaction(write=False) as cursor:
            return self._read(cursor, bundle_id)

    def _read(self, cursor: Any, bundle_id: str) -> Bundle | None:
        cursor.execute(
            self._sql(
                "SELECT id, secret, filename, compression, expiration_date, created_at FROM {t} WHERE id = ?"
            ),
            (bundle_id,),
        )
        row = cursor.fetchone()
        if row is None:
            return None
        cursor.execute(
            self._sql("SELECT src, dst, crc32 FROM {t}_files WHERE bundle_id = ? ORDER BY position"), (bundle_id,)
        )
        files = tuple(FileRef(src=src, dst=dst, crc32=crc) for src, dst, crc in cursor.fetchall())
        return Bundle(
            id=row[0], secret=row[1], filename=row[2], compression=row[3], expiration_date=int(row[4]),
            created_at=int(row[5]), files=files,
        )

    def append(
        self, bundle_id: str, files: Sequence[FileRef], max_files: int,
        filename: str | None = None, compression: str | None = None,
    ) -> Bundle | None:
        with self._writing(bundle_id), self.transaction() as cursor:
            # The UPDATE takes the row lock (Postgres) / write lock (SQLite) first, so concurrent
            # appends queue up here and each gets its own range of positions.
            cursor.execute(
                self._sql(
                    "UPDATE {t} SET file_count = file_count + ?, filename = COALESCE(?, filename),"
                    " compression = COALESCE(?, compression) WHERE id = ? RETURNING file_count"
                ),
                (len(files), filename, compression, bundle_id),
            )
            row = cursor.fetchone()
            if row is None:
                return None
            count = int(row[0])
            if count > max_files:
                raise LimitExceeded(
                    f"a bundle holds at most {max_files} files (MAX_FILES); this one would hold {count}",
                    limit="MAX_FILES",
                )
            self._insert_files(cursor, bundle_id, count - len(files), files)
            return self._read(cursor, bundle_id)

    def delete(self, bundle_id: str) -> Bundle | None:
        with self._writing(bundle_id), self.transaction() as cursor:
            bundle = self._read(cursor, bundle_id)
            if bundle is not None:
                cursor.execute(self._sql("DELETE FROM {t}_files WHERE bundle_id = ?"), (bundle_id,))
                cursor.execute(self._sql("DELETE FROM {t} WHERE id = ?"), (bundle_id,))
            return bundle

    def purge_expired(self, now: int) -> int:
        """Delete bundles expired at `now` (epoch seconds); how many.

        In batches (PURGE_BATCH_BUNDLES bundles, about PURGE_BATCH_FILES files), each its own short
        write transaction, so a purge of 200,000 bundles never holds the database for long.
        """
        removed = 0
        while True:
            started = time.monotonic()
            with self.transaction() as cursor:
                cursor.execute(
                    self._sql("SELECT id, file_count FROM {t} WHERE expiration_date <= ?"
                              " ORDER BY expiration_date LIMIT ?"),
                    (now, PURGE_BATCH_BUNDLES),
                )
                rows = cursor.fetchall()
                ids: list[str] = []
                files = 0
                for bundle_id, file_count in rows:
                    if ids and files + int(file_count) > PURGE_BATCH_FILES:
                        break
                    ids.append(bundle_id)
                    files += int(file_count)
                if ids:
                    marks = ", ".join("?" for _ in ids)  # only "?" marks are interpolated
                    cursor.execute(self._sql(f"DELETE FROM {{t}}_files WHERE bundle_id IN ({marks})"), ids)  # noqa: S608
                    cursor.execute(self._sql(f"DELETE FROM {{t}} WHERE id IN ({marks})"), ids)  # noqa: S608
                    removed += int(cursor.rowcount)
            if len(rows) < PURGE_BATCH_BUNDLES and len(ids) == len(rows):
                break
            self._between_batches(time.monotonic() - started)
        self._forget_cache(now)
        self._reclaim_space()
        return removed


def _statements(script: str) -> Iterator[str]:
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    for statement in "\n".join(lines).split(";"):
        if statement.strip():
            yield statement.strip()
