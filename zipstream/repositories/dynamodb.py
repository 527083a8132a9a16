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

import functools
import json
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from ..aws import dynamodb_client
from ..config import Config
from ..cooperative import gevent_active
from ..deadline import Deadline
from ..errors import LimitExceeded, SchemaNotReady, ServiceUnavailable, ZipStreamError
from ..models import Bundle, FileRef
from . import MIGRATE_HINT, SchemaConflict, SchemaState

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

log = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")

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
# The identity this service runs as may not do the operation (IAM policy): fixed by granting it.
_DENIED = frozenset({"AccessDeniedException", "AccessDenied", "NotAuthorized"})
# The request's credentials or signature are refused (AWS's common errors): fixed in the credentials.
_UNAUTHENTICATED = frozenset({
    "UnrecognizedClientException", "InvalidSignatureException", "MissingAuthenticationTokenException",
    "MissingAuthenticationToken", "ExpiredTokenException", "ExpiredToken", "IncompleteSignature",
    "IncompleteSignatureException", "InvalidClientTokenId", "SignatureDoesNotMatch", "RequestExpired",
})
# Requests per DynamoDB call at most (the first and its retries), all within the operation's DB_TIMEOUT.
ATTEMPTS = 4
# One attempt may take this share of DB_TIMEOUT, so a connection that hangs leaves time for a retry.
ATTEMPT_SHARE = 0.5
# A retry is started only with at least this long left before the deadline (seconds).
MIN_ATTEMPT = 0.1
_BATCH_ATTEMPTS = 8
_NO_DEADLINE = Deadline(None, "DB_TIMEOUT")
# What a server's error message may carry that must not reach a client or a log: an access key id,
# a secret key or session token, and the canonical request AWS echoes on a signature mismatch.
_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA|APKA|ABIA|ACCA)[A-Z0-9]{12,}\b")
_TOKEN = re.compile(r"[A-Za-z0-9+/]{32,}={0,2}")
_ECHOED_REQUEST = re.compile(r"\s*The (?:Canonical String|String-to-Sign)\b.*", re.DOTALL)
_MESSAGE_CHARS = 300


class AttemptStopped(Exception):
    """One DynamoDB request was stopped at its deadline while blocked (under gevent; see `_stopped_at`)."""


def _pause(attempt: int) -> float:
    """Seconds to wait before retry `attempt` (1, 2, ...): exponential, jittered."""
    return min(2.0, 0.05 * 2.0**attempt) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not secrecy


def _operation_name(method: Callable[..., Any]) -> str:
    """DynamoDB's name of a client method: get_item -> GetItem (the IAM action is dynamodb:GetItem)."""
    return "".join(part.title() for part in getattr(method, "__name__", "request").split("_"))


def _transient(error: Exception) -> bool:
    """Whether the same request may well succeed if sent again."""
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in _RETRYABLE or (status >= 500 and code not in _DENIED | _UNAUTHENTICATED)
    return isinstance(error, (AttemptStopped, BotoConnectionError, HTTPClientError))


def server_message(text: str) -> str:
    """A DynamoDB error message fit for a client and a log: one line, at most _MESSAGE_CHARS, without
    key ids, keys, tokens or the canonical request a signature error echoes."""
    text = _ECHOED_REQUEST.sub("", text)
    text = _TOKEN.sub("[redacted]", _KEY_ID.sub("[key id]", text))
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


@contextmanager
def _stopped_at(deadline: Deadline) -> Iterator[None]:
    """Under gevent, raise AttemptStopped in the block once `deadline` passes, whatever it is blocked on.

    Socket timeouts bound each connect and each read, not the request: this bounds a connect started
    late or an answer that trickles. Without gevent the socket timeouts (capped by the deadline) are all.
    """
    if deadline.seconds is None or not gevent_active():
        yield
        return
    import gevent

    timer = gevent.Timeout(max(0.001, deadline.remaining()))
    timer.start()
    try:
        yield
    except gevent.Timeout as fired:
        if fired is not timer:
            raise
        raise AttemptStopped(f"no answer within {deadline.seconds:.3g} s") from None
    finally:
        timer.close()


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


def _bounded(method: Callable[Concatenate[DynamoRepository, P], T]) -> Callable[Concatenate[DynamoRepository, P], T]:
    """A contract call: all its requests and retries end within DB_TIMEOUT (DynamoRepository._operation)."""

    @functools.wraps(method)
    def bounded(self: DynamoRepository, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self._operation():
            return method(self, *args, **kwargs)

    return bounded


class DynamoRepository:
    """The BundleRepository on DynamoDB (`DB_INTERFACE=dynamodb`).

    Each call of the contract (get, create, append, delete, ping, schema_state, the CRC caches) answers
    within DB_TIMEOUT: its requests and their retries share that deadline, and each attempt may take at
    most ATTEMPT_SHARE of it. `migrate` and `purge_expired` (commands, not requests) have no overall
    limit; their requests are retried and bounded the same way each.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.table = config.table_name
        self.attempt_seconds = config.db_timeout * ATTEMPT_SHARE
        self.client: DynamoDBClient = dynamodb_client(config, self.attempt_seconds)
        self._local = threading.local()  # the running operation's deadline (greenlet-local under gevent)

    # -- deadlines and retries -----------------------------------------------------------------

    @contextmanager
    def _operation(self) -> Iterator[None]:
        """One contract call: every request in the block, and every retry, ends within DB_TIMEOUT
        (a call made by another, such as `get` by `append`, shares the caller's deadline)."""
        if getattr(self._local, "deadline", None) is not None:
            yield
            return
        self._local.deadline = Deadline(self.config.db_timeout, "DB_TIMEOUT")
        try:
            yield
        finally:
            self._local.deadline = None

    def _deadline(self) -> Deadline:
        deadline: Deadline | None = getattr(self._local, "deadline", None)
        return deadline or _NO_DEADLINE

    def _call(self, method: Callable[..., T], **params: Any) -> T:
        """`method(**params)`, a client call, sent again while its error is transient (throttling, 5xx,
        a timeout, a lost connection): at most ATTEMPTS times, every attempt and back-off inside the
        operation's deadline, each attempt within `attempt_seconds`.

        Raises the last botocore error (see `_errors`), or ServiceUnavailable naming DB_TIMEOUT when
        the time ran out without an answer.
        """
        deadline = self._deadline()
        attempt = 0
        while True:
            if deadline.expired:  # spent by the operation's earlier requests: send nothing more
                raise ServiceUnavailable(f"DynamoDB did not answer within {deadline.describe()} "
                                         f"({_operation_name(method)} not sent)")
            attempt += 1
            limit = Deadline(deadline.cap(self.attempt_seconds), "DB_TIMEOUT")
            try:
                with limit.applying(), _stopped_at(limit):  # the client's before-send hook reads `limit`
                    return method(**params)
            except (ClientError, BotoCoreError, AttemptStopped) as error:
                if not _transient(error):
                    raise
                pause = _pause(attempt)
                if attempt < ATTEMPTS and pause + MIN_ATTEMPT < deadline.remaining() and deadline.sleep(pause):
                    continue
                if isinstance(error, ClientError):
                    raise  # it answered: "unavailable", with its own words
                within = f"{attempt} attempt(s) within {deadline.describe()}"
                if deadline.seconds is None:
                    within = f"{attempt} attempt(s) of {self.attempt_seconds:g} s each"
                raise ServiceUnavailable(
                    f"DynamoDB did not answer {_operation_name(method)} ({within}; the last: "
                    f"{type(error).__name__})"
                ) from None

    def _sleep_or_give_up(self, attempt: int, what: str) -> None:
        """Wait before re-sending what DynamoDB left unprocessed; ServiceUnavailable if no time is left."""
        deadline = self._deadline()
        pause = _pause(attempt)
        if attempt + 1 >= _BATCH_ATTEMPTS or pause + MIN_ATTEMPT >= deadline.remaining() or not deadline.sleep(pause):
            raise ServiceUnavailable(f"DynamoDB kept refusing {what} (throughput exceeded)")

    # -- errors ------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate botocore errors of `action` into the service's errors."""
        try:
            yield
        except ClientError as error:
            raise self._translate(error, action) from None
        except (NoCredentialsError, PartialCredentialsError) as error:
            raise ServiceUnavailable(
                f"DynamoDB was not asked ({action}): {error}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "or give the service an IAM role", retry_after=30) from None
        except BotoCoreError as error:
            raise ServiceUnavailable(f"DynamoDB did not answer ({action}: {type(error).__name__})") from None

    def _translate(self, error: ClientError, action: str) -> ZipStreamError:
        """DynamoDB's answer as the service's error: 503 for what the operator or time fixes (a missing
        table, throttling, refused permissions or credentials), 500 for a request it found wrong."""
        failed = error.response.get("Error", {})
        code = str(failed.get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = server_message(str(failed.get("Message", "")))
        said = f"{code or status}: {message}" if message else str(code or status)
        if code == "ResourceNotFoundException":
            not_ready = SchemaNotReady(f"DynamoDB table {self.table} does not exist: {MIGRATE_HINT}", retry_after=10)
            not_ready.reason = f"table {self.table} does not exist"
            return not_ready
        permission = f"dynamodb:{error.operation_name}"
        if code in _DENIED:
            return ServiceUnavailable(
                f"DynamoDB refused {permission} on table {self.table}: {said} (grant {permission} to the "
                "IAM identity this service runs as)", retry_after=30)
        if code in _UNAUTHENTICATED:
            return ServiceUnavailable(
                f"DynamoDB refused {permission}: {said} (check this service's AWS credentials: "
                "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN or its IAM role)", retry_after=30)
        if code in _RETRYABLE or status >= 500:
            return ServiceUnavailable(f"DynamoDB is unavailable ({action}, {error.operation_name}: {said})")
        return ZipStreamError(f"DynamoDB refused {action} ({error.operation_name}): {said}")

    # -- schema ------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create the table (on-demand capacity) and turn on TTL; does nothing that is done already."""
        with self._errors("create-table"):
            try:
                self._call(
                    self.client.create_table,
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
            self._check_keys(self._call(self.client.describe_table, TableName=self.table)["Table"])
            if not self._ttl_on():
                try:
                    self._call(
                        self.client.update_time_to_live,
                        TableName=self.table,
                        TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
                    )
                    log.info("enabled TTL on %s.%s", self.table, TTL_ATTRIBUTE)
                except ClientError as error:
                    # Another `migrate` enabled it between our look and our update: that is success.
                    if error.response.get("Error", {}).get("Code") != "ValidationException" or not self._ttl_on():
                        raise

    def _ttl_on(self) -> bool:
        ttl = self._call(self.client.describe_time_to_live, TableName=self.table).get("TimeToLiveDescription", {})
        return ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")

    def _check_keys(self, table: Mapping[str, Any]) -> None:
        keys = table.get("KeySchema", [])
        if sorted((key["AttributeName"], key["KeyType"]) for key in keys) != [("pk", "HASH"), ("sk", "RANGE")]:
            raise SchemaConflict(
                f"DynamoDB table {self.table!r} exists with another key schema ({keys}); set TABLE_NAME to "
                "a new name (bundles of the Node ZipStream are not imported)"
            )

    @_bounded
    def schema_state(self) -> SchemaState:
        """MISSING until the table exists and is ACTIVE; OUTDATED without TTL; SchemaConflict if keyed otherwise."""
        try:
            with self._errors("describe-table"):
                table = self._call(self.client.describe_table, TableName=self.table)["Table"]
                ttl_on = self._ttl_on()
        except SchemaNotReady:
            return SchemaState.MISSING
        if table.get("TableStatus") not in ("ACTIVE", "UPDATING"):  # CREATING (another migrate) or DELETING
            return SchemaState.MISSING
        self._check_keys(table)
        return SchemaState.CURRENT if ttl_on else SchemaState.OUTDATED

    @_bounded
    def ping(self) -> None:
        with self._errors("describe-table"):
            self._call(self.client.describe_table, TableName=self.table)

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
                    answer = self._call(self.client.batch_write_item, RequestItems={self.table: pending})
                pending = list(answer.get("UnprocessedItems", {}).get(self.table, []))
                if not pending:
                    break
                self._sleep_or_give_up(attempt, "writes")

    def _delete_items(self, bundle_id: str, sort_keys: Sequence[str]) -> None:
        self._batch_write([
            {"DeleteRequest": {"Key": {"pk": {"S": bundle_id}, "sk": {"S": key}}}} for key in sort_keys
        ])

    @_bounded
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
            try:
                self._call(
                    self.client.put_item, TableName=self.table, Item=item,
                    ConditionExpression="attribute_not_exists(pk)", ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except ClientError as error:
                # A retry of a put whose answer was lost finds the item it wrote (the id is random).
                response: dict[str, Any] = dict(error.response)
                if (response.get("Item") or {}).get("secret") != {"S": bundle.secret}:
                    raise

    def _meta(self, bundle_id: str) -> dict[str, Any] | None:
        with self._errors("get"):
            answer = self._call(
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
            with self._errors("get"):
                page = self._call(self.client.query, **query)
            for item in page.get("Items", []):
                yield dict(item)
            if "LastEvaluatedKey" not in page:
                return
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    @_bounded
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

    @_bounded
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
            self._call(
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

    @_bounded
    def delete(self, bundle_id: str) -> Bundle | None:
        bundle = self.get(bundle_id)
        if bundle is None:
            return None
        with self._errors("delete"):
            try:
                # The meta item goes first: without it the chunks are unreachable.
                self._call(
                    self.client.delete_item,
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
                page = self._call(self.client.scan, **scan)
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

    @_bounded
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
                    answer = self._call(self.client.batch_get_item, RequestItems={self.table: {"Keys": keys}})
                responses: dict[str, Any] = dict(answer.get("Responses", {}))
                for item in responses.get(self.table, []):
                    found[_s(item, "pk")[len(CRC_PREFIX):]] = _n(item, "crc32")
                unprocessed: dict[str, Any] = dict(answer.get("UnprocessedKeys", {}))
                keys = list(unprocessed.get(self.table, {}).get("Keys", []))
                if not keys:
                    break
                self._sleep_or_give_up(attempt, "reads")
        return found

    @_bounded
    def put_crcs(self, crcs: Mapping[str, int]) -> None:
        now = int(time.time())
        self._batch_write([{"PutRequest": {"Item": {
            "pk": {"S": CRC_PREFIX + identity}, "sk": {"S": "crc"}, "crc32": {"N": str(crc)},
            "learned_at": {"N": str(now)}, TTL_ATTRIBUTE: {"N": str(now + CRC_LIFETIME)},
        }}} for identity, crc in sorted(crcs.items())])

    def close(self) -> None:
        self.client.close()
