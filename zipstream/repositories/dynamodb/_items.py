"""The table's item kinds and their keys, and the files of a bundle as JSON chunks (see the package docstring)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ...models import FileRef

META = "meta"  # sort key of a bundle's meta item
CHUNK_PREFIX = "files#"  # sort keys of a bundle's file chunks
CRC_PREFIX = "crc#"  # partition keys of learned CRC-32s (sort key "crc")
SERVED_PREFIX = "served#"  # partition keys of served records (sort key "served")
UNSTABLE_PREFIX = "unstable#"  # partition keys of unstable marks (sort key "unstable")
TTL_ATTRIBUTE = "expirationDate"  # every item's; the table's TTL attribute (unix seconds)
# JSON bytes per chunk item: far below the 400 KB item limit, whatever the attribute overhead.
CHUNK_BYTES = 256 * 1024


def key(pk: str, sk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def s(item: Mapping[str, Any], name: str) -> str:
    """A string attribute of an item."""
    return str(item[name]["S"])


def n(item: Mapping[str, Any], name: str) -> int:
    """A number attribute of an item."""
    return int(item[name]["N"])


def encode_files(files: Sequence[FileRef]) -> list[tuple[str, int]]:
    """The files as JSON chunks of at most CHUNK_BYTES each: (json, number of files)."""
    chunks: list[tuple[str, int]] = []
    current: list[str] = []
    size = 2
    for ref in files:
        encoded = json.dumps([ref.src, ref.dst, ref.crc32], ensure_ascii=False, separators=(",", ":"))
        length = len(encoded.encode("utf-8")) + 1
        if current and size + length > CHUNK_BYTES:
            chunks.append(("[" + ",".join(current) + "]", len(current)))
            current, size = [], 2
        current.append(encoded)
        size += length
    if current:
        chunks.append(("[" + ",".join(current) + "]", len(current)))
    return chunks


def decode_files(raw: str) -> list[FileRef]:
    return [FileRef(src=src, dst=dst, crc32=crc) for src, dst, crc in json.loads(raw)]
