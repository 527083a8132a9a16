"""Where bundles are kept. One contract (`BundleRepository`), one class per backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from ..config import Config
from ..models import Bundle, FileRef


class SchemaConflict(RuntimeError):
    """TABLE_NAME names an existing table of another shape (the Node ZipStream's, say): nothing is touched."""


class BundleRepository(Protocol):
    """Stores bundles. Every backend passes the same contract tests (tests/test_repositories.py).

    Backend failures (database down, timeouts) surface as `ServiceUnavailable`; nothing above a
    repository knows which database library was used.
    """

    def migrate(self) -> None:
        """Create or update the schema; safe to run any number of times."""

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
    """The repository DB_INTERFACE names, built from the config."""
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
