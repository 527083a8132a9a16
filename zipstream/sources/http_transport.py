"""The HTTP source's transport: one request with our redirect, retry and address rules, body unread.

Requests go over one pool of connections whose every connection is checked by the address policy
(netguard.py) on the address really connected to, so DNS names pointing inward, redirects and odd IP
notations meet the same rule. A member's GET goes through requests' transport adapter (`request`);
pre-flight's body-less requests, one per source, are written and read by http_wire.py on the same
pools (`probe`): the same redirect, retry and deadline rules, in one loop (`_follow`). What the answer
means (sizes, validators, versions) is the source's business (http.py); here an answer is only sent,
followed and retried.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import urldefrag, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.utils import requote_uri
from urllib3.connectionpool import HTTPConnectionPool

from ..chunks import read_size
from ..deadline import Deadline, current, shut
from ..errors import ClientGone, SourceError, SourceRefused, SourceTimeout
from ..numbers import NotANumber, NumberTooLarge, http_date, is_digits, parse_digits
from .http_wire import Target, Watch, WireError, WireResponse, WireTimeout, exchange
from .netguard import AddressRefused, Policy, RequestStopped, guarded_pool_manager

MAX_REDIRECTS = 5
RETRY_STATUSES = frozenset({500, 502, 503, 504, 429})
BACKOFF = (0.2, 0.6, 1.5)  # seconds before the 1st, 2nd and 3rd retry
# A retry is worth starting only with at least this long left for it before the pre-flight deadline.
MIN_ATTEMPT = 0.25
# A Retry-After longer than this is not waited for while a zip streams (nothing reaches the client
# meanwhile; proxies cut idle connections); pre-flight waits as long as its deadline allows.
MAX_RETRY_AFTER_STREAMING = 10.0
BASE_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "zipstream", "Accept": "*/*"}
NO_DEADLINE = Deadline(None)
# What a failed exchange raises, by either path: requests' errors, or http_wire's, or the address
# policy's and the deadline's own (OSErrors, which http_wire lets through as they are).
EXCHANGE_ERRORS = (requests.RequestException, WireError, AddressRefused, RequestStopped)


class Answer(Protocol):
    """What the transport reads of an answer, whichever path sent it (requests.Response, WireResponse)."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def url(self) -> str: ...
    @property
    def is_redirect(self) -> bool: ...
    def close(self) -> None: ...


AnswerT = TypeVar("AnswerT", bound=Answer)


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
        found = stack.pop()
        if not isinstance(found, BaseException) or id(found) in seen:
            continue
        seen.add(id(found))
        if isinstance(found, AddressRefused):
            return found
        stack.extend([found.__cause__, found.__context__, *found.args, getattr(found, "reason", None)])
    return None


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


def retry_after(response: Answer) -> float | None:
    """Seconds a 429/503 asks to wait (Retry-After as delta-seconds or an HTTP date), else None."""
    if response.status_code not in (429, 503):
        return None
    value = response.headers.get("Retry-After", "").strip(" \t")
    if is_digits(value):  # delay-seconds (RFC 9110 §10.2.3)
        try:
            return float(parse_digits(value))
        except NumberTooLarge:
            return float("inf")  # longer than any deadline: no retry
    when = http_date(value)
    if when is None:
        return None
    try:
        return max(0.0, (when - datetime.now(when.tzinfo)).total_seconds())
    except TypeError:  # a date without a zone
        return None


def content_length(response: Answer) -> int | None:
    """The body length an answer announces, or None without one.

    RFC 9112 §6.3: a Transfer-Encoding overrides Content-Length (None then); a list of equal
    values (`5, 5`) is that value; any other value -- not ASCII digits, different values (urllib3
    refuses those itself), over numbers.MAX_BYTES -- makes the framing invalid, an unrecoverable
    error: raises NotANumber.
    """
    value = response.headers.get("Content-Length")
    if value is None or response.headers.get("Transfer-Encoding"):
        return None
    parts = [part.strip(" \t") for part in value.split(",")]
    lengths = {parse_digits(part) for part in parts if part}  # empty list elements: RFC 9110 §5.6.1.2
    if len(lengths) != 1:
        raise NotANumber(f"several lengths: {value[:40]!r}")
    return lengths.pop()


@contextlib.contextmanager
def abortable(response: requests.Response) -> Iterator[None]:
    """While the body is read, the current deadline (if any) may cut the connection: a body that
    trickles in never trips the per-read timeout."""
    deadline = current()
    if deadline is None:
        yield
        return
    connection = getattr(response.raw, "connection", None)
    with deadline.aborting(lambda: shut(getattr(connection, "sock", None))):
        yield


def body_chunks(response: requests.Response) -> Iterator[bytes]:
    """The raw body as it arrives, in pieces of at most CHUNK_SIZE (chunks.read_size(): less for a
    download whose client drains slowly). Not `raw.stream(n)`: a read of n bytes cut short by a reset
    raises and drops the bytes it already had, so a resume would start over from the same place."""
    while chunk := response.raw.read1(read_size(), decode_content=False):
        yield chunk
        del chunk  # not kept while the next is read (every layer of a download's reading does this)


def release(response: Answer) -> None:
    """Done with a response whose body we don't need: keep its connection alive when that is cheap.

    `Response.close()` on an unread body closes the socket; a HEAD (or a tiny body) is read out
    instead so the connection goes back to the pool — pre-flight of 1,000 files would otherwise
    open 1,000 connections.
    """
    if isinstance(response, WireResponse):
        response.release()
        return
    assert isinstance(response, requests.Response)
    try:
        length = content_length(response)
    except NotANumber:  # invalid framing: the connection can't be reused
        length = None
    if response.request.method == "HEAD" or (length is not None and length <= 65536):
        with contextlib.suppress(requests.RequestException), abortable(response):
            response.content  # noqa: B018 - reading it out is the point
    response.close()


def _pool_kwargs(verify: bool | str) -> dict[str, Any]:
    """The TLS part of a pool's key, as requests' adapter makes it (`_urllib3_request_context`): the
    same key, so both paths share one pool per host."""
    kwargs: dict[str, Any] = {"cert_reqs": "CERT_NONE" if verify is False else "CERT_REQUIRED"}
    if isinstance(verify, str):
        kwargs["ca_cert_dir" if os.path.isdir(verify) else "ca_certs"] = verify
    return kwargs


class HttpTransport:
    """Sends body-less GET/HEAD requests through one guarded connection pool per worker.

    Not a requests Session: no cookie jar shared between unrelated bundles, no proxies from the
    environment, and about half the CPU per request (Session merges settings and cookies on every
    call; bench B2 is CPU-bound on it).
    """

    def __init__(self, policy: Policy, timeout: float, pool_size: int, verify: bool | str = True) -> None:
        self.policy = policy
        self.timeout_seconds = timeout  # HTTP_TIMEOUT: each read's, and each attempt's at most
        self.timeout = (min(10.0, timeout), timeout)  # (connect, read), seconds
        self.adapter = _GuardedAdapter(policy, pool_size)
        self.verify = verify  # TLS: the system's CA bundle (a path to another bundle in tests)
        # The adapter's pools by (scheme, host, port, verify), so a probe skips the pool manager's key
        # building; a pool it closed (evicted, cleared) is looked up again.
        self._pools: dict[tuple[str, str, int, bool | str], HTTPConnectionPool] = {}
        self._max_pools = pool_size

    def probe(self, method: str, src: str, url: str, headers: dict[str, str], deadline: Deadline,
              watch: Watch) -> WireResponse:
        """`request` for pre-flight: the same rules (redirects, retries, deadline), with the exchange
        written by http_wire.py instead of requests (bench B7). The caller has registered `watch.shut`
        with `deadline` (`Deadline.aborting`): it wakes whichever request is waiting when the deadline
        passes. The answer's body is read, if at all, by `WireResponse.read_body` or `release`."""

        def send(method: str, url: str, headers: dict[str, str], deadline: Deadline) -> WireResponse:
            return self._exchange(method, src, url, headers, deadline, watch)

        return self._follow(send, method, src, url, headers, retry=True, deadline=deadline)

    def _exchange(self, method: str, src: str, url: str, headers: dict[str, str], deadline: Deadline,
                  watch: Watch) -> WireResponse:
        """One exchange by http_wire.py (see `send`); SourceError naming `src` for a URL no request can
        be made of (a port past 65535, say): no retry would change that."""
        try:
            target = Target(url)
        except ValueError as error:
            where = "" if url == src else f" {url[:200]!r}"
            raise SourceError(src, f"invalid URL{where} ({error})") from None
        key = (target.scheme, target.host, target.port, self.verify)
        pool = self._pools.get(key)
        if pool is None or pool.pool is None:
            pool = self.adapter.poolmanager.connection_from_host(
                target.host, target.port, target.scheme, pool_kwargs=_pool_kwargs(self.verify))
            # What requests' adapter sets on the pool before each of its requests (its CA bundle).
            self.adapter.cert_verify(pool, target.url, self.verify, None)  # type: ignore[no-untyped-call]
            if len(self._pools) >= self._max_pools:
                self._pools.clear()
            self._pools[key] = pool
        left = deadline.remaining()
        connect, read = max(0.001, min(self.timeout[0], left)), max(0.001, min(self.timeout[1], left))
        return exchange(pool, method, target, {**BASE_HEADERS, **headers}, (connect, read), deadline, watch)

    def send(self, method: str, url: str, headers: dict[str, str],
             deadline: Deadline = NO_DEADLINE) -> requests.Response:
        """One HTTP exchange, body not read (redirects are not followed here); its timeouts are
        HTTP_TIMEOUT's, capped by the time the deadline leaves. Raises requests' errors."""
        request = requests.PreparedRequest()
        # Only the parts a body-less GET/HEAD needs: no auth from the URL (refused at check()), no
        # cookie jar (one per request costs a lock), no body.
        request.prepare_method(method)
        request.prepare_url(url, None)
        request.prepare_headers({**BASE_HEADERS, **headers})
        connect, read = (max(0.001, deadline.cap(limit)) for limit in self.timeout)
        return self.adapter.send(request, stream=True, timeout=(connect, read), verify=self.verify)

    def request(self, method: str, src: str, url: str, headers: dict[str, str],
                retry: bool = True, deadline: Deadline = NO_DEADLINE, retries: int = len(BACKOFF),
                validated_at: str | None = None, elsewhere: dict[str, str] | None = None) -> requests.Response:
        """The answer to `method url`, redirects followed and transient failures retried; body unread.
        Sent by requests (`send`); see `_follow` for the rules."""
        return self._follow(self.send, method, src, url, headers, retry, deadline, retries, validated_at, elsewhere)

    def _follow(self, send: Callable[[str, str, dict[str, str], Deadline], AnswerT], method: str, src: str,
                url: str, headers: dict[str, str], retry: bool = True, deadline: Deadline = NO_DEADLINE,
                retries: int = len(BACKOFF), validated_at: str | None = None,
                elsewhere: dict[str, str] | None = None) -> AnswerT:
        """The answer to `method url` by `send`, redirects followed and transient failures retried.

        Every redirect hop is checked (http(s) only, never https to http, HTTP_HOSTS) and every
        connection by the address policy: SourceRefused. A connection that fails after the retries is
        a SourceError, one that times out a SourceTimeout; errors name `src`. A 5xx/429 that no retry
        fits is returned as the answer. Every attempt and back-off fits in `deadline`: none starts
        after it (SourceTimeout, or ClientGone if it was cancelled), and a back-off that would outlast
        it is not waited for. A 429/503's Retry-After is the back-off when given (see `_pause`).
        `elsewhere`, if given, are the headers sent instead of `headers` to any URL other than
        `validated_at` (a redirect to a mirror: an ETag means something only to the resource that
        issued it).
        """
        attempts = 0
        for _hop in range(MAX_REDIRECTS + 1):
            sent = headers if elsewhere is None or url == validated_at else elsewhere
            while True:
                deadline.check(src)
                capped = deadline.remaining() < self.timeout_seconds  # this attempt ends at the deadline
                try:
                    response = send(method, url, sent, deadline)
                except EXCHANGE_ERRORS as error:
                    refused = _refused(error)
                    if refused is not None:
                        raise SourceRefused(src, str(refused)) from None
                    deadline.check(src)  # cut short by the deadline or by the client leaving
                    if retry and attempts < min(retries, len(BACKOFF)) and self._back_off(deadline, attempts):
                        attempts += 1
                        continue
                    if deadline.cancelled:
                        raise ClientGone("the client closed the connection during pre-flight") from None
                    if isinstance(error, requests.Timeout | WireTimeout):
                        within = deadline.describe() if capped else f"{self.timeout_seconds:g} s (HTTP_TIMEOUT)"
                        raise SourceTimeout(src, f"no answer within {within}, {attempts + 1} attempts") from None
                    kind = error.kind if isinstance(error, WireError) else type(error).__name__
                    raise SourceError(src, f"connection failed ({kind}), {attempts + 1} attempts") from None
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
                url = self._redirected(src, url, response)
                continue
            return response
        raise SourceRefused(src, f"more than {MAX_REDIRECTS} redirects (the redirect limit)")

    def _redirected(self, src: str, url: str, response: Answer) -> str:
        """Where a redirect answer sends `url`, once the hop is allowed (else SourceRefused)."""
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
        return target

    @staticmethod
    def _pause(response: Answer, deadline: Deadline, attempts: int) -> float | None:
        """Seconds to wait before retrying this answer, or None if no retry fits.

        A 429/503 naming a Retry-After is retried after exactly that (a rate limiter refuses earlier
        retries), if it fits in the deadline with MIN_ATTEMPT to spare; with no deadline (while a
        zip streams) only up to MAX_RETRY_AFTER_STREAMING. Otherwise the fixed BACKOFF applies.
        """
        asked = retry_after(response)
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
