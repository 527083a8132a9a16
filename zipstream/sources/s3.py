"""S3 filestore: `s3://bucket/key` srcs (and `s3://bucket/prefix/` for every object under a prefix).

botocore's errors are translated here into `SourceError` subclasses; nothing above knows boto3 is used.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import urllib3.exceptions
from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError

from ..aws import DeadlinePassed, s3_client
from ..config import Config
from ..deadline import Deadline
from ..errors import SourceChanged, SourceError, SourceInterrupted, SourceNotFound, SourceRefused, SourceTimeout
from . import CHUNK_SIZE, SourceInfo
from .held import Holding

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

# A multipart upload's ETag ends in "-<parts>"; its checksum (if any) is of the parts, not the file.
_MULTIPART_ETAG = re.compile(r'-\d+"?$')
# Errors a body can fail with part-way: all mean "cut here, resume from the last byte received".
_BODY_ERRORS: tuple[type[BaseException], ...] = (BotoCoreError, urllib3.exceptions.HTTPError, OSError)


def parse_src(src: str) -> tuple[str, str]:
    """(bucket, key) of an `s3://bucket/key` src; the key is everything after the bucket's slash, verbatim."""
    scheme, sep, rest = src.partition("://")
    if scheme.lower() != "s3" or not sep:
        raise SourceRefused(src, "not an s3://bucket/key src")
    bucket, slash, key = rest.partition("/")
    if not bucket or not slash:
        raise SourceRefused(src, "an s3 src needs a bucket and a key: s3://bucket/key")
    if any(char.isspace() or char in "/?#\\" for char in bucket):
        raise SourceRefused(src, f"{bucket!r} is not a valid bucket name")
    return bucket, key


def _crc32(head: dict[str, Any]) -> int | None:
    """The object's full-object CRC-32 from a HEAD answer, or None when it has none we can trust."""
    value = head.get("ChecksumCRC32")
    if not value or "-" in value:
        return None
    kind = head.get("ChecksumType")
    if kind is not None and kind != "FULL_OBJECT":
        return None
    # No type given (older S3-compatible stores, moto): only a single PUT's checksum is of the whole file.
    if kind is None and _MULTIPART_ETAG.search(head.get("ETag") or ""):
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return int.from_bytes(raw, "big") if len(raw) == 4 else None


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def translate(src: str, error: Exception) -> SourceError:
    """A botocore error as the SourceError a client can act on."""
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code == "NoSuchBucket":
            return SourceNotFound(src, "not found (no such bucket)")
        if code in ("NoSuchKey", "NotFound", "404") or status == 404:
            return SourceNotFound(src, "not found")
        if code in ("AccessDenied", "Forbidden", "403", "AllAccessDisabled") or status == 403:
            return SourceNotFound(src, "access denied")
        if code in ("PreconditionFailed", "412") or status == 412:
            return SourceChanged(src, "the object changed since the download started (ETag differs)")
        if code == "InvalidRange" or status == 416:
            return SourceChanged(src, "the object is shorter than when the download started")
        return SourceError(src, f"S3 answered {code or 'an error'} (HTTP {status or '?'})")
    if isinstance(error, ConnectTimeoutError | ReadTimeoutError):
        return SourceTimeout(src, f"S3 did not answer in time (S3_TIMEOUT): {type(error).__name__}")
    return SourceError(src, f"S3 request failed: {type(error).__name__}")


class S3Source:
    """Reads objects through one boto3 client per process (see zipstream.aws)."""

    schemes: tuple[str, ...] = ("s3",)

    def __init__(self, config: Config) -> None:
        self.config = config
        self.buckets = frozenset(config.s3_buckets)

    @property
    def client(self) -> S3Client:
        return s3_client(self.config)

    def check(self, src: str) -> None:
        bucket, _key = parse_src(src)
        if self.buckets and bucket not in self.buckets:
            raise SourceRefused(src, f"bucket {bucket} is not in S3_BUCKETS")

    def stat(self, src: str, holding: Holding | None = None,
             deadline: Deadline | None = None) -> list[SourceInfo]:
        # `holding` is not used: the HEAD returns the object's stored CRC-32 (ChecksumMode), which a
        # ranged GET does not, and a known CRC-32 decides the zip's layout.
        if deadline is None:
            return self._stat(src)
        # The client's before-send hook reads the deadline from the thread: no attempt (nor any of
        # botocore's retries) starts once it has passed.
        with deadline.applying():
            try:
                return self._stat(src, s3_client(self.config, preflight=True))
            except DeadlinePassed:
                deadline.check(src)
                raise SourceTimeout(src, f"no answer within {deadline.describe()}") from None

    def _stat(self, src: str, client: S3Client | None = None) -> list[SourceInfo]:
        client = client or self.client
        self.check(src)
        bucket, key = parse_src(src)
        if key == "" or key.endswith("/"):
            return self._list(src, bucket, key, client)
        try:
            head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except (ClientError, BotoCoreError) as error:
            raise translate(src, error) from None
        return [SourceInfo(
            src=src,
            name=key,
            size=int(head["ContentLength"]),
            etag=head.get("ETag"),
            last_modified=_utc(head.get("LastModified")),
            crc32=_crc32(dict(head)),
            location=(bucket, key),
        )]

    def _list(self, src: str, bucket: str, prefix: str, client: S3Client) -> list[SourceInfo]:
        """Every object under `prefix`, in key order, named relative to the prefix."""
        infos: list[SourceInfo] = []
        try:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"]
                    if key.endswith("/"):  # a "folder" placeholder, not a file
                        continue
                    infos.append(SourceInfo(
                        src=f"s3://{bucket}/{key}",
                        name=key[len(prefix):],
                        size=int(item["Size"]),
                        etag=item.get("ETag"),
                        last_modified=_utc(item.get("LastModified")),
                        location=(bucket, key),
                    ))
        except (ClientError, BotoCoreError) as error:
            raise translate(src, error) from None
        if not infos:
            raise SourceNotFound(src, "no objects under prefix")
        # S3 lists in UTF-8 byte order, which is code point order; S3-compatible stores may not.
        infos.sort(key=lambda info: info.location[1])
        return infos

    def open(self, info: SourceInfo, start: int = 0) -> Iterator[bytes]:
        bucket, key = info.location if len(info.location) == 2 else parse_src(info.src)
        if info.size is not None and start >= info.size:
            return  # nothing left to read (and "bytes=<size>-" would be an unsatisfiable range)
        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if info.etag:
            params["IfMatch"] = info.etag  # a changed object fails with 412 instead of splicing versions
        if start:
            params["Range"] = f"bytes={start}-"
        try:
            response = self.client.get_object(**params)
        except (ClientError, BotoCoreError) as error:
            raise translate(info.src, error) from None
        body = response["Body"]
        try:
            expected = None if info.size is None else info.size - start
            length = response.get("ContentLength")
            if expected is not None and length is not None and int(length) != expected:
                raise SourceChanged(info.src, f"S3 sent {length} bytes, expected {expected}")
            received = 0
            try:
                for chunk in body.iter_chunks(CHUNK_SIZE):
                    received += len(chunk)
                    yield chunk
            except _BODY_ERRORS as error:
                raise SourceInterrupted(
                    info.src, f"connection lost after {start + received} bytes ({type(error).__name__})"
                ) from None
            if expected is not None and received != expected:
                raise SourceInterrupted(info.src, f"S3 sent {received} of {expected} bytes")
        finally:
            body.close()
