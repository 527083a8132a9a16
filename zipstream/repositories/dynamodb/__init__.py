"""Bundles and the download cache in one DynamoDB table (`TABLE_NAME`), designed around the 400 KB item limit.

Items (partition key `pk`, sort key `sk`, both strings; see _items.py):

- `pk=<bundle id>, sk="meta"`: secret, filename, compression, expirationDate, created_at,
  file_count and `chunks`, the ordered list of the sort keys of the bundle's file chunks.
- `pk=<bundle id>, sk="files#<random>"`: a JSON list of `[src, dst, crc32]` holding at most
  CHUNK_BYTES, so 10,000 files with long URLs are a few dozen items, never one oversized one.
- `pk="crc#<identity>", sk="crc"`: a CRC-32 learned while streaming (see SourceInfo.identity).
- `pk="served#<version key>", sk="served"`: `delivered`, the bytes of one zip version known to have
  gone out; only ever raised (a conditional update).
- `pk="unstable#<src key>", sk="unstable"`: a src whose validators differ between requests.

An append writes its chunk items first (invisible until referenced), then adds their keys to the
meta item in ONE conditional UpdateItem (`list_append`, `file_count + n <= MAX_FILES`): it either
happens whole or not at all, so concurrent appends lose nothing and keep their own order, and a
refused or failed append leaves only unreferenced chunks, which TTL removes. Every item carries
`expirationDate` (unix seconds), the table's TTL attribute: DynamoDB deletes expired items itself,
lazily, so reads still check expiry (410) and `purge_expired` exists only for completeness.

    _calls.py    requests within DB_TIMEOUT: deadlines, retries with back-off, batches
    _errors.py   botocore's errors as the service's (503s naming the permission or the fix)
    _items.py    item kinds, keys and the files' JSON chunks
    _admin.py    the table: create it with TTL, its schema state
    _bundles.py  the bundle calls          _cache.py  the download cache's calls
"""

from __future__ import annotations

from typing import Self

from ...aws import dynamodb_client
from ...config import Config
from ..contract import SchemaState
from . import _admin
from ._bundles import DynamoBundles
from ._cache import DynamoCrcCache
from ._calls import ATTEMPT_SHARE, ATTEMPTS, MIN_ATTEMPT, AttemptStopped, TableCalls, bounded
from ._errors import server_message
from ._items import CHUNK_BYTES, CHUNK_PREFIX, CRC_PREFIX, META, TTL_ATTRIBUTE

__all__ = [
    "ATTEMPTS", "ATTEMPT_SHARE", "CHUNK_BYTES", "CHUNK_PREFIX", "CRC_PREFIX", "META", "MIN_ATTEMPT",
    "TTL_ATTRIBUTE", "AttemptStopped", "DynamoRepository", "server_message",
]


class DynamoRepository(DynamoBundles, DynamoCrcCache):
    """The BundleRepository and CrcCache on DynamoDB (`DB_INTERFACE=dynamodb`).

    Each call of the contracts (get, create, append, delete, ping, schema_state, the cache's) answers
    within DB_TIMEOUT: its requests and their retries share that deadline, and each attempt may take at
    most ATTEMPT_SHARE of it. `migrate` and `purge_expired` (commands, not requests) have no overall
    limit; their requests are retried and bounded the same way each.
    """

    migrate_on_start = False

    def __init__(self, config: Config) -> None:
        self.config = config
        self.table = config.table_name
        self.client = dynamodb_client(config, config.db_timeout * ATTEMPT_SHARE)  # the socket timeouts
        self.calls = TableCalls(self.client, self.table, config.db_timeout)

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """TABLE_NAME, DB_TIMEOUT, AWS_REGION and AWS_ENDPOINT_URL(_DYNAMODB) with boto3's credentials."""
        return cls(config)

    def migrate(self) -> None:
        """Create the table (on-demand capacity) and turn on TTL; does nothing that is done already."""
        _admin.migrate(self.calls)

    @bounded
    def schema_state(self) -> SchemaState:
        """MISSING until the table exists and is ACTIVE; OUTDATED without TTL; SchemaConflict if keyed otherwise."""
        return _admin.schema_state(self.calls)

    @bounded
    def ping(self) -> None:
        _admin.ping(self.calls)

    def close(self) -> None:
        self.client.close()
