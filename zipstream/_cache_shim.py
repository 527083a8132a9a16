"""TEMPORARY (issue 15, R1): the download cache over today's BundleRepository, until
repositories' `CrcCache` / `Known` (R3) reach main; then every import of this module becomes
`from .repositories import CrcCache, Known` and this file goes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from .repositories import BundleRepository


@dataclass(frozen=True)
class Known:
    crcs: Mapping[str, int] = field(default_factory=dict)
    delivered: int = 0
    unstable: frozenset[str] = frozenset()


def _unstable_key(src: str) -> str:
    return hashlib.sha256(f"unstable\x00{src}".encode("utf-8", "surrogatepass")).hexdigest()


def _served_key(version: str) -> str:
    return hashlib.sha256(f"delivered\x00{version}".encode()).hexdigest()


class CrcCache:
    def __init__(self, repository: BundleRepository) -> None:
        self.repository = repository

    def known(self, identities: Collection[str], srcs: Collection[str], version: str | None) -> Known:
        unstable = {_unstable_key(src): src for src in srcs}
        served = _served_key(version) if version is not None else None
        keys = [*identities, *unstable, *([served] if served else [])]
        if not keys:
            return Known()
        found = self.repository.get_crcs(keys)
        wanted = set(identities)
        return Known(
            crcs={key: crc for key, crc in found.items() if key in wanted},
            delivered=found.get(served, 0) if served else 0,
            unstable=frozenset(src for key, src in unstable.items() if key in found),
        )

    def put_crcs(self, crcs: Mapping[str, int]) -> None:
        self.repository.put_crcs(crcs)

    def mark_served(self, version: str, delivered: int) -> None:
        self.repository.put_crcs({_served_key(version): delivered})

    def mark_unstable(self, src: str) -> None:
        self.repository.put_crcs({_unstable_key(src): 0})
