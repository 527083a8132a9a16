"""Bundles as items: a meta item and the file chunks it lists (see the package docstring)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from ...errors import LimitExceeded, ServiceUnavailable, ZipStreamError
from ...models import Bundle, FileRef
from ._calls import TableCalls, bounded
from ._errors import translate
from ._items import CHUNK_PREFIX, META, TTL_ATTRIBUTE, decode_files, encode_files, n, s

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

log = logging.getLogger(__name__)


class DynamoBundles:
    """The BundleRepository's bundle calls on one table (DynamoRepository puts it together)."""

    calls: TableCalls
    client: DynamoDBClient
    table: str

    def _write_chunks(self, bundle_id: str, files: Sequence[FileRef], expires: int) -> list[str]:
        """Store `files` as chunk items nothing refers to yet; returns their sort keys in order."""
        keys: list[str] = []
        requests: list[dict[str, Any]] = []
        for raw, count in encode_files(files):
            key = CHUNK_PREFIX + uuid.uuid4().hex
            keys.append(key)
            requests.append({"PutRequest": {"Item": {
                "pk": {"S": bundle_id}, "sk": {"S": key}, "files": {"S": raw}, "count": {"N": str(count)},
                TTL_ATTRIBUTE: {"N": str(expires)},
            }}})
        self.calls.batch_write(requests)
        return keys

    def _delete_items(self, bundle_id: str, sort_keys: Sequence[str]) -> None:
        self.calls.batch_write([
            {"DeleteRequest": {"Key": {"pk": {"S": bundle_id}, "sk": {"S": key}}}} for key in sort_keys
        ])

    @bounded
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
        with self.calls.errors("create"):
            try:
                self.calls.call(
                    self.client.put_item, TableName=self.table, Item=item,
                    ConditionExpression="attribute_not_exists(pk)", ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except ClientError as error:
                # A retry of a put whose answer was lost finds the item it wrote (the id is random).
                response: dict[str, Any] = dict(error.response)
                if (response.get("Item") or {}).get("secret") != {"S": bundle.secret}:
                    raise

    def _meta(self, bundle_id: str) -> dict[str, Any] | None:
        with self.calls.errors("get"):
            answer = self.calls.call(
                self.client.get_item,
                TableName=self.table, Key={"pk": {"S": bundle_id}, "sk": {"S": META}}, ConsistentRead=True,
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
            with self.calls.errors("get"):
                page = self.calls.call(self.client.query, **query)
            for item in page.get("Items", []):
                yield dict(item)
            if "LastEvaluatedKey" not in page:
                return
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    @bounded
    def get(self, bundle_id: str) -> Bundle | None:
        # The meta item first: every chunk it lists was written before it was listed, so the
        # query after it finds them all (a chunk missing means the bundle was deleted meanwhile).
        meta = self._meta(bundle_id)
        if meta is None:
            return None
        wanted = [value["S"] for value in meta.get("chunks", {}).get("L", [])]
        keys = set(wanted)
        found = {s(item, "sk"): item for item in self._chunk_items(bundle_id) if s(item, "sk") in keys}
        if len(found) != len(keys):
            return None
        files: list[FileRef] = []
        for key in wanted:
            files.extend(decode_files(s(found[key], "files")))
        return Bundle(
            id=bundle_id,
            secret=s(meta, "secret"),
            filename=s(meta, "filename"),
            compression=s(meta, "compression"),
            expiration_date=n(meta, TTL_ATTRIBUTE),
            created_at=n(meta, "created_at"),
            files=tuple(files),
        )

    @bounded
    def append(
        self, bundle_id: str, files: Sequence[FileRef], max_files: int,
        filename: str | None = None, compression: str | None = None,
    ) -> Bundle | None:
        meta = self._meta(bundle_id)
        if meta is None:
            return None
        count = n(meta, "file_count")
        if count + len(files) > max_files:
            raise self._too_many(max_files, count + len(files))
        chunks = self._write_chunks(bundle_id, files, n(meta, TTL_ATTRIBUTE)) if files else []
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
            self.calls.call(
                self.client.update_item,
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
                raise self._too_many(max_files, n(old, "file_count") + len(files)) from None
            if code == "ValidationException" and "size" in message.lower():
                raise LimitExceeded(
                    "this bundle was appended to too often to list in one DynamoDB item; create a new one",
                    limit="DYNAMODB_ITEM_SIZE",
                ) from None
            raise translate(error, "append", self.table) from None
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

    @bounded
    def delete(self, bundle_id: str) -> Bundle | None:
        bundle = self.get(bundle_id)
        if bundle is None:
            return None
        with self.calls.errors("delete"):
            try:
                # The meta item goes first: without it the chunks are unreachable.
                self.calls.call(
                    self.client.delete_item,
                    TableName=self.table,
                    Key={"pk": {"S": bundle_id}, "sk": {"S": META}},
                    ConditionExpression="attribute_exists(pk)",
                )
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                    return None
                raise
        self._delete_items(bundle_id, [s(item, "sk") for item in self._chunk_items(bundle_id)])
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
            with self.calls.errors("purge"):
                page = self.calls.call(self.client.scan, **scan)
            for item in page.get("Items", []):
                key = (s(item, "pk"), s(item, "sk"))
                (metas if key[1] == META else others).append(key)
            if "LastEvaluatedKey" not in page:
                break
            scan["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        # Bundles (meta items) first, so no reader ever sees a bundle whose files are half gone.
        for keys in (metas, others):
            self.calls.batch_write([
                {"DeleteRequest": {"Key": {"pk": {"S": pk}, "sk": {"S": sk}}}} for pk, sk in keys
            ])
        return len(metas)
