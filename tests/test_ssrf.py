"""SSRF: the HTTP filestore connects only to public addresses, on every hop, in every notation.

The upstream runs on loopback, so a payload that slipped through would really be served (200): a
refusal here is the guard's doing, not a dead address. For the "allowed upstream" cases the suite
stands 127.0.0.2 in for the internet with `Policy(treat_as_public=...)`, a constructor argument the
environment cannot set; everything else in 127.0.0.0/8 stays refused.

Every test here runs in a network namespace with only loopback (tests/support/netns.py): private,
site-local and public literals, names not in /etc/hosts and redirects to them can't leave the machine
even if a regression let them through.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from flask import Flask

from zipstream import create_app
from zipstream.config import Config
from zipstream.errors import SourceRefused
from zipstream.models import Bundle, FileRef
from zipstream.repositories import get_repository
from zipstream.sources import Sources
from zipstream.sources.http import HttpSource
from zipstream.sources.netguard import AddressRefused, Policy, literal_address, refusal

from .support import netns
from .support.upstream import UpstreamServer

pytestmark = pytest.mark.loopback_only

STAND_IN = "127.0.0.2"  # "a public host" for these tests
STAND_IN_POLICY = Policy(treat_as_public=(ipaddress.ip_network(f"{STAND_IN}/32"),))

# Each payload gets the loopback upstream's port, so the guard is the only thing between it and a 200.
LITERAL_PAYLOADS = [
    "http://127.0.0.1:{port}/a.txt",
    "http://2130706433:{port}/a.txt",  # decimal
    "http://0x7f000001:{port}/a.txt",  # hex
    "http://0x7f.0.0.1:{port}/a.txt",  # hex octet
    "http://0177.0.0.1:{port}/a.txt",  # octal
    "http://127.1:{port}/a.txt",  # short
    "http://127.0.1:{port}/a.txt",
    "http://[::1]:{port}/a.txt",
    "http://[::ffff:127.0.0.1]:{port}/a.txt",  # IPv4-mapped
    "http://[::ffff:7f00:1]:{port}/a.txt",  # IPv4-mapped, hex
    "http://[::127.0.0.1]:{port}/a.txt",  # IPv4-compatible
    "http://[64:ff9b::7f00:1]:{port}/a.txt",  # NAT64
    "http://[64:ff9b::a9fe:a9fe]:{port}/a.txt",  # NAT64 of the metadata endpoint
    "http://[2002:7f00:1::1]:{port}/a.txt",  # 6to4 of 127.0.0.1
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]:{port}/a.txt",  # Teredo, client 127.0.0.1
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://[fd00:ec2::254]/latest/meta-data/",  # AWS metadata over IPv6 (ULA)
    "http://100.64.0.1/",  # shared address space (CGNAT)
    "http://0.0.0.0:{port}/a.txt",
    "http://0:{port}/a.txt",
    "http://[::]:{port}/a.txt",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://172.31.255.255/",
    "http://192.168.1.1/",
    "http://198.18.0.1/",  # benchmarking
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[fe80::1]/",  # link-local
    "http://224.0.0.1/",  # multicast
    "http://[ff02::1]/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",  # reserved
    # Unicode digits and full stops (NFKC, IDNA's dots) and the root's trailing dot: still 127.0.0.1.
    "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{port}/a.txt",  # full-width digits
    "http://127\u30020\u30020\u30021:{port}/a.txt",  # ideographic full stop
    "http://127\uff0e0\uff0e0\uff0e1:{port}/a.txt",  # full-width full stop
    "http://127\uff610\uff610\uff611:{port}/a.txt",  # half-width ideographic full stop
    "http://\u2460\u2461\u2466.0.0.1:{port}/a.txt",  # circled digits
    "http://\uff11\uff12\uff17\uff0e\uff11:{port}/a.txt",  # full-width short form
    "http://127.0.0.1.:{port}/a.txt",  # trailing dot
    "http://127.0.0.1..:{port}/a.txt",
    "http://2130706433.:{port}/a.txt",
    "http://0x7f.1.:{port}/a.txt",
    "http://127%2E0%2E0%2E1:{port}/a.txt",  # percent-encoded (requests decodes it)
    "http://169.254.169.254./latest/meta-data/",
    # Not globally reachable, though Python 3.11's `is_global` says they are.
    "http://[fec0::1]/",  # site-local (deprecated)
    "http://192.0.0.8/",  # IPv4 dummy address
    "http://192.0.0.200/",  # IETF protocol assignments
    "http://192.88.99.1/",  # 6to4 relay anycast (deprecated)
    "http://[2002:c058:6301::1]/",  # 6to4 of that relay
    "http://[3fff::1]/",  # documentation (RFC 9637)
    "http://[5f00::1]/",  # segment routing SIDs
    "http://[2001:db8::1]/",  # documentation
    "http://100.127.255.254/",  # shared address space
]

NAME_PAYLOADS = [
    "http://localhost:{port}/a.txt",
    "http://LOCALHOST:{port}/a.txt",
]


@pytest.fixture
def loopback(upstream: UpstreamServer) -> UpstreamServer:
    upstream.add("/a.txt", b"secret internal data")
    return upstream


@pytest.fixture
def strict_app(make_config: Callable[..., Config]) -> Flask:
    return create_app(make_config(HTTP_ALLOW_PRIVATE="false"))


def _post_bundle(app: Flask, src: str) -> Any:
    return app.test_client().post("/bundle", json={"files": [{"src": src}]})


def _assert_refused(response: Any, src: str) -> str:
    assert response.status_code == 403, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "source_refused"
    reasons = [item["reason"] for item in error["sources"]]
    assert len(reasons) == 1
    assert error["sources"][0]["src"] == src
    return str(reasons[0])


@pytest.mark.parametrize("payload", LITERAL_PAYLOADS)
def test_ip_literals_are_refused_in_any_notation(
    strict_app: Flask, loopback: UpstreamServer, payload: str
) -> None:
    src = payload.format(port=loopback.port)
    reason = _assert_refused(_post_bundle(strict_app, src), src)
    assert "HTTP_ALLOW_PRIVATE" in reason
    # Literals are refused when the bundle is created, too: no network I/O needed to know.
    client = strict_app.test_client()
    created = client.post("/", json={"files": [{"src": src}]})
    assert created.status_code == 403
    assert created.get_json()["error"]["code"] == "source_refused"
    bundle = client.post("/", json={"files": []}).get_json()
    appended = client.put(f"/{bundle['id']}/{bundle['secret']}", json={"files": [{"src": src}]})
    assert appended.status_code == 403
    assert appended.get_json()["error"]["code"] == "source_refused"
    assert client.get(f"/{bundle['id']}/{bundle['secret']}").get_json()["files"] == []
    assert loopback.requests == []


@pytest.mark.parametrize("host", [
    "\uff19\uff13.\uff11\uff18\uff14.\uff12\uff11\uff16.\uff13\uff14",  # full-width 93.184.216.34
    "93\u3002184\u3002216\u300234", "93.184.216.34.", "93%2E184%2E216%2E34", "127.0.0.1.",
])
def test_unusual_notations_of_an_address_are_refused_at_creation(client: Any, host: str) -> None:
    """HTTP clients and resolvers read these differently (requests refuses Unicode digits, a trailing
    dot makes a DNS query), so none is stored, whatever the address and even with HTTP_ALLOW_PRIVATE."""
    src = f"http://{host}/a.txt"
    for method, path in (("post", "/"), ("post", "/bundle")):
        response = getattr(client, method)(path, json={"files": [{"src": src}]})
        assert response.status_code == 403, (path, response.get_data(as_text=True))
        assert "notation" in response.get_json()["error"]["sources"][0]["reason"]


@pytest.mark.parametrize("payload", NAME_PAYLOADS)
def test_names_resolving_inward_are_refused(
    strict_app: Flask, loopback: UpstreamServer, payload: str
) -> None:
    src = payload.format(port=loopback.port)
    reason = _assert_refused(_post_bundle(strict_app, src), src)
    assert "non-public address" in reason
    assert "loopback" in reason
    assert loopback.requests == []


def test_refusal_names_the_class_of_address() -> None:
    assert refusal(ipaddress.ip_address("127.0.0.1")) == "127.0.0.1 is loopback"
    assert refusal(ipaddress.ip_address("100.64.0.1")) == "100.64.0.1 is shared address space"
    assert "link-local" in str(refusal(ipaddress.ip_address("169.254.169.254")))
    assert "inside ::ffff:7f00:1" in str(refusal(ipaddress.ip_address("::ffff:127.0.0.1")))
    assert "inside 64:ff9b::7f00:1" in str(refusal(ipaddress.ip_address("64:ff9b::7f00:1")))
    for public in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "64:ff9b::5db8:d822"):
        assert refusal(ipaddress.ip_address(public)) is None, public


# (address, refused?) where Python 3.11's tables and IANA's special-purpose registries disagree.
IANA_CASES = [
    ("192.0.0.8", True), ("192.0.0.11", True), ("192.0.0.255", True), ("192.88.99.0", True),
    ("192.88.99.255", True), ("fec0::1", True), ("feff::1", True), ("3fff::1", True),
    ("3fff:fff:ffff::1", True), ("5f00::1", True), ("100:0:0:1::1", True), ("4000::1", True),
    ("233.252.0.1", True), ("ff0e::1", True), ("::ffff:192.0.0.8", True), ("64:ff9b::c058:6301", True),
    # Globally reachable per IANA inside blocks that are not: stay allowed.
    ("192.0.0.9", False), ("192.0.0.10", False), ("2001:1::1", False), ("2001:1::2", False),
    ("2001:1::3", False), ("2001:3::1", False), ("2001:4:112::1", False), ("2001:20::1", False),
    ("2001:30::1", False), ("192.31.196.1", False), ("192.52.193.1", False), ("192.175.48.1", False),
    ("2620:4f:8000::1", False), ("3fff:1000::1", False), ("2001:200::1", False),
]


def test_a_stored_bundle_meets_todays_rules_when_downloaded(strict_app: Flask, upstream: UpstreamServer) -> None:
    """Bundles stored before these notations and ranges were refused at creation: refused the same way
    at download (403 naming the rule), nothing fetched or looked up."""
    upstream.add("/a.txt", b"data")
    client = strict_app.test_client()
    with strict_app.app_context():
        repository = get_repository()
    for host, words in ((f"127.0.0.1.:{upstream.port}", "loopback; only public addresses may be fetched"),
                        (f"\uff11\uff12\uff17.\uff10.\uff10.\uff11:{upstream.port}", "loopback; only public"),
                        ("93.184.216.34.", "notation"), ("[fec0::1]", "site-local"), ("192.0.0.8", "IETF")):
        bundle = Bundle.new("b.zip", (FileRef(f"http://{host}/a.txt"),), 60)
        repository.create(bundle)  # as an older version stored it, unchecked
        answer = client.get(f"/{bundle.id}")
        assert answer.status_code == 403, (host, answer.get_data(as_text=True))
        assert words in answer.get_json()["error"]["sources"][0]["reason"]
    assert upstream.requests == []


@pytest.mark.parametrize(("address", "refused"), IANA_CASES)
def test_the_rule_follows_the_iana_registries(address: str, refused: bool) -> None:
    reason = refusal(ipaddress.ip_address(address))
    assert (reason is not None) == refused, reason


def test_an_address_in_any_notation_is_connected_to_without_a_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """`93.184.216.34.` is a DNS query to getaddrinfo: the guard connects to the address itself."""
    calls: list[Any] = []
    real = socket.getaddrinfo

    def counting(host: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    policy = Policy()
    for host in ("93.184.216.34.", "93\u3002184\u3002216\u300234", "1572395042."):
        assert policy.resolve(host, 80) == [(socket.AF_INET, ("93.184.216.34", 80))], host
    with pytest.raises(AddressRefused, match="loopback"):
        policy.resolve("127.0.0.1.", 80)
    assert calls == []


def test_the_namespace_has_no_way_off_the_machine() -> None:
    """The guard of this module: it runs where only loopback exists, so nothing here can leak."""
    assert netns.inside()
    assert netns.interfaces() == ["lo"]
    for family, address in ((socket.AF_INET, ("192.0.2.1", 80)), (socket.AF_INET6, ("2001:db8::1", 80, 0, 0)),
                            (socket.AF_INET, ("169.254.169.254", 80))):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            assert sock.connect_ex(address) == errno.ENETUNREACH, address
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("zipstream-netns-guard.example.com", 80)


def test_literal_notations_are_read_like_libc() -> None:
    loopback = ipaddress.ip_address("127.0.0.1")
    for host in ("2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.1"):
        assert literal_address(host) == loopback, host
    assert literal_address("[::1]") == ipaddress.ip_address("::1")
    assert literal_address("example.com") is None


# -- names: a monkeypatched resolver stands in for DNS (there is none here) --


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> list[str]:
    """Make getaddrinfo answer `answers[host]` (one list of addresses per successive call)."""
    real = socket.getaddrinfo
    calls: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        calls.append(host)
        round_ = answers[host][min(len(calls) - 1, len(answers[host]) - 1)]
        return [
            (socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, 6, "",
             (address, int(port)) if ":" not in address else (address, int(port), 0, 0))
            for address in round_
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls


def test_a_name_with_any_inward_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {
        "inward.test": [["127.0.0.1"]],
        "mixed.test": [["93.184.216.34", "10.1.2.3"]],
        "mapped.test": [["::ffff:169.254.169.254"]],
        "public.test": [["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]],
    })
    policy = Policy()
    with pytest.raises(AddressRefused, match=r"127\.0\.0\.1 is loopback"):
        policy.resolve("inward.test", 80)
    with pytest.raises(AddressRefused, match=r"10\.1\.2\.3 is private"):
        policy.resolve("mixed.test", 80)
    with pytest.raises(AddressRefused, match="link-local"):
        policy.resolve("mapped.test", 80)
    assert [address for _family, (address, _port) in policy.resolve("public.test", 80)] == [
        "93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]
    assert Policy(allow_private=True).resolve("inward.test", 80)[0][1] == ("127.0.0.1", 80)


def test_dns_rebinding_connects_to_the_checked_address(
    monkeypatch: pytest.MonkeyPatch, make_config: Callable[..., Config]
) -> None:
    """One lookup per connection, and the socket goes to the address that was checked."""
    with UpstreamServer({"/a.txt": b"public data"}, host=STAND_IN) as public, \
            UpstreamServer({"/a.txt": b"internal data"}) as internal:
        # First answer: the "public" stand-in; every later answer: loopback (the rebinding attack).
        calls = _fake_dns(monkeypatch, {"rebind.test": [[STAND_IN], ["127.0.0.1"]]})
        source = HttpSource.from_config(make_config(HTTP_ALLOW_PRIVATE="false"), policy=STAND_IN_POLICY)
        src = f"http://rebind.test:{public.port}/a.txt"
        [info] = source.stat(src)
        # Had urllib3 looked the name up again to connect, it would have seen loopback.
        assert calls == ["rebind.test"]
        assert [r.method for r in public.requests] == ["GET"]  # pre-flight: a ranged GET
        # A kept-alive connection stays with the address that was checked.
        assert b"".join(source.open(info)) == b"public data"
        # The next new connection gets the rebinding answer, and that answer is checked and refused.
        source.transport.adapter.poolmanager.clear()
        with pytest.raises(SourceRefused, match=r"non-public address: 127\.0\.0\.1 is loopback"):
            b"".join(source.open(info))
        assert internal.requests == []


# -- redirects: every hop meets the same rule --


@pytest.fixture
def stand_in_app(make_config: Callable[..., Config]) -> Iterator[tuple[Flask, UpstreamServer]]:
    """The app with only 127.0.0.2 judged public, and an upstream listening there."""
    config = make_config(HTTP_ALLOW_PRIVATE="false")
    app = create_app(config)
    app.extensions["zipstream.sources"] = Sources([HttpSource.from_config(config, policy=STAND_IN_POLICY)])
    with UpstreamServer({"/a.txt": b"public data"}, host=STAND_IN) as public:
        yield app, public


def test_the_stand_in_upstream_is_served(stand_in_app: tuple[Flask, UpstreamServer]) -> None:
    app, public = stand_in_app
    response = _post_bundle(app, public.url("/a.txt"))
    assert response.status_code == 200
    assert b"public data" in response.data


def test_redirect_to_a_private_address_is_refused(
    stand_in_app: tuple[Flask, UpstreamServer], loopback: UpstreamServer
) -> None:
    app, public = stand_in_app
    for target in (loopback.url("/a.txt"), f"http://2130706433:{loopback.port}/a.txt",
                   f"http://localhost:{loopback.port}/a.txt", "http://169.254.169.254/latest/meta-data/"):
        public.set_behaviour("/hop", redirect_to=target)
        src = public.url("/hop")
        reason = _assert_refused(_post_bundle(app, src), src)
        assert "non-public address" in reason
    assert loopback.requests == []


def test_redirect_limits(stand_in_app: tuple[Flask, UpstreamServer]) -> None:
    app, public = stand_in_app
    for hop in range(7):
        public.set_behaviour(f"/chain{hop}", redirect_to=f"/chain{hop + 1}")
    public.add("/chain5", b"five hops away")
    public.add("/chain7", b"too far")
    public.clear_behaviour("/chain5")
    # Exactly 5 redirects are followed.
    assert _post_bundle(app, public.url("/chain0")).status_code == 200
    # The 6th is refused, naming the limit; so is a loop.
    src = public.url("/chain1")
    public.set_behaviour("/chain5", redirect_to="/chain6")
    assert "more than 5 redirects" in _assert_refused(_post_bundle(app, src), src)
    public.set_behaviour("/loop", redirect_to="/loop")
    src = public.url("/loop")
    assert "redirect limit" in _assert_refused(_post_bundle(app, src), src)


def test_redirect_to_other_schemes_is_refused(stand_in_app: tuple[Flask, UpstreamServer]) -> None:
    app, public = stand_in_app
    for target in ("file:///etc/passwd", "gopher://127.0.0.2:70/_x", "ftp://example.com/x"):
        public.set_behaviour("/hop", redirect_to=target)
        src = public.url("/hop")
        assert "non-http URL" in _assert_refused(_post_bundle(app, src), src)


def test_proxy_settings_from_the_environment_are_ignored(
    monkeypatch: pytest.MonkeyPatch, app: Flask, upstream: UpstreamServer
) -> None:
    with UpstreamServer() as proxy:
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.base_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        upstream.add("/a.txt", b"direct")
        # Sanity: requests itself would route this through the proxy.
        assert requests.get(upstream.url("/a.txt"), timeout=5).status_code == 404
        assert len(proxy.requests) == 1
        proxy.clear_log()
        response = app.test_client().post("/bundle", json={"files": [{"src": upstream.url("/a.txt")}]})
        assert response.status_code == 200
        assert b"direct" in response.data
        assert proxy.requests == []
        assert upstream.requests_for("/a.txt", "GET")


def test_http_hosts_allowlist(make_config: Callable[..., Config], upstream: UpstreamServer) -> None:
    app = create_app(make_config(HTTP_HOSTS="example.com,127.0.0.1"))
    client = app.test_client()
    for src in ("http://evil.com/a", "http://badexample.com/a", "http://example.com.evil.com/a",
                "http://localhost/a"):
        response = client.post("/", json={"files": [{"src": src}]})
        assert response.status_code == 403, src
        error = response.get_json()["error"]
        assert error["code"] == "source_refused"
        assert "HTTP_HOSTS" in error["sources"][0]["reason"]
    for src in ("http://example.com/a", "https://cdn.example.com/a", "http://EXAMPLE.com./a"):
        assert client.post("/", json={"files": [{"src": src}]}).status_code == 201, src
    # A redirect off the list is refused even though the first host is on it.
    upstream.set_behaviour("/hop", redirect_to=f"http://localhost:{upstream.port}/a.txt")
    upstream.add("/a.txt", b"data")
    src = upstream.url("/hop")
    response = client.post("/bundle", json={"files": [{"src": src}]})
    assert response.status_code == 403
    assert "HTTP_HOSTS" in response.get_json()["error"]["sources"][0]["reason"]
