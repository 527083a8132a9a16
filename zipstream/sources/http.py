"""HTTP(S) filestore: `http://` and `https://` srcs, as a browser downloads and continues them.

Pre-flight asks every file with the same ranged GET (`Range: bytes=0-{n-1}`), whichever route asked:
its answer gives the size and validators (a HEAD only for what a 206 left out), and for a download
that streams right after, the first bytes too, held within the source's own budget (held.py). A member
is read by a GET from the URL pre-flight ended at, continued with `Range` + `If-Range`, and every
answer's validators and lengths are compared with pre-flight's before a byte of it is used: a server
that ignores If-Range, drops its validators or changed the file never gets two versions spliced.

Requests, redirects, retries and the address policy are the transport's (http_transport.py).
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from email.utils import format_datetime
from typing import ClassVar
from urllib.parse import urlsplit

import requests

from .. import counters
from ..chunks import CHUNK_SIZE
from ..config import Config
from ..deadline import Deadline
from ..errors import SourceChanged, SourceError, SourceInterrupted, SourceNotFound, SourceRefused
from ..names import name_from_src
from ..numbers import NotANumber, http_date, parse_digits
from . import held
from .contract import SourceInfo
from .held import HoldBudget, Holding
from .http_transport import NO_DEADLINE, Answer, HttpTransport, body_chunks, content_length, release
from .http_wire import Watch, WireError, WireResponse
from .netguard import Policy, literal_address, unusual_literal

log = logging.getLogger(__name__)

# Statuses of a saved redirect target that send a continuation back to the URL the bundle names:
# a signed URL that expired (403, 401), or one a CDN no longer knows (404, 410).
RE_RESOLVE_STATUSES = frozenset({401, 403, 404, 410})
# Content-Encodings decoded here (a browser saves the decoded file); others are refused.
DECODABLE = frozenset({"gzip", "x-gzip", "deflate"})
_WHITESPACE = re.compile(r"[ \t\r\n]+")
# Host names whose check() verdict is remembered; past this many the memory starts over.
MAX_HOSTS_JUDGED = 4096


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


def _etag(response: Answer) -> str | None:
    """The answer's ETag, its whitespace runs made one SP, none around it nor before a comma (repeated
    fields joined), or None without one.

    Pre-flight's answers are read by http_wire, a member's by http.client and urllib3, which keep what
    http_wire drops (whitespace after the value, RFC 9110 §5.5; a folded line's LF after a bare-LF
    line): read as they are, "v1" and "v1"<SP> differed, and every member of such a server was
    refused as another version (the download cut). Both sides are compared in this one form."""
    value = response.headers.get("ETag")
    return value if value is None else " ".join(_WHITESPACE.split(value.strip(" \t\r\n"))).replace(" ,", ",")


def _invalid_length(src: str, response: Answer) -> SourceError:
    """The error for an answer whose Content-Length is invalid (502); its connection is dropped."""
    response.close()
    value = response.headers.get("Content-Length", "")
    return SourceError(src, f"upstream sent an invalid Content-Length ({value[:40]!r})")


def _encoding(src: str, response: Answer) -> str:
    """The body's Content-Encoding, lower-cased: '' for identity, else one of DECODABLE.

    We ask for identity; a body encoded all the same is decoded on the way (what a browser saves),
    its length then the encoded one, the file's unknown. Any other encoding is not the file's bytes:
    SourceError (502) naming it.
    """
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return ""
    if encoding not in DECODABLE:
        raise SourceError(src, f"upstream sends a {encoding}-encoded body although asked for identity")
    return encoding


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
            full = len(out) >= CHUNK_SIZE
            if out:
                yield out
            del out  # not kept while the next is read (memory.py: a grant covers one chunk)
            if decoder.eof:
                return
            if not data and not full:  # a full piece may leave output pending: ask again
                break
    if not decoder.eof:
        raise SourceInterrupted(src, f"the {encoding} body ended before its end")


def _differs(info: SourceInfo, etag: str | None, modified: datetime | None, size: int | None = None,
             etags: bool = True) -> str | None:
    """Which validator of an answer contradicts `info`'s, where both state one: "ETag" (compared
    only when `etags`), "Last-Modified" or "size"; None when none does. The one rule for "another
    version" -- what either side leaves out can't differ."""
    if etags and info.etag and etag and etag != info.etag:
        return "ETag"
    if info.last_modified and modified and modified != info.last_modified:
        return "Last-Modified"
    if info.size is not None and size is not None and size != info.size:
        return "size"
    return None


def _completed(got: SourceInfo, head: SourceInfo) -> SourceInfo:
    """The GET's info with what it lacked filled in from a HEAD's; not `stable` where both said
    something and they disagree (per-host ETags or mtimes behind a load balancer)."""
    return replace(
        got,
        size=got.size if got.size is not None else head.size,
        etag=got.etag if got.etag is not None else head.etag,
        last_modified=got.last_modified if got.last_modified is not None else head.last_modified,
        stable=got.stable and _differs(got, head.etag, head.last_modified, head.size) is None,
    )


def _read_small_body(response: WireResponse, expected: int | None, limit: int) -> bytes | None:
    """The body if it is exactly `expected` (at most `limit`) bytes as announced, else None; either way
    the response is finished: read out (its connection kept) or closed."""
    if expected is None or expected > limit or response.headers.get("Content-Length") != str(expected):
        release(response)  # read out if small, else drop the connection (a server ignoring Range)
        return None
    try:
        data = response.read_body(limit)
    except WireError:
        return None
    return data if data is not None and len(data) == expected else None


def _fail(src: str, response: Answer) -> SourceError:
    """The error an answer of 400 or more stands for (its connection is dropped): SourceNotFound for
    404/410 and 401/403 (missing, or not ours to read), SourceError (502) for the rest."""
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


class HttpSource:
    """Reads http(s) URLs; every connection (and redirect hop) is checked by the address policy."""

    schemes: ClassVar[tuple[str, ...]] = ("http", "https")

    def __init__(self, transport: HttpTransport, fetch_bytes: int, budget: HoldBudget) -> None:
        self.transport = transport
        self.fetch_bytes = fetch_bytes  # PREFLIGHT_FETCH_BYTES: how much pre-flight's GET asks for
        self.budget = budget  # PREFLIGHT_HOLD_BYTES: what this worker may hold of what it fetched
        self._refusals: dict[str, str | None] = {}  # check()'s verdict by host name (None: allowed)

    @classmethod
    def from_config(cls, config: Config, policy: Policy | None = None) -> HttpSource:
        """HTTP_ALLOW_PRIVATE, HTTP_HOSTS, HTTP_TIMEOUT, PREFLIGHT_CONCURRENCY (the pool's size),
        PREFLIGHT_FETCH_BYTES and PREFLIGHT_HOLD_BYTES; `policy` replaces the address policy (tests)."""
        policy = policy or Policy(allow_private=config.http_allow_private, hosts=config.http_hosts)
        # Kept-alive connections per origin (and origins kept): one download's whole pre-flight reuses
        # its connections, with as many again for the reads of others; more would only keep idle
        # descriptors open to an origin (2 x 256 = 512 per worker at the default concurrency).
        transport = HttpTransport(policy, config.http_timeout, pool_size=max(10, config.preflight_concurrency * 2))
        hold = config.preflight_hold_bytes if config.preflight_fetch_bytes else 0
        return cls(transport, config.preflight_fetch_bytes, HoldBudget(hold))

    def check(self, src: str) -> None:
        """An http(s) URL with a host and no credentials, allowed by HTTP_HOSTS, not naming a non-public
        IP literal (HTTP_ALLOW_PRIVATE) nor one in a notation clients read differently; else SourceRefused."""
        parts = urlsplit(src)
        host = parts.hostname
        if parts.scheme not in self.schemes or not host:
            raise SourceRefused(src, "not a valid http(s) URL")
        if "@" in parts.netloc and (parts.username or parts.password):
            raise SourceRefused(src, "credentials in URLs are not accepted")
        # The rest depends on the host alone: judged once per host (a bundle names few, 10,000 times).
        refusal = self._refusals.get(host, "")
        if refusal == "":
            refusal = self._refusal(host)
            if len(self._refusals) >= MAX_HOSTS_JUDGED:
                self._refusals.clear()
            self._refusals[host] = refusal
        if refusal is not None:
            raise SourceRefused(src, refusal)

    def _refusal(self, host: str) -> str | None:
        """Why a URL naming `host` (as urlsplit reads it) is refused, or None (see `check`)."""
        policy = self.transport.policy
        if not policy.host_allowed(host):
            return f"host {host} is not in HTTP_HOSTS"
        reason = policy.literal_refusal(host)
        if reason:
            return f"{reason}; only public addresses may be fetched (HTTP_ALLOW_PRIVATE)"
        if unusual_literal(host):
            return (f"{host} is the IP address {literal_address(host)} in a notation HTTP clients read "
                    "differently; write it in ASCII without a trailing dot")
        return None

    # -- pre-flight ---------------------------------------------------------------------------------

    def stat(self, src: str, deadline: Deadline | None = None) -> list[SourceInfo]:
        """Size and validators of `src`, by a ranged GET (what any server that serves the file
        answers, HEAD or not): of its first PREFLIGHT_FETCH_BYTES, kept as `SourceInfo.head`, when
        the download may hold (held.current()) and its share of the budget has room for them (one
        request instead of two for a small file), else of its first byte."""
        self.check(src)  # a bundle stored before a rule changed meets today's rules, as at creation
        deadline = deadline or NO_DEADLINE
        watch = Watch()  # the socket its requests wait on, for the deadline to shut (http_wire.Watch)
        with deadline.aborting(watch.shut):
            return [self._stat(src, self._holding(), deadline, watch)]

    def _holding(self) -> Holding | None:
        """The running download's share of this source's budget, if it may hold (see held.py)."""
        scope = held.current()
        if scope is None or self.fetch_bytes <= 0 or self.budget.total <= 0:
            return None
        return scope.holding(self.budget)

    def _stat(self, src: str, holding: Holding | None, deadline: Deadline, watch: Watch) -> SourceInfo:
        # The same kind of request on every route (whole zip, HEAD, range, If-None-Match), read the
        # same way: the zip's layout and ETag follow from its answer, so they can't depend on which
        # route asked. Only its length differs: the first bytes where they can be held for the
        # stream, else one byte (a HEAD or a resume would read and discard them).
        want = self.fetch_bytes
        kept = holding is not None and holding.reserve(want)
        try:
            info, data = self._stat_get(src, want if kept else 1, deadline, watch, keep=kept)
        except BaseException:
            if holding is not None and kept:
                holding.release(want)
            raise
        if holding is None or not kept:
            return info
        if data is None:
            holding.release(want)
            return info
        return replace(info, head=holding.keep(data, want))

    def _stat_head(self, src: str, deadline: Deadline, watch: Watch) -> SourceInfo | None:
        """What a HEAD says of `src`, or None if it answers with anything but a 2xx: a presigned URL
        is signed for GET only (403), some servers don't implement HEAD (405, 501). The GET that
        read the file is what counts; a refused HEAD is not "access denied"."""
        response = self.transport.probe("HEAD", src, src, {}, deadline, watch)
        if response.status_code >= 300:
            response.close()
            return None
        release(response)
        try:
            length = content_length(response)
            encoded = _encoding(src, response)
        except (SourceError, NotANumber):  # an invalid length or an encoding we refuse: not the file's
            return None
        return self._info(src, response, None if encoded else length)

    def _stat_get(self, src: str, want: int, deadline: Deadline, watch: Watch,
                  keep: bool = True) -> tuple[SourceInfo, bytes | None]:
        """Pre-flight by `GET Range: bytes=0-{want-1}`: the info, and (if `keep`) the bytes worth
        keeping (the whole file, or a first part the member can continue from with If-Range), or None.

        A 200 carries every header field a HEAD would (RFC 9110 §9.3.2); a 206 need not (only the
        ETag is required there). Only when the answer lacks the size, or (not a 200)
        an ETag or a Last-Modified, is a HEAD asked for what is missing; a HEAD that is refused
        leaves the GET's answer as it is. Where the two disagree the source's validators can't be
        trusted across requests (`SourceInfo.stable` False).
        """
        response = self.transport.probe("GET", src, src, {"Range": f"bytes=0-{want - 1}"}, deadline, watch)
        if response.status_code == 416:
            # An empty file has no byte 0, and a 416 need not carry the validators: a plain GET of
            # it costs what a HEAD would, and every server that serves the file answers it.
            release(response)
            response = self.transport.probe("GET", src, src, {}, deadline, watch)
        status = response.status_code
        size: int | None = None
        expected: int | None = None
        if status >= 400:
            raise _fail(src, response)
        if status not in (200, 206):
            # A 204/304, a 3xx with nowhere to go, a 203...: not the file's bytes, which a member's GET
            # refuses too (`_read`); taken here, a small one's body would be held and zipped as the file.
            response.close()
            raise SourceError(src, f"upstream answered HTTP {status} to a GET")
        try:
            length = content_length(response)
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
            encoded = _encoding(src, response)
        except SourceError:
            response.close()
            raise
        # Encoded: the bytes received are not the file's first bytes, nor is the length its size.
        info = self._info(src, response, None if encoded else size)
        if encoded:
            expected = None
        if status == 206 and expected is None:
            release(response)
            data: bytes | None = None
        elif keep:
            data = _read_small_body(response, expected, want)
        else:
            release(response)
            data = None
        if size is None or (status != 200 and (info.etag is None or info.last_modified is None)):
            head_info = self._stat_head(src, deadline, watch)
            if head_info is not None:
                info = _completed(info, head_info)
        if data is not None and len(data) != info.size and (info.strong_etag is None or not info.stable):
            # A first part is only worth keeping if the rest can be asked for safely: If-Range
            # needs a strong ETag (a weak one or a date can't promise the same bytes).
            data = None
        return info, data

    @staticmethod
    def _info(src: str, response: WireResponse, size: int | None) -> SourceInfo:
        return SourceInfo(
            src=src,
            name=name_from_src(src),
            size=size,
            etag=_etag(response),
            last_modified=http_date(response.headers.get("Last-Modified")),
            location=(response.url or src,),
        )

    # -- reading ------------------------------------------------------------------------------------

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
                response = self.transport.request("GET", info.src, url, {}, retry=True)
            yield from self._read(info, response, start, saved)
        finally:
            response.close()

    def _open_at(self, info: SourceInfo, url: str, validated_at: str, start: int) -> requests.Response:
        """GET `url` for the bytes from `start`; a server failing the ranged request is asked whole."""
        if not start:
            return self.transport.request("GET", info.src, url, {}, retry=True)
        headers = {"Range": f"bytes={start}-"}
        validator = self._validator(info)
        if validator:
            headers["If-Range"] = validator
        elsewhere = headers
        if info.last_modified is not None:
            elsewhere = {**headers, "If-Range": format_datetime(info.last_modified, usegmt=True)}
        # One retry only: a server that fails ranged requests (some proxies, object gateways) answers
        # a plain GET, and that is tried next rather than backing off on the ranged one.
        response = self.transport.request("GET", info.src, url, headers, retries=1,
                                          validated_at=validated_at, elsewhere=elsewhere)
        if response.status_code >= 500 or response.status_code == 416:
            log.warning("%s: ranged GET answered HTTP %d; reading it whole from byte 0 instead",
                        info.src, response.status_code)
            response.close()
            response = self.transport.request("GET", info.src, url, {}, retry=True)
        return response

    def _read(self, info: SourceInfo, response: requests.Response, start: int,
              validated_at: str) -> Iterator[bytes]:
        status = response.status_code
        if status >= 400:
            raise _fail(info.src, response)
        if status not in (200, 206):
            raise SourceError(info.src, f"upstream answered HTTP {status} to a GET")
        self._check_same_version(info, response, validated_at, start)
        encoding = _encoding(info.src, response)
        if encoding and start:
            # A range of an encoded body counts encoded bytes: nothing to continue from.
            raise SourceChanged(info.src, f"upstream now sends a {encoding}-encoded body; can't continue it")
        # Range ignored (or failing) at the server: the whole file, the version checked above.
        skip = start if status == 200 else self._range_skip(info, response, start)
        expected = None if info.size is None else info.size - start
        try:
            length = content_length(response)
        except NotANumber:
            raise _invalid_length(info.src, response) from None
        announced = length - skip if length is not None and not encoding else None
        if expected is not None and announced is not None and announced != expected:
            raise SourceChanged(info.src, f"upstream announced {announced} bytes, expected {expected}")
        discarded = counters.UPSTREAM_BYTES_DISCARDED.labels("https")
        body = body_chunks(response)
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
                del chunk  # not kept while the next is read (memory.py: a grant covers one chunk)
        except SourceError:
            raise
        except Exception as error:  # noqa: BLE001 - urllib3/socket errors of every kind mean "cut"
            raise SourceInterrupted(info.src, f"connection lost after {start + received} bytes "
                                        f"({type(error).__name__})") from None
        if expected is not None and received != expected:
            raise SourceInterrupted(info.src, f"upstream sent {received} of {expected} bytes")

    @staticmethod
    def _validator(info: SourceInfo) -> str | None:
        """The If-Range of a continuation: the strong ETag, else the Last-Modified date, else none."""
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
        pre-flight's (`_differs`). False if none differs but none vouches either: one must, an equal
        Last-Modified or an equal ETag (a weak one only for a read from byte 0: equal weak tags
        promise equivalent bytes, not the same ones to go on from). A 206 may leave Last-Modified
        out (RFC 9110 §15.3.7), and a server breaking it the ETag too. True for a source pre-flight
        saw no validators for: it is checked by size only.

        An answer from a URL other than `validated_at` (a redirect to a mirror, a re-signed URL) may
        carry its own ETag for the same bytes: there an equal Last-Modified vouches instead.
        """
        etag = _etag(response)
        modified = http_date(response.headers.get("Last-Modified"))
        same_date = info.last_modified is not None and modified == info.last_modified
        elsewhere = response.url != validated_at
        differs = _differs(info, etag, modified, etags=not (elsewhere and same_date))
        if differs is not None:
            raise SourceChanged(info.src, f"the file changed since the download started ({differs} differs)",
                                seen=(etag, modified))
        if info.etag is None and info.last_modified is None:
            return True
        same_tag = etag is not None and etag == info.etag and (start == 0 or not etag.startswith("W/"))
        return same_tag or same_date
