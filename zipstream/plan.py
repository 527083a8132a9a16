"""The zip plan: what one download will send, decided from pre-flight's answers alone. No I/O.

From the file references and what pre-flight learned of each src (`SourceInfo`): the entries, in order,
with their safe, unique names (names.py); the limits (MAX_FILES, MAX_BUNDLE_BYTES, and what ZIP64 can
address); the stored zip's layout (archive.ZipPlan: every offset, so the exact length); and the ETag,
which changes whenever any byte of the zip would. Everything here that can refuse a zip raises before
the first byte (STYLE.md habit 5).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property

from .archive import Entry, ZipPlan, clamp_time
from .errors import LimitExceeded, SourceError, SourcesFailed
from .models import FileRef
from .names import safe_name, unique_names
from .numbers import MAX_BYTES
from .sources import SourceInfo


def check_count(count: int, max_files: int, expanded: bool = False) -> None:
    """Raise LimitExceeded (413) if a bundle of `count` files passes MAX_FILES.

    Checked twice: on the stored list before pre-flight (a bundle stored before MAX_FILES was lowered
    is refused before any source is asked), and on what the srcs expand to (`expanded`: a prefix or
    directory may name far more files) before any name is made.
    """
    if count > max_files:
        how = "expands to" if expanded else "holds"
        raise LimitExceeded(f"the bundle {how} {count} files; at most {max_files} are allowed (MAX_FILES)",
                            limit="MAX_FILES")


def entry_names(files: Sequence[FileRef], stats: Sequence[Sequence[SourceInfo]]) -> list[str]:
    """The unique, safe entry name of every file, in order (prefixes expanded in place)."""
    names = []
    for ref, infos in zip(files, stats, strict=True):
        expanded = len(infos) != 1 or ref.src.endswith("/")
        for info in infos:
            if ref.dst and expanded:
                name = safe_name(f"{ref.dst}/{info.name}")
            elif ref.dst:
                name = safe_name(ref.dst)
            else:
                name = safe_name(info.name)
            # A dst that leaves nothing once made safe ("", "..", "/") means the src's default name.
            names.append(name or safe_name(info.name) or safe_name(info.src.split("://", 1)[-1]) or "file")
    return unique_names(names)


@dataclass(frozen=True)
class Plan:
    """One zip, decided: its entries and their sources, its stored layout, length and ETag."""

    filename: str  # as stored or posted; made safe for Content-Disposition by the response
    compression: str  # "stored" or "deflate"
    entries: list[Entry]
    infos: list[SourceInfo]  # the source of each entry, in the same order
    layout: ZipPlan | None  # every offset of a stored zip; None for deflate (length unknown)

    @property
    def length(self) -> int | None:
        """The zip's exact length in bytes, or None (deflate, or a member without a size)."""
        return self.layout.length if self.layout is not None else None

    @cached_property  # a pass over every source; asked by the ETag, the cache read and the response
    def rangeable(self) -> bool:
        """Byte ranges (and resume) need a stored zip whose every source has a size and a validator."""
        return self.layout is not None and self.layout.sized and all(info.validated for info in self.infos)

    @cached_property
    def etag(self) -> str | None:
        """A strong ETag (RFC 9110 §8.8.3) that changes whenever any byte of the zip would; None
        unless rangeable."""
        if not self.rangeable or self.layout is None:
            return None
        digest = hashlib.sha256(self.layout.fingerprint().encode())
        for info in self.infos:
            digest.update(info.identity().encode())
        return f'"zs1-{digest.hexdigest()[:40]}"'

    @property
    def last_modified(self) -> datetime:
        """The newest entry's modification time (the Unix epoch for an empty zip)."""
        return max((entry.modified_at for entry in self.entries), default=datetime.fromtimestamp(0, UTC))

    @property
    def sized_bytes(self) -> int:
        """The bytes of every member whose size pre-flight learned (counted against MAX_BUNDLE_BYTES)."""
        return sum(entry.size or 0 for entry in self.entries)

    def first_whole_member(self, start: int) -> int:
        """Index of the first member whose data starts at or after zip offset `start`."""
        if self.layout is None or start == 0:
            return 0
        for index, member in enumerate(self.layout.members):
            if member.offset + len(member.header) >= start:
                return index
        return len(self.layout.members)

    def distrust(self, indexes: Iterable[int]) -> Plan:
        """This plan with the sources at `indexes` marked unstable (their validators were seen to differ
        between requests): their versions can't be vouched for across requests, so the zip has no ETag
        and no ranges."""
        infos = list(self.infos)
        for index in indexes:
            infos[index] = replace(infos[index], stable=False)
        return replace(self, infos=infos)


def plan_zip(files: Sequence[FileRef], stats: Sequence[Sequence[SourceInfo]], filename: str, compression: str,
             created_at: int, max_files: int, max_bundle_bytes: int) -> Plan:
    """The plan of the zip of `files`, given what pre-flight learned of each (`stats`, in order).

    `created_at` (Unix time) is the time of a member whose source gave none. Raises LimitExceeded
    (MAX_FILES, MAX_BUNDLE_BYTES, ZIP64; 0 for `max_bundle_bytes` means no limit) and SourcesFailed
    (a source claiming a size no file can have).
    """
    # Before any name is made: a prefix or directory may expand to far more files than MAX_FILES.
    check_count(sum(len(infos) for infos in stats), max_files, expanded=True)
    names = entry_names(files, stats)
    fallback_time = clamp_time(datetime.fromtimestamp(created_at, UTC))
    entries: list[Entry] = []
    infos: list[SourceInfo] = []
    position = 0
    for ref, expanded in zip(files, stats, strict=True):
        for info in expanded:
            given = ref.crc32 if len(expanded) == 1 else None
            entries.append(Entry(
                name=names[position],
                size=info.size,
                modified_at=clamp_time(info.last_modified) if info.last_modified else fallback_time,
                # An empty file's CRC-32 is 0: known up front, so it never needs reading for it.
                crc32=given if given is not None else info.crc32 if info.size != 0 else 0,
            ))
            infos.append(info)
            position += 1
    # A store's size is its own say (botocore reads any int): none is below 0 or above numbers.MAX_BYTES.
    absurd = [SourceError(info.src, f"the source claims a size of {info.size} bytes") for info in infos
              if info.size is not None and not 0 <= info.size <= MAX_BYTES]
    if absurd:
        raise SourcesFailed(absurd)
    total = sum(entry.size or 0 for entry in entries)
    if total > MAX_BYTES:  # ZIP64 offsets are 64-bit: the layout could not even be written
        raise LimitExceeded(f"the files add up to {total} bytes; a zip holds at most {MAX_BYTES} (ZIP64)",
                            limit="ZIP64")
    if max_bundle_bytes and total > max_bundle_bytes:
        raise LimitExceeded(
            f"the files add up to {total} bytes; at most {max_bundle_bytes} are allowed (MAX_BUNDLE_BYTES)",
            limit="MAX_BUNDLE_BYTES",
        )
    layout = ZipPlan(entries) if compression == "stored" else None
    return Plan(filename=filename, compression=compression, entries=entries, infos=infos, layout=layout)
