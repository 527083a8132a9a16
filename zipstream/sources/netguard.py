"""Which addresses the HTTP filestore may connect to, checked on every connection it opens.

The check runs on the address actually connected to (after DNS), so DNS names pointing inward,
DNS rebinding, redirects and odd IP notations ("2130706433", "0x7f.1", "[::ffff:127.0.0.1]") all
meet the same rule.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.poolmanager import PoolManager

from ..deadline import current, shut

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


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
    """Why `address` is not a public internet address, or None if it is."""
    inner = embedded_ipv4(address)
    if inner is not None:
        reason = refusal(inner)
        return f"{reason} (inside {address})" if reason else None
    # Most specific first: 169.254.169.254 is both private and link-local; "link-local" says more.
    for attribute in ("is_loopback", "is_link_local", "is_unspecified", "is_multicast", "is_reserved",
                      "is_private"):
        if getattr(address, attribute):
            return f"{address} is {attribute[3:].replace('_', '-')}"
    if isinstance(address, ipaddress.IPv4Address) and address in ipaddress.ip_network("100.64.0.0/10"):
        return f"{address} is shared address space"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


def literal_address(host: str) -> IPAddress | None:
    """The address an IP-literal host stands for, in any notation libc accepts, or None for a name.

    `2130706433`, `0x7f000001`, `0177.0.0.1` and `127.1` are all 127.0.0.1 to `inet_aton` (and so
    to `getaddrinfo`), so they must be judged as such, not as names.
    """
    host = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


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
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise OSError(f"cannot resolve {host}: {error.strerror}") from None
        allowed: list[tuple[int, tuple[str, int]]] = []
        reasons = []
        for family, _type, _proto, _canon, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            reason = self.refusal(address)
            if reason:
                reasons.append(reason)
            else:
                allowed.append((family, (str(address), int(sockaddr[1]))))
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


def _stopped() -> bool:
    deadline = current()
    return deadline is not None and (deadline.expired or deadline.cancelled)


def guarded_pool_manager(policy: Policy, **kwargs: object) -> PoolManager:
    """A urllib3 PoolManager whose every connection goes through `policy`.

    A request whose connection was still being opened when pre-flight's deadline passed (or its client
    left) is not sent: the checks before each attempt can't see a connect (or TLS handshake) that is
    under way, and its request would reach the server after the answer had gone out.
    """

    class GuardedHTTPConnection(HTTPConnection):
        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            # While waiting for the answer's head, a pre-flight deadline that passes (or a client
            # that leaves) wakes this wait at once rather than after the read timeout.
            deadline = current()
            if deadline is None:
                return super().getresponse(*args, **kwargs)
            with deadline.aborting(lambda: shut(self.sock)):
                return super().getresponse(*args, **kwargs)

        def request(self, *args: Any, **kwargs: Any) -> None:
            if _stopped():
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
            if _stopped():  # connected after the deadline: send nothing on it
                sock.close()
                raise NewConnectionError(self, "pre-flight's deadline passed while connecting")
            return sock

    class GuardedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return GuardedHTTPConnection._new_conn(self)  # type: ignore[arg-type]

        def request(self, *args: Any, **kwargs: Any) -> None:
            if _stopped():  # the TLS handshake ended after the deadline
                raise RequestStopped("pre-flight's deadline passed before the request was sent")
            super().request(*args, **kwargs)

    class GuardedHTTPPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    manager = PoolManager(**kwargs)  # type: ignore[arg-type]
    manager.pool_classes_by_scheme = {"http": GuardedHTTPPool, "https": GuardedHTTPSPool}
    return manager
