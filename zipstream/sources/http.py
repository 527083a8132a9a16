"""HTTP(S) filestore: `http://` and `https://` srcs, fetched with requests through a guarded pool."""

from __future__ import annotations

import contextlib
import logging
import zlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.utils import requote_uri

from .. import metrics
from ..chunks import CHUNK_SIZE
from ..config import Config
from ..deadline import Deadline, current, shut
from ..errors import (
    ClientGone,
    SourceChanged,
    SourceError,
    SourceInterrupted,
    SourceNotFound,
    SourceRefused,
    SourceTimeout,
)
from ..names import name_from_src
from ..numbers import NotANumber, NumberTooLarge, is_digits, parse_digits
from ..numbers import http_date as _http_date
from . import SourceInfo
from .held import Holding
from .netguard import AddressRefused, Policy, guarded_pool_manager, literal_address, unusual_literal

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
RETRY_STATUSES = frozenset({500, 502, 503, 504, 429})
BACKOFF = (0.2, 0.6, 1.5)
# A retry is worth starting only with at least this long left for it before the pre-flight deadline.
MIN_ATTEMPT = 0.25
# A Retry-After longer than this is not waited for while a zip streams (nothing reaches the client
# meanwhile; proxies cut idle connections); pre-flight waits as long as its deadline allows.
MAX_RETRY_AFTER_STREAMING = 10.0
# Statuses of a saved redirect target that send a continuation back to the URL the bundle names:
# a signed URL that expired (403, 401), or one a CDN no longer knows (404, 410).
RE_RESOLVE_STATUSES = frozenset({401, 403, 404, 410})
# Content-Encodings decoded here (a browser saves the decoded file); others are refused.
DECODABLE = frozenset({"gzip", "x-gzip", "deflate"})
BASE_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "zipstream", "Accept": "*/*"}
_NO_DEADLINE = Deadline(None)


class _GuardedAdapter(HTTPAdapter):
    def __init__(self, policy: Policy, pool_size: int) -> None:
        self._policy = policy
        super().__init__(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **kwargs: Any) -> None:
        self.poolmanager = guarded_pool_manager(
            self._policy, num_pools=connections, maxsize=maxsize, block=block, **kwargs
        )


def _refused(error: BaseException) -> AddressRefused | None:
    """The AddressRefused buried in a requests/urllib3 exception chain, if any."""
    seen: set[int] = set()
    stack: list[object] = [error]
    while stack:
        current = stack.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, AddressRefused):
            return current
        stack.extend([current.__cause__, current.__context__, *current.args,
                      getattr(current, "reason", None)])
    return None


def _content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """(first, last, total or None) of a `bytes first-last/total` Content-Range, None if malformed.

    RFC 9110 §14.4: `bytes SP first-pos "-" last-pos "/" ( complete-length / "*" )`, positions
    ASCII digits of at most numbers.MAX_BYTES, last < total. Anything else (a multipart answer's
    missing field too) is None: no size is learned from it, and a continuation fails as not the
    range asked for.
    """
    unit, _, spec = (value or "").strip(" \t").partition(" ")
    span, _, total = spec.partition("/")
    first, _, last = span.partition("-")
    if unit.lower() != "bytes":
        return None
    try:
        start, end = parse_digits(first), parse_digits(last)
        length = None if total == "*" else parse_digits(total)
    except NotANumber:
        return None
    if end < start or (length is not None and end >= length):
        return None
    return start, end, length


def _content_length(response: requests.Response) -> int | None:
    """The body length an answer announces, or None without one.

    RFC 9112 §6.3: a Transfer-Encoding overrides Content-Length (None then); a list of equal
    values (`5, 5`) is that value; any other value -- not ASCII digits, different values (urllib3
    refuses those itself), over numbers.MAX_BYTES -- makes the framing invalid, an unrecoverable
    error: raises NotANumber (see _invalid_length).
    """
    value = response.headers.get("Content-Length")
    if value is None or response.headers.get("Transfer-Encoding"):
        return None
    parts = [part.strip(" \t") for part in value.split(",")]
    lengths = {parse_digits(part) for part in parts if part}  # empty list elements: RFC 9110 §5.6.1.2
    if len(lengths) != 1:
        raise NotANumber(f"several lengths: {value[:40]!r}")
    return lengths.pop()


def _invalid_length(src: str, response: requests.Response) -> SourceError:
    """The error for an answer whose Content-Length is invalid (502); its connection is dropped."""
    response.close()
    value = response.headers.get("Content-Length", "")
    return SourceError(src, f"upstream sent an invalid Content-Length ({value[:40]!r})")


def redirect_target(url: str, location: str) -> str:
    """The absolute URL a `Location` header sends `url` to, as a browser would follow it.

    http.client reads header bytes as Latin-1; servers commonly send raw UTF-8 in `Location`, so the
    bytes are decoded as UTF-8 when they are valid UTF-8 (else kept as Latin-1 text), then
    percent-encoded once (existing %XX escapes kept). Relative and scheme-relative locations are
    resolved against `url`; a fragment is dropped (it is never sent to a server).
    """
    try:
        text = location.strip().encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        text = location.strip()
    target, _fragment = urldefrag(urljoin(url, text))
    return str(requote_uri(target))


def _retry_after(response: requests.Response) -> float | None:
    """Seconds a 429/503 asks to wait (Retry-After as delta-seconds or an HTTP date), else None."""
    if response.status_code not in (429, 503):
        return None
    value = response.headers.get("Retry-After", "").strip(" \t")
    if is_digits(value):  # delay-seconds (RFC 9110 §10.2.3)
        try:
            return float(parse_digits(value))
        except NumberTooLarge:
            return float("inf")  # longer than any deadline: no retry
    when = _http_date(value)
    if when is None:
        return None
    try:
        return max(0.0, (when - datetime.now(when.tzinfo)).total_seconds())
    except TypeError:  # a date without a zone
        return None


def _encoding(response: requests.Response) -> str:
    """The body's Content-Encoding, lower-cased; '' for identity."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    return "" if encoding == "identity" else encoding


def _decoded(src: str, chunks: Iterator[bytes], encoding: str) -> Iterator[bytes]:
    """The decoded body of a gzip/deflate-encoded one, in pieces of at most CHUNK_SIZE (a small
    compressed chunk can stand for gigabytes: memory stays bounded). "deflate" is zlib-wrapped per
    RFC 9110, but some servers send it raw: both are read."""
    wbits = zlib.MAX_WBITS | 16 if encoding in ("gzip", "x-gzip") else zlib.MAX_WBITS
    decoder = zlib.decompressobj(wbits)
    first = True
    for chunk in chunks:
        data = chunk
        while True:
            try:
                out = decoder.decompress(data, CHUNK_SIZE)
            except zlib.error as error:
                if first and encoding == "deflate" and wbits > 0:  # raw deflate, no zlib header
                    wbits, decoder = -zlib.MAX_WBITS, zlib.decompressobj(-zlib.MAX_WBITS)
                    continue
                raise SourceError(src, f"upstream sent a corrupt {encoding} body ({error})") from None
            first = False
            data = decoder.unconsumed_tail
            if out:
                yield out
            if decoder.eof:
                return
            if not data and len(out) < CHUNK_SIZE:  # a full piece may leave output pending: ask again
                break
    if not decoder.eof:
        raise SourceInterrupted(src, f"the {encoding} body ended before its end")


def _completed(got: SourceInfo, head: SourceInfo) -> SourceInfo:
    """The GET's info with what it lacked filled in from a HEAD's; not `stable` where both said
    something and they disagree (per-host ETags or mtimes behind a load balancer)."""
    disagree = ((got.size is not None and head.size is not None and got.size != head.size)
                or (got.etag is not None and head.etag is not None and got.etag != head.etag)
                or (got.last_modified is not None and head.last_modified is not None
                    and got.last_modified != head.last_modified))
    return replace(
        got,
        size=got.size if got.size is not None else head.size,
        etag=got.etag if got.etag is not None else head.etag,
        last_modified=got.last_modified if got.last_modified is not None else head.last_modified,
        stable=got.stable and not disagree,
    )


@contextlib.contextmanager
def _abortable(response: requests.Response) -> Iterator[None]:
    """While the body is read, the current deadline (if any) may cut the connection: a body that
    trickles in never trips the per-read timeout."""
    deadline = current()
    if deadline is None:
        yield
        return
    connection = getattr(response.raw, "connection", None)
    with deadline.aborting(lambda: shut(getattr(connection, "sock", None))):
        yield


def _read_small_body(response: requests.Response, expected: int | None, limit: int) -> bytes | None:
    """The body if it is exactly `expected` (at most `limit`) bytes as announced, else None; either way
    the response is finished: read out (its connection kept) or closed."""
    if expected is None or expected > limit or response.headers.get("Content-Length") != str(expected):
        _release(response)  # read out if small, else drop the connection (a server ignoring Range)
        return None
    try:
        with _abortable(response):
            data: bytes | None = response.content
    except requests.RequestException:
        data = None
    response.close()
    return data if data is not None and len(data) == expected else None


def _body_chunks(response: requests.Response) -> Iterator[bytes]:
    """The raw body as it arrives. Not `raw.stream(n)`: a read of n bytes cut short by a reset
    raises and drops the bytes it already had, so a resume would start over from the same place."""
    while chunk := response.raw.read1(CHUNK_SIZE, decode_content=False):
        yield chunk


def _release(response: requests.Response) -> None:
    """Done with a response whose body we don't need: keep its connection alive when that is cheap.

    `Response.close()` on an unread body closes the socket; a HEAD (or a tiny body) is read out
    instead so the connection goes back to the pool — pre-flight of 1,000 files would otherwise
    open 1,000 connections.
    """
    try:
        length = _content_length(response)
    except NotANumber:  # invalid framing: the connection can't be reused
        length = None
    if response.request.method == "HEAD" or (length is not None and length <= 65536):
        with contextlib.suppress(requests.RequestException), _abortable(response):
            response.content  # noqa: B018 - reading it out is the point
    response.close()


class HttpSource:
    """Reads http(s) URLs; every connection (and redirect hop) is checked by the address policy."""

    schemes: tuple[str, ...] = ("http", "https")

    def __init__(self, config: Config, policy: Policy | None = None) -> None:
        self.policy = policy or Policy(allow_private=config.http_allow_private, hosts=config.http_hosts)
        self.timeout_seconds = config.http_timeout
        self.timeout = (min(10.0, config.http_timeout), config.http_timeout)
        # Requests go straight to the transport adapter, not through a Session: no cookie jar shared
        # between unrelated bundles, no proxies from the environment, and about half the CPU per
        # request (Session merges settings and cookies on every call; bench B2 is CPU-bound on it).
        self.adapter = _GuardedAdapter(self.policy, pool_size=max(10, config.preflight_concurrency * 4))
        self.fetch_bytes = config.preflight_fetch_bytes
        self.verify: bool | str = True  # TLS: the system's CA bundle (a path to another bundle in tests)

    def check(self, src: str) -> None:
        parts = urlsplit(src)
        if parts.scheme not in self.schemes or not parts.hostname:
            raise SourceRefused(src, "not a valid http(s) URL")
        if parts.username or parts.password:
            raise SourceRefused(src, "credentials in URLs are not accepted")
        if not self.policy.host_allowed(parts.hostname):
            raise SourceRefused(src, f"host {parts.hostname} is not in HTTP_HOSTS")
        reason = self.policy.literal_refusal(parts.hostname)
        if reason:
            raise SourceRefused(src, f"{reason}; only public addresses may be fetched (HTTP_ALLOW_PRIVATE)")
        if unusual_literal(parts.hostname):
            raise SourceRefused(src, f"{parts.hostname} is the IP address {literal_address(parts.hostname)} in a "
                                     "notation HTTP clients read differently; write it in ASCII without a trailing dot")

    def _send(self, method: str, url: str, headers: dict[str, str],
              deadline: Deadline = _NO_DEADLINE) -> requests.Response:
        """One HTTP exchange, body not read (redirects are not followed here); its timeouts are
        HTTP_TIMEOUT's, capped by the time the deadline leaves."""
        request = requests.PreparedRequest()
        # Only the parts a body-less GET/HEAD needs: no auth from the URL (refused at check()), no
        # cookie jar (one per request costs a lock), no body.
        request.prepare_method(method)
        request.prepare_url(url, None)
        request.prepare_headers({**BASE_HEADERS, **headers})
        connect, read = (max(0.001, deadline.cap(limit)) for limit in self.timeout)
        return self.adapter.send(request, stream=True, timeout=(connect, read), verify=self.verify)

    def _request(self, method: str, src: str, url: str, headers: dict[str, str],
                 retry: bool = True, deadline: Deadline = _NO_DEADLINE, retries: int = len(BACKOFF),
                 validated_at: str | None = None, elsewhere: dict[str, str] | None = None) -> requests.Response:
        """One request with our redirect rules and retries of transient failures (nothing sent yet).

        Every attempt and back-off fits in `deadline`: none starts after it (SourceTimeout, or
        ClientGone if it was cancelled), and a back-off that would outlast it is not waited for.
        A 429/503's Retry-After is the back-off when given (see `_pause`). `elsewhere`, if given, are
        the headers sent instead of `headers` to any URL other than `validated_at` (a redirect to a
        mirror: an ETag means something only to the resource that issued it).
        """
        attempts = 0
        for _hop in range(MAX_REDIRECTS + 1):
            sent = headers if elsewhere is None or url == validated_at else elsewhere
            while True:
                deadline.check(src)
                capped = deadline.remaining() < self.timeout_seconds  # this attempt ends at the deadline
                try:
                    response = self._send(method, url, sent, deadline)
                except requests.RequestException as error:
                    refused = _refused(error)
                    if refused is not None:
                        raise SourceRefused(src, str(refused)) from None
                    deadline.check(src)  # cut short by the deadline or by the client leaving
                    if retry and attempts < min(retries, len(BACKOFF)) and self._back_off(deadline, attempts):
                        attempts += 1
                        continue
                    if deadline.cancelled:
                        raise ClientGone("the client closed the connection during pre-flight") from None
                    if isinstance(error, requests.Timeout):
                        within = deadline.describe() if capped else f"{self.timeout_seconds:g} s (HTTP_TIMEOUT)"
                        raise SourceTimeout(src, f"no answer within {within}, {attempts + 1} attempts") from None
                    raise SourceError(src, f"connection failed ({type(error).__name__}), "
                                           f"{attempts + 1} attempts") from None
                # A 5xx/429 is retried only if the retry fits; otherwise it is the answer (a 502).
                if response.status_code in RETRY_STATUSES and retry and attempts < min(retries, len(BACKOFF)):
                    pause = self._pause(response, deadline, attempts)
                    if pause is not None:
                        response.close()
                        if not deadline.sleep(pause):
                            deadline.check(src)  # cancelled during the back-off
                            raise SourceTimeout(src, f"no time left for a retry within {deadline.describe()}")
                        attempts += 1
                        continue
                break
            if response.is_redirect:
                location = response.headers.get("Location", "")
                response.close()
                try:
                    target = redirect_target(url, location)
                    scheme, target_host = urlsplit(target).scheme, urlsplit(target).hostname or ""
                except ValueError:  # "http://[::1" and the like: urljoin/urlsplit raise on them
                    raise SourceError(src, f"upstream redirected to an invalid URL ({location[:200]!r})") from None
                if scheme not in ("http", "https"):
                    raise SourceRefused(src, f"redirect to a non-http URL ({scheme})")
                if urlsplit(url).scheme == "https" and scheme == "http":
                    raise SourceRefused(src, "redirect from https to http")
                if not self.policy.host_allowed(target_host):
                    raise SourceRefused(src, "redirect to a host not in HTTP_HOSTS")
                url = target
                continue
            return response
        raise SourceRefused(src, f"more than {MAX_REDIRECTS} redirects (the redirect limit)")

    @staticmethod
    def _pause(response: requests.Response, deadline: Deadline, attempts: int) -> float | None:
        """Seconds to wait before retrying this answer, or None if no retry fits.

        A 429/503 naming a Retry-After is retried after exactly that (a rate limiter refuses earlier
        retries), if it fits in the deadline with MIN_ATTEMPT to spare; with no deadline (while a
        zip streams) only up to MAX_RETRY_AFTER_STREAMING. Otherwise the fixed BACKOFF applies.
        """
        asked = _retry_after(response)
        pause = BACKOFF[attempts] if asked is None else asked
        if asked is not None and deadline.seconds is None and asked > MAX_RETRY_AFTER_STREAMING:
            return None
        if pause + MIN_ATTEMPT >= deadline.remaining():
            return None
        return pause

    @staticmethod
    def _back_off(deadline: Deadline, attempts: int) -> bool:
        """Wait before retry `attempts + 1`; False (not waiting) if no retry fits before the deadline
        (the back-off plus MIN_ATTEMPT), or if the deadline is cancelled meanwhile."""
        if BACKOFF[attempts] + MIN_ATTEMPT >= deadline.remaining():
            return False
        return deadline.sleep(BACKOFF[attempts])

    @staticmethod
    def _fail(src: str, response: requests.Response) -> SourceError:
        status = response.status_code
        response.close()
        if status in (404, 410):
            return SourceNotFound(src, "not found (HTTP 404)" if status == 404 else "gone (HTTP 410)")
        if status in (401, 403):
            return SourceNotFound(src, f"access denied (HTTP {status})")
        asked = response.headers.get("Retry-After") if status in (429, 503) else None
        if asked:
            return SourceError(src, f"upstream answered HTTP {status} (Retry-After: {asked.strip()}; "
                                    "no retry fitted in the time left)")
        return SourceError(src, f"upstream answered HTTP {status}")

    def stat(self, src: str, holding: Holding | None = None,
             deadline: Deadline | None = None) -> list[SourceInfo]:
        """Size and validators of `src`, by a ranged GET (what any server that serves the file
        answers, HEAD or not): of its first bytes, kept, when the holding has room for them (one
        request instead of two for a small file), else of its first byte."""
        self.check(src)  # a bundle stored before a rule changed meets today's rules, as at creation
        with (deadline or _NO_DEADLINE).applying() as applied:  # for the connection's abort hook
            return self._stat(src, holding, applied)

    def _stat(self, src: str, holding: Holding | None, deadline: Deadline) -> list[SourceInfo]:
        # The same kind of request on every route (whole zip, HEAD, range, If-None-Match), read the
        # same way: the zip's layout and ETag follow from its answer, so they can't depend on which
        # route asked. Only its length differs: the first bytes where they can be held for the
        # stream, else one byte (a HEAD or a resume would read and discard them).
        want = self.fetch_bytes
        kept = holding is not None and want > 0 and holding.reserve(want)
        try:
            info, data = self._stat_get(src, want if kept else 1, deadline, keep=kept)
        except BaseException:
            if holding is not None and kept:
                holding.release(want)
            raise
        if holding is None or not kept:
            return [info]
        if data is None:
            holding.release(want)
            return [info]
        return [replace(info, head=holding.keep(data, want))]

    def _stat_head(self, src: str, deadline: Deadline) -> SourceInfo | None:
        """What a HEAD says of `src`, or None if it answers with anything but a 2xx: a presigned URL
        is signed for GET only (403), some servers don't implement HEAD (405, 501). The GET that
        read the file is what counts; a refused HEAD is not "access denied"."""
        response = self._request("HEAD", src, src, {}, deadline=deadline)
        if response.status_code >= 300:
            response.close()
            return None
        _release(response)
        try:
            return self._info(src, response, _content_length(response))
        except (SourceError, NotANumber):  # an encoded HEAD or an invalid length: not the file's
            return None

    def _stat_get(self, src: str, want: int, deadline: Deadline,
                  keep: bool = True) -> tuple[SourceInfo, bytes | None]:
        """Pre-flight by `GET Range: bytes=0-{want-1}`: the info, and (if `keep`) the bytes worth
        keeping (the whole file, or a first part the member can continue from with If-Range), or None.

        A 200 carries every header field a HEAD would (RFC 9110 §9.3.2); a 206 need not (only the
        ETag is required there). Only when the answer lacks the size, or (not a 200)
        an ETag or a Last-Modified, is a HEAD asked for what is missing; a HEAD that is refused
        leaves the GET's answer as it is. Where the two disagree the source's validators can't be
        trusted across requests (`SourceInfo.stable` False).
        """
        response = self._request("GET", src, src, {"Range": f"bytes=0-{want - 1}"}, deadline=deadline)
        if response.status_code == 416:
            # An empty file has no byte 0, and a 416 need not carry the validators: a plain GET of
            # it costs what a HEAD would, and every server that serves the file answers it.
            _release(response)
            response = self._request("GET", src, src, {}, deadline=deadline)
        status = response.status_code
        size: int | None = None
        expected: int | None = None
        if status >= 400:
            raise self._fail(src, response)
        try:
            length = _content_length(response)
        except NotANumber:
            raise _invalid_length(src, response) from None
        if status == 206:
            content_range = _content_range(response.headers.get("Content-Range"))
            if content_range is not None and content_range[0] == 0:
                size, expected = content_range[2], content_range[1] + 1
            # else multipart/byteranges, or not what was asked: no size from it (a HEAD may tell)
        else:  # 200: the server ignored the range and sends the whole file
            size = length
            expected = size if size is not None and size <= want else None
        try:
            info = self._info(src, response, size)
        except SourceError:
            response.close()
            raise
        if info.size is None and _encoding(response):
            expected = None  # encoded: the bytes received are not the file's first bytes
        if status == 206 and expected is None:
            _release(response)
            data: bytes | None = None
        elif keep:
            data = _read_small_body(response, expected, want)
        else:
            _release(response)
            data = None
        if size is None or (status != 200 and (info.etag is None or info.last_modified is None)):
            head_info = self._stat_head(src, deadline)
            if head_info is not None:
                info = _completed(info, head_info)
        if data is not None and len(data) != info.size and (info.strong_etag is None or not info.stable):
            # A first part is only worth keeping if the rest can be asked for safely: If-Range
            # needs a strong ETag (a weak one or a date can't promise the same bytes).
            data = None
        return info, data

    @staticmethod
    def _info(src: str, response: requests.Response, size: int | None) -> SourceInfo:
        headers = response.headers
        encoding = _encoding(response)
        if encoding and encoding not in DECODABLE:
            # We asked for identity; an encoded body is not the file's bytes (and its length lies).
            raise SourceError(src, f"upstream sends a {encoding}-encoded body although asked for identity")
        if encoding:
            # Decoded on the way (what a browser saves); its length is the encoded one, the file's unknown.
            size = None
        return SourceInfo(
            src=src,
            name=name_from_src(src),
            size=size,
            etag=headers.get("ETag"),
            last_modified=_http_date(headers.get("Last-Modified")),
            location=(response.url or src,),
        )

    def open(self, info: SourceInfo, start: int = 0) -> Iterator[bytes]:
        """The bytes from `start`, as a browser continues a download.

        Asked from the URL pre-flight ended at (after redirects); if that target refuses (a signed
        URL that expired, RE_RESOLVE_STATUSES) or can't be reached, from the URL the bundle names
        again. A `206` starting before `start` is trimmed; a server failing ranged requests is
        read whole with the bytes before `start` skipped (zipstream_upstream_bytes_discarded).
        A gzip/deflate-encoded body is decoded. Raises SourceChanged / SourceError.
        """
        saved = info.location[0] if info.location else info.src
        response: requests.Response | None
        try:
            response = self._open_at(info, saved, saved, start)
        except SourceError:
            if saved == info.src:
                raise
            response = None
        if saved != info.src and (response is None or response.status_code in RE_RESOLVE_STATUSES):
            if response is not None:
                response.close()
            log.info("re-resolving %s: its saved redirect target no longer answers", info.src)
            response = self._open_at(info, info.src, saved, start)
        assert response is not None  # only None when the saved target failed, and then re-resolved
        try:
            if start and response.status_code == 206 and not self._vouched(info, response, saved, start):
                # A 206 naming no version (a 206 may leave Last-Modified out; some servers drop the
                # ETag too): the whole file does (a 200 carries them), its first bytes skipped.
                log.warning("%s: the 206 from byte %d names no version; reading it whole to check it",
                            info.src, start)
                url = response.url or saved
                response.close()
                response = self._request("GET", info.src, url, {}, retry=True)
            yield from self._read(info, response, start, saved)
        finally:
            response.close()

    def _open_at(self, info: SourceInfo, url: str, validated_at: str, start: int) -> requests.Response:
        """GET `url` for the bytes from `start`; a server failing the ranged request is asked whole."""
        if not start:
            return self._request("GET", info.src, url, {}, retry=True)
        headers = {"Range": f"bytes={start}-"}
        validator = self._validator(info)
        if validator:
            headers["If-Range"] = validator
        elsewhere = headers
        if info.last_modified is not None:
            elsewhere = {**headers, "If-Range": format_datetime(info.last_modified, usegmt=True)}
        # One retry only: a server that fails ranged requests (some proxies, object gateways) answers
        # a plain GET, and that is tried next rather than backing off on the ranged one.
        response = self._request("GET", info.src, url, headers, retries=1,
                                 validated_at=validated_at, elsewhere=elsewhere)
        if response.status_code >= 500 or response.status_code == 416:
            log.warning("%s: ranged GET answered HTTP %d; reading it whole from byte 0 instead",
                        info.src, response.status_code)
            response.close()
            response = self._request("GET", info.src, url, {}, retry=True)
        return response

    def _read(self, info: SourceInfo, response: requests.Response, start: int,
              validated_at: str) -> Iterator[bytes]:
        status = response.status_code
        if status >= 400:
            raise self._fail(info.src, response)
        if status not in (200, 206):
            raise SourceError(info.src, f"upstream answered HTTP {status} to a GET")
        self._check_same_version(info, response, validated_at, start)
        encoding = _encoding(response)
        if encoding and encoding not in DECODABLE:
            raise SourceError(info.src, f"upstream sent a {encoding}-encoded body although asked for identity")
        if encoding and start:
            # A range of an encoded body counts encoded bytes: nothing to continue from.
            raise SourceChanged(info.src, f"upstream now sends a {encoding}-encoded body; can't continue it")
        # Range ignored (or failing) at the server: the whole file, the version checked above.
        skip = start if status == 200 else self._range_skip(info, response, start)
        expected = None if info.size is None else info.size - start
        try:
            length = _content_length(response)
        except NotANumber:
            raise _invalid_length(info.src, response) from None
        announced = length - skip if length is not None and not encoding else None
        if expected is not None and announced is not None and announced != expected:
            raise SourceChanged(info.src, f"upstream announced {announced} bytes, expected {expected}")
        discarded = metrics.UPSTREAM_BYTES_DISCARDED.labels("https")
        body = _body_chunks(response)
        received = 0
        try:
            for chunk in _decoded(info.src, body, encoding) if encoding else body:
                if skip:  # read only to be skipped: counted as it arrives
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        discarded.inc(len(chunk))
                        continue
                    discarded.inc(skip)
                    chunk, skip = chunk[skip:], 0
                received += len(chunk)
                if expected is not None and received > expected:
                    raise SourceChanged(info.src, f"upstream sent more than the {expected} bytes expected")
                yield chunk
        except SourceError:
            raise
        except Exception as error:  # noqa: BLE001 - urllib3/socket errors of every kind mean "cut"
            raise SourceInterrupted(info.src, f"connection lost after {start + received} bytes "
                                        f"({type(error).__name__})") from None
        if expected is not None and received != expected:
            raise SourceInterrupted(info.src, f"upstream sent {received} of {expected} bytes")

    @staticmethod
    def _validator(info: SourceInfo) -> str | None:
        if info.strong_etag:
            return info.strong_etag
        if info.last_modified is not None:
            return format_datetime(info.last_modified, usegmt=True)
        return None

    @staticmethod
    def _range_skip(info: SourceInfo, response: requests.Response, start: int) -> int:
        """How many bytes of a 206 come before `start`, once its Content-Range is seen to be the
        rest of pre-flight's file: from at most `start` to its last byte, of pre-flight's total.

        A range of another length is another version (SourceChanged), even when the validators
        agree: a server whose validators don't follow the content. Any other range (starting
        later, ending early, none) is an answer to another question (SourceError).
        """
        got = response.headers.get("Content-Range", "")
        content_range = _content_range(got)
        if content_range is None or content_range[0] > start:
            raise SourceError(info.src, f"asked for bytes from {start}, got {got or 'no Content-Range'}")
        first, last, total = content_range
        if info.size is not None:
            if total != info.size:
                now = "an unstated number of" if total is None else str(total)
                raise SourceChanged(info.src, f"upstream now has {now} bytes (Content-Range {got}), "
                                              f"expected {info.size}")
            if last != info.size - 1:
                raise SourceError(info.src, f"asked for bytes {start}-{info.size - 1}, got {got}")
        return start - first  # a 206 starting earlier than asked: trimmed

    @classmethod
    def _check_same_version(cls, info: SourceInfo, response: requests.Response, validated_at: str,
                            start: int = 0) -> None:
        """Raise SourceChanged unless the answer is of `info`'s version (see `_vouched`)."""
        if not cls._vouched(info, response, validated_at, start):
            # Pre-flight's own validators as `seen`: with nothing of the member sent yet, it is read
            # whole again expecting them.
            raise SourceChanged(info.src, "upstream's answer names no version to compare with pre-flight's "
                                          f"(ETag {response.headers.get('ETag') or 'none'}, Last-Modified "
                                          f"{response.headers.get('Last-Modified') or 'none'})",
                                seen=(info.etag, info.last_modified))

    @staticmethod
    def _vouched(info: SourceInfo, response: requests.Response, validated_at: str, start: int) -> bool:
        """Whether the answer's validators say it is `info`'s version, whatever the server did with
        the conditions it was sent (If-Range is not trusted: some servers and caches ignore it).

        Raises SourceChanged (`seen`: the answer's validators) if one of them differs from
        pre-flight's. False if none differs but none vouches either: one must, an equal
        Last-Modified or an equal ETag (a weak one only for a read from byte 0: equal weak tags
        promise equivalent bytes, not the same ones to go on from). A 206 may leave Last-Modified
        out (RFC 9110 §15.3.7), and a server breaking it the ETag too. True for a source pre-flight
        saw no validators for: it is checked by size only.

        An answer from a URL other than `validated_at` (a redirect to a mirror, a re-signed URL) may
        carry its own ETag for the same bytes: there an equal Last-Modified vouches instead.
        """
        etag = response.headers.get("ETag")
        modified = _http_date(response.headers.get("Last-Modified"))
        elsewhere = response.url != validated_at
        same_date = info.last_modified is not None and modified == info.last_modified
        if info.etag and etag and etag != info.etag and not (elsewhere and same_date):
            raise SourceChanged(info.src, "the file changed since the download started (ETag differs)",
                                seen=(etag, modified))
        if info.last_modified and modified and modified != info.last_modified:
            raise SourceChanged(info.src, "the file changed since the download started (Last-Modified differs)",
                                seen=(etag, modified))
        if info.etag is None and info.last_modified is None:
            return True
        same_tag = etag is not None and etag == info.etag and (start == 0 or not etag.startswith("W/"))
        return same_tag or same_date
