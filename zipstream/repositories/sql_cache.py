"""The download cache (CrcCache) in SQL, shared by SQLite and PostgreSQL: three tables (migrations/).

- `{t}_crcs`: identity -> CRC-32 learned while streaming that source version (0002).
- `{t}_served`: SHA-256 of a zip's ETag -> bytes of that version known to have gone out (0003).
- `{t}_unstable`: SHA-256 of a src whose validators differ between requests (0003).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from .contract import CACHE_LIFETIME, Known, src_key, version_key

# Each table and the column saying when a record was last written (purge-expired forgets old ones).
_CACHE_TABLES = (("{t}_crcs", "identity", "learned_at"), ("{t}_served", "version_sha256", "recorded_at"),
                 ("{t}_unstable", "src_sha256", "marked_at"))
PURGE_BATCH = 5000  # records forgotten per short write transaction


class SqlCrcCache(ABC):
    """The CrcCache's statements; SqlRepository puts them together with the bundles' and the schema's."""

    @abstractmethod
    def transaction(self, write: bool = True) -> AbstractContextManager[Any]:
        """A cursor inside a transaction (see SqlRepository.transaction)."""

    @abstractmethod
    def _sql(self, statement: str) -> str:
        """`statement` with `{t}` and the placeholders of this database."""

    @abstractmethod
    def _between_batches(self, batch_seconds: float) -> None:
        """Called between two purge batches (see SqlRepository._between_batches)."""

    def known(self, identities: Collection[str], srcs: Collection[str], version: str | None) -> Known:
        if not identities and not srcs and version is None:
            return Known()
        by_key = {src_key(src): src for src in srcs}
        crcs: dict[str, int] = {}
        unstable: set[str] = set()
        delivered = 0
        with self.transaction(write=False) as cursor:  # one round of the pool for the three
            for batch in _batches(list(dict.fromkeys(identities)), 500):
                # Only "?" placeholders are interpolated; the values travel as parameters.
                query = f"SELECT identity, crc32 FROM {{t}}_crcs WHERE identity IN ({_marks(batch)})"  # noqa: S608
                cursor.execute(self._sql(query), batch)
                crcs.update({identity: int(crc) for identity, crc in cursor.fetchall()})
            for batch in _batches(list(by_key), 500):
                query = f"SELECT src_sha256 FROM {{t}}_unstable WHERE src_sha256 IN ({_marks(batch)})"  # noqa: S608
                cursor.execute(self._sql(query), batch)
                unstable.update(by_key[key] for (key,) in cursor.fetchall())
            if version is not None:
                cursor.execute(self._sql("SELECT delivered FROM {t}_served WHERE version_sha256 = ?"),
                               (version_key(version),))
                row = cursor.fetchone()
                delivered = int(row[0]) if row is not None else 0
        return Known(crcs=crcs, delivered=delivered, unstable=frozenset(unstable))

    def put_crcs(self, crcs: Mapping[str, int]) -> None:
        if not crcs:
            return
        now = int(time.time())
        with self.transaction() as cursor:
            cursor.executemany(
                self._sql(
                    "INSERT INTO {t}_crcs (identity, crc32, learned_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (identity) DO UPDATE SET crc32 = excluded.crc32, learned_at = excluded.learned_at"
                ),
                [(identity, crc, now) for identity, crc in sorted(crcs.items())],
            )

    def mark_served(self, version: str, delivered: int) -> None:
        # One statement: the row lock (Postgres) / the write lock (SQLite) orders concurrent marks, and
        # the WHERE is checked against the row as it is then, so the largest one stays.
        with self.transaction() as cursor:
            cursor.execute(
                self._sql(
                    "INSERT INTO {t}_served (version_sha256, delivered, recorded_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (version_sha256) DO UPDATE SET delivered = excluded.delivered,"
                    " recorded_at = excluded.recorded_at WHERE {t}_served.delivered < excluded.delivered"
                ),
                (version_key(version), delivered, int(time.time())),
            )

    def mark_unstable(self, src: str) -> None:
        with self.transaction() as cursor:
            cursor.execute(
                self._sql(
                    "INSERT INTO {t}_unstable (src_sha256, marked_at) VALUES (?, ?)"
                    " ON CONFLICT (src_sha256) DO UPDATE SET marked_at = excluded.marked_at"
                ),
                (src_key(src), int(time.time())),
            )

    def _forget_cache(self, now: int) -> None:
        """Forget records last written over CACHE_LIFETIME before `now` (epoch seconds), as DynamoDB's TTL
        does for its copy: a download needing one again just reads the file, or refuses a resume."""
        for table, key, written in _CACHE_TABLES:
            while True:
                started = time.monotonic()
                with self.transaction() as cursor:
                    cursor.execute(
                        self._sql(f"DELETE FROM {table} WHERE {key} IN"  # noqa: S608 - constants
                                  f" (SELECT {key} FROM {table} WHERE {written} <= ? LIMIT ?)"),
                        (now - CACHE_LIFETIME, PURGE_BATCH),
                    )
                    forgotten = int(cursor.rowcount)
                if forgotten < PURGE_BATCH:
                    break
                self._between_batches(time.monotonic() - started)


def _marks(batch: Sequence[str]) -> str:
    return ", ".join("?" for _ in batch)


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
