"""Which addresses the HTTP filestore may connect to, checked on every connection it opens.

The check runs on the address actually connected to (after DNS), so DNS names pointing inward,
DNS rebinding, redirects and odd IP notations ("2130706433", "0x7f.1", "[::ffff:127.0.0.1]") all
meet the same rule.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import unicodedata
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.poolmanager import PoolManager

from ..deadline import current, shut
from ..peek import peek

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")

# The rule is `is_global`; these lists correct Python 3.11's tables (`ipaddress._private_networks`)
# where they disagree with IANA's special-purpose address registries (iana-ipv4-special-registry,
# iana-ipv6-special-registry, both as of 2024-10) and address space registries, whatever the Python.
# Not globally reachable, though `is_global` says they are (or may, on some Python version); multicast,
# which `is_global` calls global too, is refused by `is_multicast`:
_NOT_GLOBAL: tuple[tuple[IPNetwork, str], ...] = tuple((ipaddress.ip_network(block), name) for block, name in (
    ("100.64.0.0/10", "shared address space"),  # RFC 6598; Python 3.11 calls it neither private nor global
    ("192.0.0.0/24", "an IETF protocol assignment (RFC 6890), not globally reachable"),  # 192.0.0.8: RFC 7600
    ("192.88.99.0/24", "the deprecated 6to4 relay anycast prefix (RFC 7526)"),
    ("3fff::/20", "reserved for documentation (RFC 9637)"),
    ("fec0::/10", "site-local (deprecated, RFC 3879)"),
    ("5f00::/16", "reserved for segment routing (RFC 9602)"),
))
# All IPv6 unicast the internet routes is inside 2000::/3 (IANA IPv6 address space registry); the rest
# is reserved, unique-local, link-local, site-local or multicast (embedded IPv4 is judged by itself).
_IPV6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
# Globally reachable per IANA inside blocks that are not (192.0.0.0/24, 2001::/23), and which
# Python 3.11 refuses with their block: PCP, TURN and DNS-SD SRP anycast, AMT, AS112-v6, ORCHIDv2,
# drone remote ID.
_GLOBAL_EXCEPTIONS: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(block) for block in (
    "192.0.0.9/32", "192.0.0.10/32", "2001:1::1/128", "2001:1::2/128", "2001:1::3/128", "2001:3::/32",
    "2001:4:112::/48", "2001:20::/28", "2001:30::/28",
))
# Full stops that IDNA (UTS #46) reads as "." besides the ASCII one: ideographic, full-width and
# half-width ideographic (NFKC already makes the full-width one ASCII).
_IDNA_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


class AddressRefused(OSError):
    """The host resolved to an address this service must not connect to."""


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, NAT64, 6to4, Teredo)."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or address in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    packed = int(address)
    if packed >> 32 == 0 and packed > 1:  # IPv4-compatible ::a.b.c.d (deprecated, still routed by some)
        return ipaddress.IPv4Address(packed)
    return None


def refusal(address: IPAddress) -> str | None:
    """Why `address` is not a public internet address, or None if it is.

    One rule: refused unless globally reachable (`ipaddress`'s `is_global`, corrected by the IANA
    registries above; IPv6 only inside 2000::/3). An IPv6 address standing for an IPv4 one
    (mapped, compatible, NAT64, 6to4, Teredo) is judged as that IPv4 address.
    """
    inner = embedded_ipv4(address)
    if inner is not None:
        reason = refusal(inner)
        return f"{reason} (inside {address})" if reason else None
    if any(address in network for network in _GLOBAL_EXCEPTIONS):
        return None
    # Most specific first: 169.254.169.254 is both private and link-local; "link-local" says more.
    for attribute in ("is_loopback", "is_link_local", "is_unspecified", "is_multicast"):
        if getattr(address, attribute):
            return f"{address} is {attribute[3:].replace('_', '-')}"
    for network, name in _NOT_GLOBAL:
        if address in network:
            return f"{address} is {name}"
    for attribute in ("is_reserved", "is_private"):
        if getattr(address, attribute):
            return f"{address} is {attribute[3:]}"
    if isinstance(address, ipaddress.IPv6Address) and address not in _IPV6_GLOBAL_UNICAST:
        return f"{address} is outside IPv6 global unicast (2000::/3)"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


def _plain_host(host: str) -> str:
    """`host` as a URL parser or resolver may end up reading it: IPv6 brackets and zone dropped;
    otherwise percent-decoded (requests decodes `127%2E0%2E0%2E1`), NFKC-normalised (full-width and
    circled digits become ASCII), IDNA's other full stops made ".", the root's trailing dot dropped."""
    host = host.strip("[]")
    if ":" in host:
        return host.split("%", 1)[0]
    host = unicodedata.normalize("NFKC", unquote(host)).translate(_IDNA_DOTS)
    return host.rstrip(".")


def literal_address(host: str) -> IPAddress | None:
    """The address an IP-literal host stands for, in any notation libc accepts, or None for a name.

    `2130706433`, `0x7f000001`, `0177.0.0.1` and `127.1` are all 127.0.0.1 to `inet_aton` (and so
    to `getaddrinfo`), so they must be judged as such, not as names; so are 127.0.0.1 in full-width
    digits, with ideographic full stops (U+3002) or as `127.0.0.1.`, which IDNA or a resolver may
    turn into it (see `_plain_host`).
    """
    host = _plain_host(host)
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not host.isascii():
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def unusual_literal(host: str) -> bool:
    """True when `host` is an IP address only once read as `literal_address` reads it (Unicode
    digits or full stops, a trailing dot, percent-encoding): HTTP clients and resolvers disagree on
    such notations (requests refuses full-width digits; `127.0.0.1.` is a DNS query), so none is used."""
    host = host.strip("[]")
    plain = host.split("%", 1)[0] if ":" in host else host
    return literal_address(host) is not None and (not plain.isascii() or "%" in plain or plain.endswith("."))


@dataclass(frozen=True)
class Policy:
    """What the fetch layer may connect to."""

    allow_private: bool = False
    hosts: tuple[str, ...] = ()  # allowed host names or suffixes; empty = any
    # Networks judged public although they are not. Not settable from the environment: the test
    # suite uses it to stand one loopback address (127.0.0.2) in for "the internet".
    treat_as_public: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def refusal(self, address: IPAddress) -> str | None:
        """Why this policy refuses `address`, or None."""
        if self.allow_private or any(address in network for network in self.treat_as_public):
            return None
        return refusal(address)

    def literal_refusal(self, host: str) -> str | None:
        """Why an IP-literal `host` is refused (None for names and allowed addresses); no DNS."""
        address = literal_address(host)
        return None if address is None else self.refusal(address)

    def host_allowed(self, host: str) -> bool:
        if not self.hosts:
            return True
        host = host.lower().rstrip(".")
        return any(host == allowed or host.endswith("." + allowed) for allowed in self.hosts)

    def resolve(self, host: str, port: int) -> list[tuple[int, tuple[str, int]]]:
        """The addresses to connect to, all checked; raises AddressRefused if none is allowed."""
        if not self.host_allowed(host):
            raise AddressRefused(f"host {host} is not in HTTP_HOSTS")
        literal = literal_address(host)
        if literal is not None and not (":" in host and "%" in host):  # an IPv6 zone needs getaddrinfo
            # An address in any notation is that address: no lookup (`127.0.0.1.` would be a DNS query).
            found: list[tuple[int, IPAddress, int]] = [
                (socket.AF_INET6 if literal.version == 6 else socket.AF_INET, literal, port)]
        else:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as error:
                raise OSError(f"cannot resolve {host}: {error.strerror}") from None
            found = [(family, ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]), int(sockaddr[1]))
                     for family, _type, _proto, _canon, sockaddr in infos]
        allowed: list[tuple[int, tuple[str, int]]] = []
        reasons = []
        for family, address, found_port in found:
            reason = self.refusal(address)
            if reason:
                reasons.append(reason)
            else:
                allowed.append((family, (str(address), found_port)))
        # One bad address refuses the host: an attacker controls which record we would try first.
        if reasons:
            raise AddressRefused(f"{host} resolves to a non-public address: {reasons[0]}")
        if not allowed:
            raise OSError(f"cannot resolve {host}")
        return allowed


def _connect(policy: Policy, host: str, port: int, timeout: float | None,
             options: list[tuple[int, int, int | bytes]] | None) -> socket.socket:
    last: OSError | None = None
    for family, sockaddr in policy.resolve(host, port):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            for option in options or ():
                sock.setsockopt(*option)
            if timeout is not None:
                sock.settimeout(timeout)
            sock.connect(sockaddr)  # the checked address itself: no second lookup
            return sock
        except OSError as error:
            last = error
            sock.close()
    raise last or OSError(f"cannot connect to {host}")


class RequestStopped(OSError):
    """The calling thread's pre-flight deadline passed (or its client left) before the request went out."""


def stopped() -> bool:
    """True when the running thread's (greenlet's) pre-flight deadline has passed or was cancelled."""
    deadline = current()
    return deadline is not None and (deadline.expired or deadline.cancelled)


def _connected(sock: socket.socket | None) -> bool:
    """urllib3's `is_connected` (checked on every pool checkout) by one MSG_PEEK: an idle kept-alive
    connection has nothing to read; EOF, a reset or unexpected bytes mean it can't carry a request.
    urllib3's own check builds a poll object and a result list per checkout (bench B7's profile)."""
    if sock is None:
        return False
    try:
        return peek(sock.fileno()) is None
    except (OSError, ValueError):  # reset, or closed under us (fileno() -1)
        return False


class FinalResponse(http.client.HTTPResponse):
    """http.client's response, every interim 1xx answer skipped (RFC 9110 §15.2), not only a 100: a
    member's GET took a 103 Early Hints for the answer ("HTTP 103 to a GET", the download cut) where
    pre-flight's reader (http_wire) skips it. A 101 is final (the connection changed protocol)."""

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 100 < status < 200 or status == 101:  # a 100 is skipped by begin() itself
                return version, status, reason
            http.client._read_headers(self.fp)  # type: ignore[attr-defined]  # with its limits


def guarded_pool_manager(policy: Policy, **kwargs: object) -> PoolManager:
    """A urllib3 PoolManager whose every connection goes through `policy`.

    A request whose connection was still being opened when pre-flight's deadline passed (or its client
    left) is not sent: the checks before each attempt can't see a connect (or TLS handshake) that is
    under way, and its request would reach the server after the answer had gone out.
    """

    class GuardedHTTPConnection(HTTPConnection):
        response_class = FinalResponse

        @property
        def is_connected(self) -> bool:
            return _connected(self.sock)

        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            # While waiting for the answer's head, a pre-flight deadline that passes (or a client
            # that leaves) wakes this wait at once rather than after the read timeout.
            deadline = current()
            if deadline is None:
                return super().getresponse(*args, **kwargs)
            with deadline.aborting(lambda: shut(self.sock)):
                return super().getresponse(*args, **kwargs)

        def request(self, *args: Any, **kwargs: Any) -> None:
            if stopped():
                raise RequestStopped("pre-flight's deadline passed before the request was sent")
            super().request(*args, **kwargs)

        def _new_conn(self) -> socket.socket:
            try:
                sock = _connect(policy, self._dns_host, self.port, self.timeout,
                                self.socket_options)
            except AddressRefused:
                raise
            except TimeoutError as error:  # a timeout, not a refusal: requests makes it a ConnectTimeout (504)
                raise ConnectTimeoutError(self, f"Connection timed out (connect timeout={self.timeout})") from error
            except OSError as error:
                raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error
            if stopped():  # connected after the deadline: send nothing on it
                sock.close()
                raise NewConnectionError(self, "pre-flight's deadline passed while connecting")
            return sock

    class GuardedHTTPSConnection(HTTPSConnection):
        response_class = FinalResponse

        @property
        def is_connected(self) -> bool:
            # The raw descriptor, as urllib3 looks at it: TLS bytes waiting (a close_notify) count.
            return _connected(self.sock)

        def _new_conn(self) -> socket.socket:
            return GuardedHTTPConnection._new_conn(self)  # type: ignore[arg-type]

        def request(self, *args: Any, **kwargs: Any) -> None:
            if stopped():  # the TLS handshake ended after the deadline
                raise RequestStopped("pre-flight's deadline passed before the request was sent")
            super().request(*args, **kwargs)

    class GuardedHTTPPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    manager = PoolManager(**kwargs)  # type: ignore[arg-type]
    manager.pool_classes_by_scheme = {"http": GuardedHTTPPool, "https": GuardedHTTPSPool}
    return manager
