"""The contracts every database backend fulfils: bundles (`BundleRepository`), the download cache
(`CrcCache`) and construction (`Backend`), with the schema's states and errors.

Every backend passes the same contract suite (tests/test_repositories.py) on its real database.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..models import Bundle, FileRef

if TYPE_CHECKING:
    from typing import Self

    from ..config import Config

MIGRATE_HINT = "run `zipstream migrate` (the release step)"
# Seconds a record of the download cache is kept after it was last written (learned CRC-32s, served
# and unstable marks): purge-expired forgets older ones on SQL, DynamoDB's TTL on DynamoDB.
CACHE_LIFETIME = 30 * 24 * 3600


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
    """Stores bundles.

    Every database library error is translated at the edge of the backend: the database down,
    timeouts and a missing schema surface as `ServiceUnavailable` (`SchemaNotReady` for the schema,
    a 503 naming `zipstream migrate`); nothing above a repository knows which database library was used.
    """

    def migrate(self) -> None:
        """Create or update the schema (bundles and the download cache); safe to run any number of
        times, also concurrently.

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
        """Delete bundles whose expiration date (epoch seconds) is at or before `now`; returns how many.

        Cache records last written more than CACHE_LIFETIME seconds before `now` go too.
        """

    def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True)
class Known:
    """What earlier downloads recorded about one zip's sources and version (one read, `CrcCache.known`)."""

    # Source identity (SourceInfo.identity) -> the CRC-32 learned while streaming that exact version.
    crcs: Mapping[str, int] = field(default_factory=dict)
    # Bytes of this zip version, from its first, known to have gone out in some response (0: none known).
    delivered: int = 0
    # The srcs asked about that were seen with validators that differ between requests.
    unstable: frozenset[str] = frozenset()


class CrcCache(Protocol):
    """What downloads learn and later downloads use: CRC-32s of source versions, how much of a zip
    version went out, which srcs' validators cannot be trusted. A cache: a record may be forgotten
    (CACHE_LIFETIME), and a lost write costs only reading a file again or refusing a resume.

    `version` is a zip's strong ETag, `identity` a source version's (SourceInfo.identity), `src` a
    file reference's src. Backends key their records by SHA-256 (`version_key`, `src_key`), so any
    length fits. Raises SchemaNotReady when the cache's tables are missing (a 503 naming
    `zipstream migrate`), ServiceUnavailable when the database does not answer.
    """

    def known(self, identities: Collection[str], srcs: Collection[str], version: str | None) -> Known:
        """Everything recorded about these source versions, these srcs and this zip version, in one read.

        Nothing asked (all empty, `version` None): Known() without asking the database.
        """

    def put_crcs(self, crcs: Mapping[str, int]) -> None:
        """Remember CRC-32s (identity -> CRC-32, 0 to 2**32 - 1) computed while streaming; a later one
        replaces an earlier one."""

    def mark_served(self, version: str, delivered: int) -> None:
        """Record that the first `delivered` bytes of zip `version` went out.

        Only ever raises the record: a smaller `delivered` than the one stored changes nothing, and
        concurrent marks (any instance) leave the largest. Atomic in the database, never read-then-write.
        """

    def mark_unstable(self, src: str) -> None:
        """Record that `src`'s validators differ between requests (so bundles naming it get no ETag)."""


class Backend(BundleRepository, CrcCache, Protocol):
    """One database backend (a DB_INTERFACE value): it keeps bundles and the download cache, and
    builds itself from the settings."""

    # True: the web process migrates at start (an embedded SQLite file has no release step).
    migrate_on_start: bool

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """The backend the settings describe (DB_CNXN / SQLITE_PATH / AWS_*, TABLE_NAME, DB_TIMEOUT...).

        Connects to nothing yet: a database that is down is met by the first call.
        """


def version_key(version: str) -> str:
    """The key of zip `version`'s served record (hex SHA-256)."""
    return hashlib.sha256(f"delivered\x00{version}".encode("utf-8", "surrogatepass")).hexdigest()


def src_key(src: str) -> str:
    """The key of `src`'s unstable mark (hex SHA-256)."""
    return hashlib.sha256(f"unstable\x00{src}".encode("utf-8", "surrogatepass")).hexdigest()
