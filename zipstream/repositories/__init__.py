"""Where bundles are kept. One contract (`BundleRepository`), one class per backend, and the readiness gate."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from ..config import Config
from ..errors import SchemaNotReady, ServiceUnavailable, ZipStreamError
from ..models import Bundle, FileRef

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)

MIGRATE_HINT = "run `zipstream migrate` (the release step)"


class SchemaError(RuntimeError):
    """The schema cannot be made current by `migrate` as things stand; the message says why."""


class SchemaConflict(SchemaError):
    """TABLE_NAME names an existing table of another shape (the Node ZipStream's, say): nothing is touched."""


class MigrationsMissing(SchemaError):
    """No migration scripts were found: the installed package is incomplete."""


class SchemaState(enum.Enum):
    """How the database's schema compares with the one this code expects."""

    MISSING = "missing"
    OUTDATED = "older than the code"
    INCOMPLETE = "incomplete (a table or column the code uses is gone)"  # dropped after migrate
    CURRENT = "current"


class BundleRepository(Protocol):
    """Stores bundles. Every backend passes the same contract tests (tests/test_repositories.py).

    Every database library error is translated here, at the edge: the database down, timeouts and a
    missing schema surface as `ServiceUnavailable` (`SchemaNotReady` for the schema); nothing above a
    repository knows which database library was used.
    """

    def migrate(self) -> None:
        """Create or update the schema; safe to run any number of times, also concurrently.

        Raises SchemaConflict (a foreign table of that name), MigrationsMissing (no scripts shipped),
        ServiceUnavailable (the database does not answer).
        """

    def schema_state(self) -> SchemaState:
        """Whether the schema is missing, older than the code, incomplete, or current (cheap: one read).

        Every table and column the code uses is looked at, so a table dropped after `migrate` is seen.

        Raises ServiceUnavailable when the database does not answer, SchemaError as migrate would.
        """

    def ping(self) -> None:
        """Return if the database answers, raise ServiceUnavailable otherwise."""

    def create(self, bundle: Bundle) -> None:
        """Store a new bundle (its id is new)."""

    def get(self, bundle_id: str) -> Bundle | None:
        """The bundle, or None if there is none with that id (expired ones are returned)."""

    def append(
        self, bundle_id: str, files: Sequence[FileRef], max_files: int,
        filename: str | None = None, compression: str | None = None,
    ) -> Bundle | None:
        """Atomically add `files` after the existing ones; None if the bundle does not exist.

        `filename` / `compression`, when given, replace the stored ones in the same update.

        Concurrent appends never lose a file. Raises LimitExceeded, storing nothing, if the bundle
        would hold more than `max_files`.
        """

    def delete(self, bundle_id: str) -> Bundle | None:
        """Remove the bundle and return what it was; None if there was none."""

    def purge_expired(self, now: int) -> int:
        """Delete bundles whose expiration date has passed; returns how many."""

    def get_crcs(self, identities: Sequence[str]) -> dict[str, int]:
        """CRC-32s learned earlier for these source versions (see SourceInfo.identity)."""

    def put_crcs(self, crcs: Mapping[str, int]) -> None:
        """Remember CRC-32s computed while streaming."""

    def close(self) -> None:
        """Release connections."""


def build_repository(config: Config) -> BundleRepository:
    """The repository the configuration selects (see Config.describe_database)."""
    if config.db_interface == "sqlite":
        from .sqlite import SqliteRepository

        return SqliteRepository(config.sqlite_path, config.table_name, timeout=config.db_timeout)
    if config.db_interface == "postgres":
        from .postgres import PostgresRepository

        return PostgresRepository(
            config.db_cnxn, config.table_name, pool_size=config.db_pool_size, timeout=config.db_timeout,
            idle_timeout=config.db_idle_timeout,
        )
    from .dynamodb import DynamoRepository

    return DynamoRepository(config)


class Readiness:
    """Whether the repository may be used: its database answers and its schema is current.

    Until it is, `require()` raises a 503 whose message names `zipstream migrate`. While not ready
    the schema is looked at again at most every `recheck_seconds`, so a web process started before
    the release step becomes ready by itself once `zipstream migrate` has run; once ready it costs
    nothing (a missing table met later by a request calls `invalidate()`).

    `auto_migrate`: the embedded SQLite file has no release step, so checking means migrating.
    """

    def __init__(self, repository: BundleRepository, table: str, auto_migrate: bool = False,
                 recheck_seconds: float = 2.0) -> None:
        self.repository = repository
        self.table = table
        self.auto_migrate = auto_migrate
        self.recheck_seconds = recheck_seconds
        self._problem: ServiceUnavailable | None = ServiceUnavailable("the database has not been checked yet")
        self._checked_at = float("-inf")

    @property
    def ready(self) -> bool:
        return self._problem is None

    def check(self) -> ServiceUnavailable | None:
        """Look at the database now; None when ready, else the error `require()` will raise."""
        self._checked_at = time.monotonic()
        try:
            if self.auto_migrate:
                self.repository.migrate()
            state = self.repository.schema_state()
        except ServiceUnavailable as error:
            problem: ServiceUnavailable | None = error
        except (ZipStreamError, SchemaError) as error:
            problem = self._unusable(error)
        else:
            problem = None if state is SchemaState.CURRENT else self._not_current(state)
        self._problem = problem
        return problem

    def confirm(self) -> None:
        """Look at the schema now, never migrating (cheap: /health-check calls it every time).

        Raises as `require()` would. A schema found missing or incomplete makes the process not ready
        (requests then answer 503 naming `zipstream migrate`, and the gate re-checks as usual); a
        database that does not answer raises its ServiceUnavailable and leaves the gate as it was.
        """
        self.require()
        try:
            state = self.repository.schema_state()
        except ServiceUnavailable:
            raise
        except (ZipStreamError, SchemaError) as error:
            problem = self._unusable(error)
        else:
            if state is SchemaState.CURRENT:
                return
            problem = self._not_current(state)
        self.invalidate(problem)
        raise problem

    def _unusable(self, error: ZipStreamError | SchemaError) -> SchemaNotReady:
        return SchemaNotReady(f"the database schema for table {self.table!r} cannot be used: "
                              f"{getattr(error, 'message', error)}", retry_after=30)

    def _not_current(self, state: SchemaState) -> SchemaNotReady:
        return SchemaNotReady(
            f"the database schema for table {self.table!r} is {state.value}: {MIGRATE_HINT}; "
            "this process becomes ready by itself afterwards", retry_after=10)

    def require(self) -> None:
        """Return when ready; raise the reason (ServiceUnavailable, SchemaNotReady) otherwise."""
        if self._problem is None:
            return
        if time.monotonic() - self._checked_at >= self.recheck_seconds:
            self.check()
        if self._problem is not None:
            raise self._problem

    def invalidate(self, problem: ServiceUnavailable) -> None:
        """A request found the schema gone (a dropped table, a restored backup): check again soon."""
        if self._problem is None:
            self._problem = problem
            self._checked_at = float("-inf")


def init_app(app: Flask, config: Config) -> None:
    """Build the repository and its readiness gate into `app`, logging what it uses and whether it is ready.

    Never raises for the database's state: a web process started before the release step (or while
    the database is down) serves 503s naming the fix, and becomes ready without a restart.
    """
    repository = build_repository(config)
    log.info("database: %s", config.describe_database())
    # The embedded SQLite file has no release step: the web process creates its schema itself.
    readiness = Readiness(repository, config.table_name, auto_migrate=config.db_interface == "sqlite")
    problem = readiness.check()
    if problem is not None:
        log.error("not ready: %s", problem.message)
    app.extensions["zipstream.repository"] = repository
    app.extensions["zipstream.readiness"] = readiness


def get_repository(app: Flask) -> BundleRepository:
    """The app's repository once it is ready; raises ServiceUnavailable / SchemaNotReady (503) until then."""
    readiness: Readiness | None = app.extensions.get("zipstream.readiness")
    if readiness is not None:
        readiness.require()
    repository: BundleRepository = app.extensions["zipstream.repository"]
    return repository


def confirm_ready(app: Flask) -> None:
    """Check the database and its whole schema now (a readiness probe); raises ServiceUnavailable / SchemaNotReady."""
    readiness: Readiness | None = app.extensions.get("zipstream.readiness")
    if readiness is None:
        get_repository(app).ping()
        return
    readiness.confirm()


def schema_gone(app: Flask, error: SchemaNotReady) -> None:
    """A request met a missing table after start-up: the app is not ready until the schema is back."""
    readiness: Readiness | None = app.extensions.get("zipstream.readiness")
    if readiness is not None:
        readiness.invalidate(error)
