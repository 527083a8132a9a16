"""S3 filestore: `s3://bucket/key` srcs (and `s3://bucket/prefix/` for every object under a prefix).

Pre-flight asks a key with HeadObject, except for a download that streams every member right after
(held.py): there it asks GetObject for the bytes from 0 instead, and keeps the first
PREFLIGHT_FETCH_BYTES within the source's budget. An object of at most that many bytes then costs
one request (its bytes are all in memory: its member needs no GetObject, and the zip writer computes
its CRC-32 from them, checked against the stored one if there is one), a bigger one two (the first
bytes, then the rest from there with IfMatch, as a resume). The range is open-ended because a range
that is the whole object is answered with the object's stored checksum as HeadObject's is (a range
that is part of an object carries none), and a stored CRC-32 decides the zip's layout: the layout,
Content-Length and ETag are then the same whichever route asked. For a bigger object the pre-flight
connection is closed after those first bytes rather than read out. A store that sends no checksum
with any range (MinIO, Ceph) is noticed by the HeadObject asked when an answer has none, and goes
back to HeadObject (`S3Source.range_checksums`).

botocore's errors are translated here into `SourceError` subclasses; nothing above knows boto3 is used.

A src is refused before anything is stored or fetched (`src_problem`) when its bucket breaks S3's naming
rules or its key has a `.`/`..` path segment in any spelling a store or proxy might resolve: botocore
sends `.` unencoded (RFC 3986 unreserved), so `s3://allowed/../other/x` reaches the store as
`/allowed/../other/x`, which AWS and moto take literally but a store that resolves dot-segments reads
as `/other/x`, walking around S3_BUCKETS. Such keys are refused rather than escaped: a `%2E` would
change the key for the stores that are literal, and a store that decodes before resolving would resolve
it all the same.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import unicodedata
import zlib
from collections.abc import Collection, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote

import urllib3.exceptions
from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError

from ..aws import DeadlinePassed, s3_client
from ..chunks import CHUNK_SIZE
from ..config import Config, aws_endpoint
from ..deadline import Deadline
from ..errors import SourceChanged, SourceError, SourceInterrupted, SourceNotFound, SourceRefused, SourceTimeout
from ..numbers import NotANumber, parse_digits
from . import held
from .contract import SourceInfo
from .held import HoldBudget, Holding

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

# A multipart upload's ETag ends in "-<parts>"; its checksum (if any) is of the parts, not the file.
_MULTIPART_ETAG = re.compile(r'-\d+"?$')
# Errors a body can fail with part-way: all mean "cut here, resume from the last byte received".
_BODY_ERRORS: tuple[type[BaseException], ...] = (BotoCoreError, urllib3.exceptions.HTTPError, OSError)
# Errors of a request: botocore reads a store's numbers and dates itself (int(), dateutil), so a
# malformed Content-Length or Last-Modified is a plain ValueError, not one of its own.
_ANSWER_ERRORS: tuple[type[Exception], ...] = (ClientError, BotoCoreError, ValueError)

# S3's rules for general purpose bucket names (AWS S3 User Guide, "General purpose bucket naming rules").
# Access point aliases (`-s3alias`, `--ol-s3`) and directory buckets (`--x-s3`) are accepted: no bucket
# may be created with those suffixes, but AWS takes them wherever GetObject takes a bucket name.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", re.ASCII)
_IP_FORMATTED = re.compile(r"\d+\.\d+\.\d+\.\d+", re.ASCII)
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = (".mrap",)  # Multi-Region Access Points are named by ARN, never as a bucket
# Buckets made in us-east-1 before March 2018 may hold upper case and '_' (up to 255 characters);
# such a name is accepted only when S3_BUCKETS lists it (the operator vouches that it exists).
_LEGACY_BUCKET = re.compile(r"[A-Za-z0-9._-]{3,255}", re.ASCII)
MAX_KEY_BYTES = 1024  # S3's limit on a key's UTF-8 length
# Percent-decoding is repeated (a proxy may decode again what the store decodes) up to this many times.
_DECODE_ROUNDS = 4


def bucket_problem(bucket: str, listed: Collection[str] = ()) -> str | None:
    """Why `bucket` can't name an S3 bucket (S3's naming rules), or None; `listed`: S3_BUCKETS."""
    if _BUCKET.fullmatch(bucket) is None:
        if bucket in listed and _LEGACY_BUCKET.fullmatch(bucket):
            return None
        return (f"{bucket!r} is not a valid S3 bucket name: 3-63 lower-case letters, digits, '.' and '-', "
                "starting and ending with a letter or digit")
    if ".." in bucket:
        return f"{bucket!r} is not a valid S3 bucket name: two adjacent periods"
    if _IP_FORMATTED.fullmatch(bucket):
        return f"{bucket!r} is not a valid S3 bucket name: formatted as an IP address"
    reserved = next((part for part in _RESERVED_PREFIXES if bucket.startswith(part)), None) \
        or next((part for part in _RESERVED_SUFFIXES if bucket.endswith(part)), None)
    if reserved:
        return f"{bucket!r} is not a valid S3 bucket name: {reserved!r} is reserved by S3"
    return None


def _dot_segment(segment: str) -> bool:
    """True for a path segment made only of dots (and spaces) once ';' parameters are dropped:
    `.`/`..` as RFC 3986 resolves them, `..;x` as Java proxies read it, `.. ` as Windows trims it."""
    bare = "".join(segment.split(";", 1)[0].split())
    return bare != "" and bare.strip(".") == ""


def key_problem(key: str) -> str | None:
    """Why an object key must not be sent (a dot segment, too long), or None.

    A key is refused when any spelling a store or proxy might resolve holds a `.`/`..` segment: the
    key as given, percent-decoded (repeatedly), NFKC-normalised (U+2025, U+FF0E), with `\\` taken for
    `/`. Keys are otherwise taken literally, as S3 does.
    """
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"the key is longer than S3's limit of {MAX_KEY_BYTES} bytes (UTF-8)"
    spellings = {key}
    decoded = key
    for _ in range(_DECODE_ROUNDS):
        decoded, previous = unquote(decoded), decoded
        if decoded == previous:
            break
        spellings.add(decoded)
    spellings |= {unicodedata.normalize("NFKC", spelling) for spelling in spellings}
    for spelling in spellings:
        if any(_dot_segment(segment) for segment in re.split(r"[/\\]", spelling)):
            return ("the key has a '.' or '..' path segment (in some spelling: percent-decoded, "
                    "Unicode-normalised, '\\' for '/'); a store that resolves it could read another bucket")
    return None


def src_problem(src: str, listed: Collection[str] = ()) -> str | None:
    """Why `src` can never be read as an S3 object or prefix (malformed, bad bucket name, dot segment
    in the key), or None. No I/O; `listed` is S3_BUCKETS. Used at creation (422) and before every fetch."""
    try:
        bucket, key = parse_src(src)
    except SourceRefused as error:
        return error.reason
    return bucket_problem(bucket, listed) or key_problem(key)


def parse_src(src: str) -> tuple[str, str]:
    """(bucket, key) of an `s3://bucket/key` src; the key is everything after the bucket's slash, verbatim."""
    scheme, sep, rest = src.partition("://")
    if scheme.lower() != "s3" or not sep:
        raise SourceRefused(src, "not an s3://bucket/key src")
    bucket, slash, key = rest.partition("/")
    if not bucket or not slash:
        raise SourceRefused(src, "an s3 src needs a bucket and a key: s3://bucket/key")
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
        if code == "InvalidObjectState":  # a 403 from GetObject: archived, not restored
            storage = str(error.response.get("Error", {}).get("StorageClass", "") or "an archive")
            return SourceNotFound(src, _archived_reason(storage))
        if code in ("NoSuchKey", "NotFound", "404") or status == 404:
            return SourceNotFound(src, "not found")
        if code in ("AccessDenied", "Forbidden", "403", "AllAccessDisabled") or status == 403:
            return SourceNotFound(src, "access denied")
        if code in ("PreconditionFailed", "412") or status == 412:
            return SourceChanged(src, "the object changed since the download started (ETag differs)")
        if code == "InvalidRange" or status == 416:
            return SourceChanged(src, "the object is shorter than when the download started")
        message = str(error.response.get("Error", {}).get("Message", ""))
        if code == "InvalidRequest" and "encrypt" in message.lower():
            # AWS (and MinIO): "The object was stored using a form of Server Side Encryption. The
            # correct parameters must be provided to retrieve the object."
            return SourceNotFound(src, "encrypted with a customer-provided key (SSE-C), which this service "
                                       "does not hold: it can't be read")
        return SourceError(src, f"S3 answered {code or 'an error'} (HTTP {status or '?'})")
    if isinstance(error, ValueError):
        return SourceError(src, f"S3 sent a malformed answer ({str(error)[:100]})")
    if isinstance(error, ConnectTimeoutError | ReadTimeoutError):
        return SourceTimeout(src, f"S3 did not answer in time (S3_TIMEOUT): {type(error).__name__}")
    return SourceError(src, f"S3 request failed: {type(error).__name__}")


# Storage classes whose objects GetObject refuses (403 InvalidObjectState) until they are restored.
_ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})


def _archived_reason(storage: str) -> str:
    return f"archived ({storage} storage class): restore it before it can be bundled"


def _archived(head: dict[str, Any]) -> str | None:
    """Why GetObject would refuse the object HeadObject describes (an archive storage class, or an
    Intelligent-Tiering archive tier, with no restored copy: `Restore: ongoing-request="false"`), or None."""
    storage = head.get("StorageClass")
    tier = head.get("ArchiveStatus")
    if storage not in _ARCHIVE_CLASSES and not tier:
        return None
    if 'ongoing-request="false"' in str(head.get("Restore") or ""):
        return None
    return _archived_reason(str(tier or storage))


def _explain_bad_request(client: S3Client, bucket: str, key: str, error: ClientError) -> ClientError:
    """For a HeadObject `400`, the GetObject error that says why (a HEAD answer has no body, so botocore
    only sees "400": an SSE-C object, but also a wrong region or a malformed request); else `error`."""
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status != 400:
        return error
    try:
        client.get_object(Bucket=bucket, Key=key, Range="bytes=0-0")["Body"].close()
    except ClientError as explained:
        return explained
    except BotoCoreError:
        pass
    return error


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)", re.ASCII)


def _etag(value: object) -> str:
    """An ETag as compared: quotes dropped (some stores list ETags unquoted)."""
    return str(value or "").strip().strip('"')


def _check_same_version(info: SourceInfo, start: int, response: dict[str, Any]) -> None:
    """Raise SourceChanged unless a GetObject answer for the bytes from `start` is of `info`'s version.

    ETag equal (quotes aside); Last-Modified equal to the second (HTTP dates have no fractions, a
    listing's may); ContentLength the bytes asked for; Content-Range, when there is one (always for a
    ranged GET), starting at `start` and ending at the object's last byte, of the object's size.
    """
    src = info.src
    etag = response.get("ETag")
    if info.etag and _etag(etag) != _etag(info.etag):
        raise SourceChanged(src, f"the object changed since the download started "
                                 f"(ETag {etag or '(none)'}, expected {info.etag})")
    modified = _utc(response.get("LastModified"))
    if info.last_modified is not None and modified is not None \
            and modified.replace(microsecond=0) != info.last_modified.replace(microsecond=0):
        raise SourceChanged(src, f"the object changed since the download started "
                                 f"(Last-Modified {modified.isoformat()}, expected {info.last_modified.isoformat()})")
    expected = None if info.size is None else info.size - start
    length = response.get("ContentLength")
    if expected is not None and length is not None and int(length) != expected:
        raise SourceChanged(src, f"S3 sent {length} bytes, expected {expected}")
    content_range = response.get("ContentRange")
    if content_range is None:
        if start:
            raise SourceChanged(src, f"S3 answered a GET for the bytes from {start} without a Content-Range")
        return
    match = _CONTENT_RANGE.fullmatch(str(content_range))
    try:  # a 5,000-digit position is no size (and int() refuses it: a ValueError)
        got = None if match is None else tuple(parse_digits(group) for group in match.groups())
    except NotANumber:
        got = None
    wanted = None if info.size is None else (start, info.size - 1, info.size)
    if got is None or (wanted is not None and got != wanted) or (wanted is None and got[0] != start):
        raise SourceChanged(src, f"S3 answered with Content-Range {content_range!r}, asked for the bytes from "
                                 f"{start} of {info.size if info.size is not None else '?'}")


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _has_checksum(answer: dict[str, Any]) -> bool:
    """True if a GetObject/HeadObject answer carries a stored checksum (any algorithm: x-amz-checksum-*)."""
    return any(name.startswith("Checksum") and name != "ChecksumMode" and value for name, value in answer.items())


def _info(src: str, bucket: str, key: str, answer: dict[str, Any], size: int | None = None) -> SourceInfo:
    """What a HeadObject answer (or a GetObject answer of the whole object, with `size`) says of `src`."""
    return SourceInfo(
        src=src,
        name=key,
        size=int(answer["ContentLength"]) if size is None else size,
        etag=answer.get("ETag"),
        last_modified=_utc(answer.get("LastModified")),
        crc32=_crc32(answer),
        location=(bucket, key),
    )


def _whole_size(response: dict[str, Any]) -> int | None:
    """The object's size from a GetObject answer for the bytes from 0: the Content-Range total of a
    206 that starts at 0 and runs to the end, the length of a 200 (a store ignoring Range); None if
    the answer is neither (HeadObject is asked instead)."""
    content_range = response.get("ContentRange")
    try:
        length = parse_digits(str(response.get("ContentLength")))
        if content_range is None:
            return length
        match = _CONTENT_RANGE.fullmatch(str(content_range))
        if match is None:
            return None
        first, last, total = (parse_digits(group) for group in match.groups())
    except NotANumber:
        return None
    if first != 0 or last != total - 1 or length != total:
        return None
    return total


def _read_first(body: Any, count: int) -> bytes | None:
    """The first `count` bytes of a GetObject body, or None if it ends or fails before them."""
    parts: list[bytes] = []
    got = 0
    try:
        while got < count:
            part = body.read(count - got)
            if not part:
                return None
            parts.append(part)
            got += len(part)
    except _BODY_ERRORS:
        return None
    return b"".join(parts)


class S3Source:
    """Reads objects through one boto3 client per process (see zipstream.aws)."""

    schemes: ClassVar[tuple[str, ...]] = ("s3",)

    def __init__(self, config: Config, budget: HoldBudget | None = None) -> None:
        self.config = config  # the client's settings: AWS_REGION, S3_TIMEOUT, S3_PATH_STYLE (aws.py)
        self.buckets = frozenset(config.s3_buckets)
        self.fetch_bytes = config.preflight_fetch_bytes  # PREFLIGHT_FETCH_BYTES: what pre-flight keeps
        hold = config.preflight_hold_bytes if config.preflight_fetch_bytes else 0
        self.budget = budget if budget is not None else HoldBudget(hold)  # PREFLIGHT_HOLD_BYTES
        # Whether the store at each endpoint (None: AWS) sends an object's stored checksum with a
        # GetObject whose range is the whole object; see `range_checksums`.
        self._range_checksums: dict[str | None, bool] = {}

    @classmethod
    def from_config(cls, config: Config) -> S3Source:
        """S3_BUCKETS, PREFLIGHT_FETCH_BYTES, PREFLIGHT_HOLD_BYTES, and the client's settings (see
        zipstream.aws); the client is made on first use."""
        return cls(config)

    @property
    def client(self) -> S3Client:
        return s3_client(self.config)

    @property
    def range_checksums(self) -> bool | None:
        """Whether the S3 in use sends an object's stored checksum with a GetObject whose range is the
        whole object (`bytes=0-`). AWS does (assumed: True); so does moto; MinIO and Ceph send none
        with any range. A custom endpoint is None until an answer shows it; False sends pre-flight back
        to HeadObject there (the only answer with the checksum)."""
        endpoint = aws_endpoint("s3")
        return self._range_checksums.get(endpoint, True if endpoint is None else None)

    def _learn(self, sends: bool) -> None:
        self._range_checksums[aws_endpoint("s3")] = sends

    def check(self, src: str) -> None:
        problem = src_problem(src, self.buckets)
        if problem is not None:
            raise SourceRefused(src, problem)
        bucket, _key = parse_src(src)
        if self.buckets and bucket not in self.buckets:
            raise SourceRefused(src, f"bucket {bucket} is not in S3_BUCKETS")

    def stat(self, src: str, deadline: Deadline | None = None) -> list[SourceInfo]:
        """HeadObject of a key (with its stored CRC-32: ChecksumMode, and a known CRC-32 decides the
        zip's layout), or ListObjectsV2 of a prefix ending in '/'.

        When the download may hold (held.current()) and its share of the budget has room, a key is
        asked with GetObject instead (see `_stat_get`): the same info, and its first
        PREFLIGHT_FETCH_BYTES kept as `SourceInfo.head` (all of it for an object no bigger)."""
        holding = self._holding()
        if deadline is None:
            return self._stat(src, holding=holding)
        # The client's before-send hook reads the deadline from the thread: no attempt (nor any of
        # botocore's retries) starts once it has passed.
        with deadline.applying():
            try:
                return self._stat(src, s3_client(self.config, preflight=True), holding)
            except DeadlinePassed:
                deadline.check(src)
                raise SourceTimeout(src, f"no answer within {deadline.describe()}") from None

    def _holding(self) -> Holding | None:
        """The running download's share of this source's budget, if it may hold (see held.py)."""
        scope = held.current()
        if scope is None or self.fetch_bytes <= 0 or self.budget.total <= 0:
            return None
        return scope.holding(self.budget)

    def _stat(self, src: str, client: S3Client | None = None, holding: Holding | None = None) -> list[SourceInfo]:
        client = client or self.client
        self.check(src)
        bucket, key = parse_src(src)
        if key == "" or key.endswith("/"):
            return self._list(src, bucket, key, client)
        want = self.fetch_bytes
        if holding is not None and self.range_checksums is not False and holding.reserve(want):
            try:
                found = self._stat_get(src, bucket, key, client, want)
            except BaseException:
                holding.release(want)
                raise
            if found is not None:
                info, data = found
                if data is None:
                    holding.release(want)
                    return [info]
                return [replace(info, head=holding.keep(data, want))]
            holding.release(want)
        return [_info(src, bucket, key, self._head(src, bucket, key, client))]

    def _head(self, src: str, bucket: str, key: str, client: S3Client) -> dict[str, Any]:
        """HeadObject's answer (ChecksumMode: with the stored checksum, if any), errors translated; an
        archived object is refused (SourceNotFound) as GetObject refuses it, before any byte is sent."""
        try:
            head = dict(client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"))
        except ClientError as error:
            raise translate(src, _explain_bad_request(client, bucket, key, error)) from None
        except (BotoCoreError, ValueError) as error:  # ValueError: see _ANSWER_ERRORS
            raise translate(src, error) from None
        archived = _archived(head)
        if archived is not None:
            raise SourceNotFound(src, archived)
        return head

    def _stat_get(self, src: str, bucket: str, key: str, client: S3Client,
                  want: int) -> tuple[SourceInfo, bytes | None] | None:
        """Pre-flight by `GetObject Range: bytes=0-` (ChecksumMode): the info HeadObject would give,
        and the object's first `want` bytes (all of them if it has no more), or None for bytes not
        worth keeping. None instead of the pair where HeadObject must answer: an empty object (it
        has no byte 0: 416 InvalidRange) or an answer that gives no size.

        Open-ended, so that the range is the whole object and the answer carries the stored checksum
        as HeadObject's does (S3 sends none with a range that is part of an object); a bigger
        object's body is closed after `want` bytes. Where the answer has no checksum and this store
        was never seen to send one with a range, HeadObject says whether the object has one.
        """
        try:
            answer = client.get_object(Bucket=bucket, Key=key, Range="bytes=0-", ChecksumMode="ENABLED")
        except ClientError as error:
            if _code(error) == "InvalidRange" or _status(error) == 416:
                return None  # an empty object: HeadObject tells its validators (a 416 carries none)
            raise translate(src, error) from None
        except (BotoCoreError, ValueError) as error:
            raise translate(src, error) from None
        body, response = answer["Body"], dict(answer)
        try:
            size = _whole_size(response)
            data = None if size is None else _read_first(body, min(size, want))
        finally:
            body.close()  # a bigger object's connection is dropped here, not read out
        if size is None:
            return None
        if data is not None and len(data) < size and response.get("ContentRange") is None:
            data = None  # a store that ignores Range: the rest could not be asked for from byte `want`
        info = _info(src, bucket, key, response, size)
        if _has_checksum(response):
            self._learn(True)
        elif self.range_checksums is not True:
            # No checksum: the object has none, or this store sends none with a range.
            head = self._head(src, bucket, key, client)
            if _has_checksum(head) and self.range_checksums is not False:
                log.info("S3 at %s sends no checksum with a ranged GetObject: pre-flight asks HeadObject "
                         "there from now on", aws_endpoint("s3") or "AWS")
                self._learn(False)
            headed = _info(src, bucket, key, head)
            if (_etag(headed.etag), headed.size) != (_etag(info.etag), info.size):
                return headed, None  # another version since the GET: the stream reads the one HEAD saw
            info = replace(info, crc32=headed.crc32)
        if data is not None and info.crc32 is not None and len(data) == size and zlib.crc32(data) != info.crc32:
            raise SourceError(src, "S3 sent bytes whose CRC-32 differs from the object's stored checksum")
        return info, data

    def _list(self, src: str, bucket: str, prefix: str, client: S3Client) -> list[SourceInfo]:
        """Every object under `prefix`, named relative to the prefix: the objects in key order, then the
        "folder" markers (keys ending in '/') that have content.

        An empty marker (as the S3 console creates) is skipped: its folder shows through its objects.
        A marker with content is a file all the same: it is bundled, named like its folder (a zip name
        ending in '/' would be a directory entry), after the objects so that where a folder of that name
        exists the marker is the one `unique_names` renames. A listed key with a dot segment is refused
        (SourceRefused naming it): whoever may write to an allowed bucket could plant one.
        """
        infos: list[SourceInfo] = []
        markers: list[SourceInfo] = []
        try:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"]
                    size = int(item["Size"])
                    marker = key.endswith("/")
                    if marker and size == 0:
                        continue
                    problem = key_problem(key)
                    if problem is not None:
                        raise SourceRefused(f"s3://{bucket}/{key}", problem)
                    name = key[len(prefix):]
                    if marker:
                        name = name.rstrip("/") or prefix.rstrip("/").rsplit("/", 1)[-1] or bucket
                    (markers if marker else infos).append(SourceInfo(
                        src=f"s3://{bucket}/{key}",
                        name=name,
                        size=size,
                        etag=item.get("ETag"),
                        last_modified=_utc(item.get("LastModified")),
                        location=(bucket, key),
                    ))
        except _ANSWER_ERRORS as error:
            raise translate(src, error) from None
        if not infos and not markers:
            raise SourceNotFound(src, "no objects under prefix")
        # S3 lists in UTF-8 byte order, which is code point order; S3-compatible stores may not.
        infos.sort(key=lambda info: info.location[1])
        markers.sort(key=lambda info: info.location[1])
        return infos + markers

    def open(self, info: SourceInfo, start: int = 0) -> Iterator[bytes]:
        """The object's bytes from `start`, only if GetObject answers as the version `info` describes.

        IfMatch asks the store to refuse another version, but a store may ignore it: the answer's own
        validators (ETag, Last-Modified, length, Content-Range) are compared with pre-flight's before a
        byte is used, and any difference raises SourceChanged, as a 412 does.
        """
        bucket, key = info.location if len(info.location) == 2 else parse_src(info.src)
        problem = key_problem(key)  # never sent, whatever was stored or listed
        if problem is not None:
            raise SourceRefused(info.src, problem)
        if info.size is not None and start >= info.size:
            return  # nothing left to read (and "bytes=<size>-" would be an unsatisfiable range)
        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if info.etag:
            params["IfMatch"] = info.etag  # a changed object fails with 412 instead of splicing versions
        if start:
            params["Range"] = f"bytes={start}-"
        try:
            response = self.client.get_object(**params)
        except _ANSWER_ERRORS as error:
            raise translate(info.src, error) from None
        body = response["Body"]
        try:
            _check_same_version(info, start, dict(response))
            expected = None if info.size is None else info.size - start
            received = 0
            try:
                for chunk in body.iter_chunks(CHUNK_SIZE):
                    received += len(chunk)
                    yield chunk
                    del chunk  # not kept while the next is read (memory.py: a grant covers one chunk)
            except _BODY_ERRORS as error:
                raise SourceInterrupted(
                    info.src, f"connection lost after {start + received} bytes ({type(error).__name__})"
                ) from None
            if expected is not None and received != expected:
                raise SourceInterrupted(info.src, f"S3 sent {received} of {expected} bytes")
        finally:
            body.close()
