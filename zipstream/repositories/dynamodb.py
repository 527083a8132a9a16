"""Bundles in one DynamoDB table (`TABLE_NAME`), designed around the 400 KB item limit.

Items (partition key `pk`, sort key `sk`, both strings):

- `pk=<bundle id>, sk="meta"`: secret, filename, compression, expirationDate, created_at,
  file_count and `chunks`, the ordered list of the sort keys of the bundle's file chunks.
- `pk=<bundle id>, sk="files#<random>"`: a JSON list of `[src, dst, crc32]` holding at most
  CHUNK_BYTES, so 10,000 files with long URLs are a few dozen items, never one oversized one.
- `pk="crc#<identity>", sk="crc"`: a CRC-32 learned while streaming (see SourceInfo.identity).

An append writes its chunk items first (invisible until referenced), then adds their keys to the
meta item in ONE conditional UpdateItem (`list_append`, `file_count + n <= MAX_FILES`): it either
happens whole or not at all, so concurrent appends lose nothing and keep their own order, and a
refused or failed append leaves only unreferenced chunks, which TTL removes. Every item carries
`expirationDate` (unix seconds), the table's TTL attribute: DynamoDB deletes expired items itself,
lazily, so reads still check expiry (410) and `purge_expired` exists only for completeness.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from ..aws import dynamodb_client
from ..config import Config
from ..errors import LimitExceeded, SchemaNotReady, ServiceUnavailable, ZipStreamError
from ..models import Bundle, FileRef
from . import MIGRATE_HINT, SchemaConflict, SchemaState

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

log = logging.getLogger(__name__)

META = "meta"
CHUNK_PREFIX = "files#"
CRC_PREFIX = "crc#"
TTL_ATTRIBUTE = "expirationDate"
# JSON bytes per chunk item: far below the 400 KB item limit, whatever the attribute overhead.
CHUNK_BYTES = 256 * 1024
# Learned CRC-32s are kept this long after they were last learned (TTL).
CRC_LIFETIME = 30 * 24 * 3600
# Request-level errors that mean "try again later", not "your request is wrong".
_RETRYABLE = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "LimitExceededException", "InternalServerError", "ServiceUnavailable", "TransactionConflictException",
    "ItemCollectionSizeLimitExceededException",
})
_BATCH_ATTEMPTS = 8


def _backoff(attempt: int) -> None:
    """Sleep before re-sending what DynamoDB left unprocessed (exponential, jittered)."""
    time.sleep(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not secrecy


def _encode_files(files: Sequence[FileRef]) -> list[tuple[str, int]]:
    """The files as JSON chunks of at most CHUNK_BYTES each: (json, number of files)."""
    chunks: list[tuple[str, int]] = []
    current: list[str] = []
    size = 2
    for ref in files:
        encoded = json.dumps([ref.src, ref.dst, ref.crc32], ensure_ascii=False, separators=(",", ":"))
        length = len(encoded.encode("utf-8")) + 1
        if current and size + length > CHUNK_BYTES:
            chunks.append(("[" + ",".join(current) + "]", len(current)))
            current, size = [], 2
        current.append(encoded)
        size += length
    if current:
        chunks.append(("[" + ",".join(current) + "]", len(current)))
    return chunks


def _decode_files(raw: str) -> list[FileRef]:
    return [FileRef(src=src, dst=dst, crc32=crc) for src, dst, crc in json.loads(raw)]


def _s(item: Mapping[str, Any], name: str) -> str:
    return str(item[name]["S"])


def _n(item: Mapping[str, Any], name: str) -> int:
    return int(item[name]["N"])


class DynamoRepository:
    """The BundleRepository on DynamoDB (`DB_INTERFACE=dynamodb`)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.table = config.table_name
        self.client: DynamoDBClient = dynamodb_client(config)

    # -- errors ------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate botocore errors of `action` into the service's errors."""
        try:
            yield
        except ClientError as error:
            raise self._translate(error, action) from None
        except BotoCoreError as error:
            raise ServiceUnavailable(f"DynamoDB did not answer ({action}: {type(error).__name__})") from None

    def _translate(self, error: ClientError, action: str) -> ZipStreamError:
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code == "ResourceNotFoundException":
            not_ready = SchemaNotReady(f"DynamoDB table {self.table} does not exist: {MIGRATE_HINT}", retry_after=10)
            not_ready.reason = f"table {self.table} does not exist"
            return not_ready
        if code in _RETRYABLE or status >= 500:
            return ServiceUnavailable(f"DynamoDB is unavailable ({action}: {code or status})")
        return ZipStreamError(f"DynamoDB refused {action}: {code or status}")

    # -- schema ------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create the table (on-demand capacity) and turn on TTL; does nothing that is done already."""
        with self._errors("create-table"):
            try:
                self.client.create_table(
                    TableName=self.table,
                    AttributeDefinitions=[
                        {"AttributeName": "pk", "AttributeType": "S"},
                        {"AttributeName": "sk", "AttributeType": "S"},
                    ],
                    KeySchema=[
                        {"AttributeName": "pk", "KeyType": "HASH"},
                        {"AttributeName": "sk", "KeyType": "RANGE"},
                    ],
                    BillingMode="PAY_PER_REQUEST",
                )
                log.info("created DynamoDB table %s", self.table)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "ResourceInUseException":
                    raise
            self.client.get_waiter("table_exists").wait(
                TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
            )
            self._check_keys(self.client.describe_table(TableName=self.table)["Table"])
            if not self._ttl_on():
                try:
                    self.client.update_time_to_live(
                        TableName=self.table,
                        TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
                    )
                    log.info("enabled TTL on %s.%s", self.table, TTL_ATTRIBUTE)
                except ClientError as error:
                    # Another `migrate` enabled it between our look and our update: that is success.
                    if error.response.get("Error", {}).get("Code") != "ValidationException" or not self._ttl_on():
                        raise

    def _ttl_on(self) -> bool:
        ttl = self.client.describe_time_to_live(TableName=self.table).get("TimeToLiveDescription", {})
        return ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")

    def _check_keys(self, table: Mapping[str, Any]) -> None:
        keys = table.get("KeySchema", [])
        if sorted((key["AttributeName"], key["KeyType"]) for key in keys) != [("pk", "HASH"), ("sk", "RANGE")]:
            raise SchemaConflict(
                f"DynamoDB table {self.table!r} exists with another key schema ({keys}); set TABLE_NAME to "
                "a new name (bundles of the Node ZipStream are not imported)"
            )

    def schema_state(self) -> SchemaState:
        """MISSING until the table exists and is ACTIVE; OUTDATED without TTL; SchemaConflict if keyed otherwise."""
        try:
            with self._errors("describe-table"):
                table = self.client.describe_table(TableName=self.table)["Table"]
                ttl_on = self._ttl_on()
        except SchemaNotReady:
            return SchemaState.MISSING
        if table.get("TableStatus") not in ("ACTIVE", "UPDATING"):  # CREATING (another migrate) or DELETING
            return SchemaState.MISSING
        self._check_keys(table)
        return SchemaState.CURRENT if ttl_on else SchemaState.OUTDATED

    def ping(self) -> None:
        with self._errors("describe-table"):
            self.client.describe_table(TableName=self.table)

    # -- bundles -----------------------------------------------------------------------------

    def _write_chunks(self, bundle_id: str, files: Sequence[FileRef], expires: int) -> list[str]:
        """Store `files` as chunk items nothing refers to yet; returns their sort keys in order."""
        keys: list[str] = []
        requests: list[dict[str, Any]] = []
        for raw, count in _encode_files(files):
            key = CHUNK_PREFIX + uuid.uuid4().hex
            keys.append(key)
            requests.append({"PutRequest": {"Item": {
                "pk": {"S": bundle_id}, "sk": {"S": key}, "files": {"S": raw}, "count": {"N": str(count)},
                TTL_ATTRIBUTE: {"N": str(expires)},
            }}})
        self._batch_write(requests)
        return keys

    def _batch_write(self, requests: list[dict[str, Any]]) -> None:
        """BatchWriteItem in groups of 25, re-sending what DynamoDB left unprocessed."""
        for start in range(0, len(requests), 25):
            pending: list[Any] = requests[start : start + 25]
            for attempt in range(_BATCH_ATTEMPTS):
                with self._errors("batch-write"):
                    answer = self.client.batch_write_item(RequestItems={self.table: pending})
                pending = list(answer.get("UnprocessedItems", {}).get(self.table, []))
                if not pending:
                    break
                _backoff(attempt)
            else:
                raise ServiceUnavailable("DynamoDB kept refusing writes (throughput exceeded)")

    def _delete_items(self, bundle_id: str, sort_keys: Sequence[str]) -> None:
        self._batch_write([
            {"DeleteRequest": {"Key": {"pk": {"S": bundle_id}, "sk": {"S": key}}}} for key in sort_keys
        ])

    def create(self, bundle: Bundle) -> None:
        chunks = self._write_chunks(bundle.id, bundle.files, bundle.expiration_date)
        item: dict[str, Any] = {
            "pk": {"S": bundle.id},
            "sk": {"S": META},
            "secret": {"S": bundle.secret},
            "filename": {"S": bundle.filename},
            "compression": {"S": bundle.compression},
            TTL_ATTRIBUTE: {"N": str(bundle.expiration_date)},
            "created_at": {"N": str(bundle.created_at)},
            "file_count": {"N": str(len(bundle.files))},
            "chunks": {"L": [{"S": key} for key in chunks]},
        }
        with self._errors("create"):
            self.client.put_item(
                TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
            )

    def _meta(self, bundle_id: str) -> dict[str, Any] | None:
        with self._errors("get"):
            answer = self.client.get_item(
                TableName=self.table, Key={"pk": {"S": bundle_id}, "sk": {"S": META}}, ConsistentRead=True
            )
        item = answer.get("Item")
        return dict(item) if item is not None else None

    def _chunk_items(self, bundle_id: str) -> Iterator[dict[str, Any]]:
        query: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": {":pk": {"S": bundle_id}, ":prefix": {"S": CHUNK_PREFIX}},
            "ConsistentRead": True,
        }
        while True:
            with self._errors("get"):
                page = self.client.query(**query)
            for item in page.get("Items", []):
                yield dict(item)
            if "LastEvaluatedKey" not in page:
                return
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def get(self, bundle_id: str) -> Bundle | None:
        # The meta item first: every chunk it lists was written before it was listed, so the
        # query after it finds them all (a chunk missing means the bundle was deleted meanwhile).
        meta = self._meta(bundle_id)
        if meta is None:
            return None
        wanted = [value["S"] for value in meta.get("chunks", {}).get("L", [])]
        keys = set(wanted)
        found = {_s(item, "sk"): item for item in self._chunk_items(bundle_id) if _s(item, "sk") in keys}
        if len(found) != len(keys):
            return None
        files: list[FileRef] = []
        for key in wanted:
            files.extend(_decode_files(_s(found[key], "files")))
        return Bundle(
            id=bundle_id,
            secret=_s(meta, "secret"),
            filename=_s(meta, "filename"),
            compression=_s(meta, "compression"),
            expiration_date=_n(meta, TTL_ATTRIBUTE),
            created_at=_n(meta, "created_at"),
            files=tuple(files),
        )

    def append(
        self, bundle_id: str, files: Sequence[FileRef], max_files: int,
        filename: str | None = None, compression: str | None = None,
    ) -> Bundle | None:
        meta = self._meta(bundle_id)
        if meta is None:
            return None
        count = _n(meta, "file_count")
        if count + len(files) > max_files:
            raise self._too_many(max_files, count + len(files))
        chunks = self._write_chunks(bundle_id, files, _n(meta, TTL_ATTRIBUTE)) if files else []
        updates = ["file_count = file_count + :n", "chunks = list_append(chunks, :chunks)"]
        condition = "attribute_exists(pk) AND file_count <= :limit"
        values: dict[str, Any] = {
            ":n": {"N": str(len(files))},
            ":chunks": {"L": [{"S": key} for key in chunks]},
            ":limit": {"N": str(max_files - len(files))},
        }
        if chunks:
            # botocore retries a request whose answer was lost; this makes the retry a no-op.
            condition += " AND NOT contains(chunks, :first)"
            values[":first"] = {"S": chunks[0]}
        if filename is not None:
            updates.append("filename = :filename")
            values[":filename"] = {"S": filename}
        if compression is not None:
            updates.append("compression = :compression")
            values[":compression"] = {"S": compression}
        try:
            self.client.update_item(
                TableName=self.table,
                Key={"pk": {"S": bundle_id}, "sk": {"S": META}},
                UpdateExpression="SET " + ", ".join(updates),
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            failed = error.response.get("Error", {})
            code, message = failed.get("Code", ""), str(failed.get("Message", ""))
            response: dict[str, Any] = dict(error.response)
            old: dict[str, Any] | None = response.get("Item")
            attached = bool(old and chunks and {"S": chunks[0]} in old.get("chunks", {}).get("L", []))
            if code == "ConditionalCheckFailedException" and attached:
                return self.get(bundle_id)  # our first attempt did succeed; its answer was lost
            self._forget_chunks(bundle_id, chunks)
            if code == "ConditionalCheckFailedException":
                if not old:
                    return None  # deleted since we read it
                raise self._too_many(max_files, _n(old, "file_count") + len(files)) from None
            if code == "ValidationException" and "size" in message.lower():
                raise LimitExceeded(
                    "this bundle was appended to too often to list in one DynamoDB item; create a new one",
                    limit="DYNAMODB_ITEM_SIZE",
                ) from None
            raise self._translate(error, "append") from None
        except BotoCoreError as error:
            # The outcome is unknown (the update may have been applied), so the chunks stay.
            raise ServiceUnavailable(f"DynamoDB did not answer (append: {type(error).__name__})") from None
        return self.get(bundle_id)

    def _forget_chunks(self, bundle_id: str, chunks: list[str]) -> None:
        """Best effort: remove chunks an append wrote but could not attach (TTL would, eventually)."""
        if not chunks:
            return
        try:
            self._delete_items(bundle_id, chunks)
        except ZipStreamError as error:
            log.warning("could not remove %d unattached chunks of %s: %s", len(chunks), bundle_id, error)

    @staticmethod
    def _too_many(max_files: int, count: int) -> LimitExceeded:
        return LimitExceeded(
            f"a bundle holds at most {max_files} files (MAX_FILES); this one would hold {count}",
            limit="MAX_FILES",
        )

    def delete(self, bundle_id: str) -> Bundle | None:
        bundle = self.get(bundle_id)
        if bundle is None:
            return None
        with self._errors("delete"):
            try:
                # The meta item goes first: without it the chunks are unreachable.
                self.client.delete_item(
                    TableName=self.table,
                    Key={"pk": {"S": bundle_id}, "sk": {"S": META}},
                    ConditionExpression="attribute_exists(pk)",
                )
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                    return None
                raise
        self._delete_items(bundle_id, [_s(item, "sk") for item in self._chunk_items(bundle_id)])
        return bundle

    def purge_expired(self, now: int) -> int:
        """Delete expired items now (a full table scan). DynamoDB's TTL does this for free, lazily."""
        metas: list[tuple[str, str]] = []
        others: list[tuple[str, str]] = []
        scan: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "#ttl <= :now",
            "ProjectionExpression": "pk, sk",
            "ExpressionAttributeNames": {"#ttl": TTL_ATTRIBUTE},
            "ExpressionAttributeValues": {":now": {"N": str(now)}},
        }
        while True:
            with self._errors("purge"):
                page = self.client.scan(**scan)
            for item in page.get("Items", []):
                key = (_s(item, "pk"), _s(item, "sk"))
                (metas if key[1] == META else others).append(key)
            if "LastEvaluatedKey" not in page:
                break
            scan["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        # Bundles (meta items) first, so no reader ever sees a bundle whose files are half gone.
        for keys in (metas, others):
            self._batch_write([
                {"DeleteRequest": {"Key": {"pk": {"S": pk}, "sk": {"S": sk}}}} for pk, sk in keys
            ])
        return len(metas)

    # -- learned CRC-32s ---------------------------------------------------------------------

    def get_crcs(self, identities: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        unique = list(dict.fromkeys(identities))
        for start in range(0, len(unique), 100):
            keys: list[Any] = [
                {"pk": {"S": CRC_PREFIX + identity}, "sk": {"S": "crc"}}
                for identity in unique[start : start + 100]
            ]
            for attempt in range(_BATCH_ATTEMPTS):
                with self._errors("get-crcs"):
                    answer = self.client.batch_get_item(RequestItems={self.table: {"Keys": keys}})
                responses: dict[str, Any] = dict(answer.get("Responses", {}))
                for item in responses.get(self.table, []):
                    found[_s(item, "pk")[len(CRC_PREFIX):]] = _n(item, "crc32")
                unprocessed: dict[str, Any] = dict(answer.get("UnprocessedKeys", {}))
                keys = list(unprocessed.get(self.table, {}).get("Keys", []))
                if not keys:
                    break
                _backoff(attempt)
            else:
                raise ServiceUnavailable("DynamoDB kept refusing reads (throughput exceeded)")
        return found

    def put_crcs(self, crcs: Mapping[str, int]) -> None:
        now = int(time.time())
        self._batch_write([{"PutRequest": {"Item": {
            "pk": {"S": CRC_PREFIX + identity}, "sk": {"S": "crc"}, "crc32": {"N": str(crc)},
            "learned_at": {"N": str(now)}, TTL_ATTRIBUTE: {"N": str(now + CRC_LIFETIME)},
        }}} for identity, crc in sorted(crcs.items())])

    def close(self) -> None:
        self.client.close()
