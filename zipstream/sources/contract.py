"""The `Source` contract every filestore backend implements, and `SourceInfo`, what pre-flight learns.

A backend serves the srcs of one or more URL schemes (`schemes`), builds itself from the settings
(`from_config`), refuses what it will never read (`check`), describes a src (`stat`) and reads it
(`open`). tests/test_sources.py runs one suite of these promises over every backend.

Errors are `SourceError` subclasses (zipstream.errors), whatever library a backend uses:
`SourceRefused` (403: not allowed here), `SourceNotFound` (422: missing, or access denied),
`SourceChanged` (502: not the version pre-flight saw), `SourceInterrupted` (a body cut part-way; may be
read on from where it stopped), `SourceTimeout` (504), and plain `SourceError` (502) for the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar, Protocol

from .held import Head

if TYPE_CHECKING:
    from typing import Self

    from ..config import Config
    from ..deadline import Deadline

@dataclass(frozen=True)
class SourceInfo:
    """What pre-flight learned about one file: enough to lay out the zip and to re-open it safely."""

    src: str
    name: str  # default entry name (relative path), before sanitising
    size: int | None  # bytes; None when the source can't tell before the body is read
    etag: str | None = None  # as the source spells it, quotes and `W/` included
    last_modified: datetime | None = None  # timezone-aware (UTC)
    crc32: int | None = None  # a full-object CRC-32 the store vouches for
    # Backend-specific handles (bucket/key, final URL after redirects, path on disk).
    location: tuple[str, ...] = field(default=())
    # The file's first bytes (or all of it) if pre-flight fetched them (see held.py); not part of its
    # identity. `Sources.open` streams them before asking the backend for the rest.
    head: Head | None = field(default=None, compare=False, repr=False)
    # False when the source's validators were seen to disagree between requests for the same file
    # (per-host ETags behind a load balancer, an ETag new on every response): they can't vouch for
    # its bytes across requests, so it counts as not validated (no ranges, no ETag, no continuation).
    stable: bool = True

    @property
    def strong_etag(self) -> str | None:
        """The ETag if it is a strong one (the only kind If-Range can use), else None."""
        return self.etag if self.etag is not None and not self.etag.startswith("W/") else None

    @property
    def validated(self) -> bool:
        """True when a change to the file would show in its metadata (so resumes can be safe).

        A weak ETag (`W/"..."`) does not count: equal weak tags need not mean equal bytes, and
        If-Range can't use one, so a source with nothing better can't be continued mid-file.
        """
        return self.stable and self.size is not None and (
            self.strong_etag is not None or self.last_modified is not None)

    def identity(self) -> str:
        """A key for 'this exact version of this file': learned CRCs are stored under it (a SHA-256, hex)."""
        # Worked out once per SourceInfo: a download asks for it several times (the cache read, the ETag,
        # the CRC-32s learned while streaming). Kept beside the fields, so never compared, and `replace()`
        # starts afresh. Not functools.cached_property: Python 3.11's takes a lock on every read, which
        # under gevent is a Python-level lock (it cost more than the hash).
        cached: str | None = self.__dict__.get("_identity")
        if cached is None:
            stamp = self.last_modified.isoformat() if self.last_modified else ""
            raw = "\x00".join((self.src, str(self.size), self.etag or "", stamp))
            cached = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()
            self.__dict__["_identity"] = cached
        return cached


class Source(Protocol):
    """A filestore backend, chosen by the scheme of a `src` (see `zipstream.sources.BACKENDS`)."""

    schemes: ClassVar[tuple[str, ...]]  # the URL schemes it reads, lower case ("http", "https")

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """The backend with its settings read from `config` (the setting names are in config.py).

        Raises ValueError when a setting it needs is missing (Config.from_env refuses such a config
        before it gets here). Does no I/O: connections are made by the first `stat` or `open`.
        """
        ...

    def check(self, src: str) -> None:
        """Refuse a src this backend will never read (malformed, not allowed) by raising SourceRefused.

        Called at validation time, before anything is stored or fetched, and again by `stat` (a src
        stored before a rule changed meets today's rules). No I/O: it reads only `src` and the settings.
        """
        ...

    def stat(self, src: str, deadline: Deadline | None = None) -> list[SourceInfo]:
        """What `src` is: one SourceInfo, or one per file for a src naming a folder (an S3 prefix or a
        `file://` directory ending in '/'), in a stable order (by key or path).

        `src` is checked first (SourceRefused). A src that does not exist, or that the backend may
        not read, raises SourceNotFound (an S3 prefix with no objects too: S3 can't tell it from a
        mistyped one; an existing empty directory is an empty list). With a `deadline`, a network backend
        starts no request after it has passed or been cancelled (`deadline.check`), caps each
        attempt's timeout and back-off by the time left, and lets `deadline.aborting` unblock a
        request in flight; it raises SourceTimeout (or ClientGone) then.
        """
        ...

    def open(self, info: SourceInfo, start: int = 0) -> Iterator[bytes]:
        """The file's bytes from offset `start` (0 <= start <= size), in chunks of at most
        CHUNK_SIZE, only if it is still the version `info` describes.

        Raises SourceChanged, before the first chunk where the source can tell (its validators or
        its size differ from `info`'s) and at the latest when the bytes run out early or go on too
        long; SourceInterrupted when the body is cut part-way (`Sources.open` reads on from there);
        SourceNotFound or SourceChanged for a file gone since `stat`; SourceError on other failures.
        The iterator holds an upstream body (a connection, a descriptor) from its first `next()` and
        gives it back when exhausted, when it raises and when it is closed part-way (`close()`).
        """
        ...
