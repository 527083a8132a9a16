"""The download cache (CrcCache) as items: learned CRC-32s, served records, unstable marks.

Each kind is an item of its own, keyed `<prefix><hex key>` with a fixed sort key, and expires by TTL
CACHE_LIFETIME after it was last written. Before served records and unstable marks were items of
their own they were fake CRC-32 items (`crc#<hash>`); nothing reads those any more and TTL removes them.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ..contract import CACHE_LIFETIME, Known, src_key, version_key
from ._calls import TableCalls, bounded
from ._errors import error_code
from ._items import CRC_PREFIX, SERVED_PREFIX, TTL_ATTRIBUTE, UNSTABLE_PREFIX, key, n, s

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

CRC_SK, SERVED_SK, UNSTABLE_SK = "crc", "served", "unstable"


class DynamoCrcCache:
    """The CrcCache's calls on one table (DynamoRepository puts it together)."""

    calls: TableCalls
    client: DynamoDBClient
    table: str

    @bounded
    def known(self, identities: Collection[str], srcs: Collection[str], version: str | None) -> Known:
        by_pk = {CRC_PREFIX + identity: identity for identity in identities}
        unstable_pks = {UNSTABLE_PREFIX + src_key(src): src for src in srcs}
        served_pk = SERVED_PREFIX + version_key(version) if version is not None else None
        keys = [key(pk, CRC_SK) for pk in by_pk] + [key(pk, UNSTABLE_SK) for pk in unstable_pks]
        if served_pk is not None:
            keys.append(key(served_pk, SERVED_SK))
        crcs: dict[str, int] = {}
        unstable: set[str] = set()
        delivered = 0
        # One BatchGetItem (per 100 keys) for the three kinds; a one-off zip's cache read needs no other.
        for item in self.calls.batch_get(keys, "get-crcs"):
            pk = s(item, "pk")
            if pk in by_pk:
                crcs[by_pk[pk]] = n(item, "crc32")
            elif pk in unstable_pks:
                unstable.add(unstable_pks[pk])
            elif pk == served_pk:
                delivered = n(item, "delivered")
        return Known(crcs=crcs, delivered=delivered, unstable=frozenset(unstable))

    @bounded
    def put_crcs(self, crcs: Mapping[str, int]) -> None:
        now = int(time.time())
        self.calls.batch_write([{"PutRequest": {"Item": {
            **key(CRC_PREFIX + identity, CRC_SK), "crc32": {"N": str(crc)},
            "learned_at": {"N": str(now)}, TTL_ATTRIBUTE: {"N": str(now + CACHE_LIFETIME)},
        }}} for identity, crc in sorted(crcs.items())])

    @bounded
    def mark_served(self, version: str, delivered: int) -> None:
        now = int(time.time())
        with self.calls.errors("mark-served"):
            try:
                # Conditional, so DynamoDB itself keeps the largest of concurrent marks (and a retry of
                # one whose answer was lost changes nothing).
                self.calls.call(
                    self.client.update_item,
                    TableName=self.table,
                    Key=key(SERVED_PREFIX + version_key(version), SERVED_SK),
                    UpdateExpression="SET delivered = :delivered, recorded_at = :now, #ttl = :ttl",
                    ConditionExpression="attribute_not_exists(delivered) OR delivered < :delivered",
                    ExpressionAttributeNames={"#ttl": TTL_ATTRIBUTE},
                    ExpressionAttributeValues=_numbers(delivered=delivered, now=now, ttl=now + CACHE_LIFETIME),
                )
            except ClientError as error:
                # ConditionalCheckFailed: a record as large or larger is there already, nothing to do.
                if error_code(error) != "ConditionalCheckFailedException":
                    raise

    @bounded
    def mark_unstable(self, src: str) -> None:
        now = int(time.time())
        with self.calls.errors("mark-unstable"):
            self.calls.call(self.client.put_item, TableName=self.table, Item={
                **key(UNSTABLE_PREFIX + src_key(src), UNSTABLE_SK), "marked_at": {"N": str(now)},
                TTL_ATTRIBUTE: {"N": str(now + CACHE_LIFETIME)},
            })


def _numbers(**values: int) -> dict[str, Any]:
    return {f":{name}": {"N": str(value)} for name, value in values.items()}
