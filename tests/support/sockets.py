"""Which local addresses a TCP port is listening on, read from /proc/net/tcp{,6} (Linux)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

_LISTEN = "0A"


def _address(hex_address: str) -> str:
    """/proc/net/tcp's little-endian hex address (per 32-bit word) -> its usual text form."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening_addresses(port: int) -> set[str]:
    """Every address a socket of this host listens on at `port`, e.g. {"127.0.0.1"} or {"0.0.0.0"}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, _, hex_port = local.partition(":")
            if state == _LISTEN and int(hex_port, 16) == port:
                found.add(_address(address))
    return found
