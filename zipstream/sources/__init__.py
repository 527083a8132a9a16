"""Where file bytes come from. A source turns a `src` into metadata (`stat`) and byte chunks (`open`).

Nothing here knows about Flask. Library errors (requests, botocore, OS errors) are translated into
`SourceError` subclasses inside each source module, so callers never see which library was used.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit

from .. import metrics
from ..chunks import close_iterator
from ..config import Config
from ..deadline import Deadline
from ..errors import SourceChanged, SourceError, SourceInterrupted, SourceRefused
from .held import Head, HoldBudget, Holding

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceInfo:
    """What pre-flight learned about one file: enough to lay out the zip and to re-open it safely."""

    src: str
    name: str  # default entry name (relative path), before sanitising
    size: int | None
    etag: str | None = None
    last_modified: datetime | None = None
    crc32: int | None = None  # a full-object CRC-32 the store vouches for
    # Backend-specific handles (bucket/key, final URL after redirects, path on disk).
    location: tuple[str, ...] = field(default=())
    # The file's first bytes (or all of it) if pre-flight fetched them; not part of its identity.
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
        """A key for 'this exact version of this file': learned CRCs are stored under it."""
        stamp = self.last_modified.isoformat() if self.last_modified else ""
        raw = "\x00".join((self.src, str(self.size), self.etag or "", stamp))
        return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


class Source(Protocol):
    """A filestore backend, chosen by the scheme of a `src`."""

    schemes: tuple[str, ...]

    def check(self, src: str) -> None:
        """Refuse a src this backend will never read (malformed, not allowed) by raising SourceRefused.

        Called at validation time, before anything is stored or fetched; must not do network I/O.
        """

    def stat(self, src: str, holding: Holding | None = None,
             deadline: Deadline | None = None) -> list[SourceInfo]:
        """Metadata of the file(s) `src` names (several for an S3 prefix), raising SourceError.

        With a `holding`, a backend may also fetch a file's first bytes while it is at it and return
        them as `SourceInfo.head`, within the holding's budget (see held.py). With a `deadline`, a
        network backend starts no request after it has passed or been cancelled (`deadline.check`),
        caps each attempt's timeout and back-off by the time left, and lets `deadline.aborting`
        unblock a request in flight; it raises SourceTimeout (or ClientGone) then.
        """

    def open(self, info: SourceInfo, start: int = 0) -> Iterator[bytes]:
        """The file's bytes from offset `start`, only if it is still the version `info` describes.

        Raises SourceChanged if it is not, SourceError on failure. The iterator closes its
        upstream body when closed or exhausted.
        """


class Sources:
    """The enabled filestore backends, by scheme."""

    def __init__(self, backends: list[Source], hold_bytes: int = 0) -> None:
        self.budget = HoldBudget(hold_bytes)
        self.by_scheme: dict[str, Source] = {}
        for backend in backends:
            for scheme in backend.schemes:
                self.by_scheme[scheme] = backend

    def backend(self, src: str) -> Source:
        scheme = urlsplit(src).scheme.lower()
        try:
            return self.by_scheme[scheme]
        except KeyError:
            enabled = ", ".join(sorted(self.by_scheme)) or "none"
            reason = f"scheme {scheme or '(none)'!r} is not enabled (enabled: {enabled})"
            raise SourceRefused(src, reason) from None

    def check(self, src: str) -> None:
        self.backend(src).check(src)

    def holding(self) -> Holding | None:
        """One download's share of the bytes pre-flight may hold (half the worker's), or None if off."""
        return Holding(self.budget, self.budget.total // 2) if self.budget.total > 0 else None

    def stat(self, src: str, holding: Holding | None = None,
             deadline: Deadline | None = None) -> list[SourceInfo]:
        backend = self.backend(src)
        label = metrics.backend_label(urlsplit(src).scheme)
        metrics.UPSTREAM_REQUESTS.labels(label, "stat").inc()
        try:
            return backend.stat(src, holding, deadline)
        except SourceError as error:
            metrics.UPSTREAM_ERRORS.labels(label, "stat", error.code).inc()
            raise

    def open(self, info: SourceInfo, start: int = 0, retries: int = 3,
             unstable: Callable[[SourceInfo], None] | None = None) -> Iterator[bytes]:
        """Chunks of `info` from `start`; a body cut mid-way is re-opened where it stopped.

        Re-opening is conditional on the same version (the backends send If-Range / IfMatch),
        so a file that changed in between raises SourceChanged instead of splicing two versions.

        `unstable`: given when nothing of this member has been sent by any response (it is read
        whole, `start` 0). Then validators that disagree with pre-flight's before the first byte is
        yielded don't end the download: the file is read whole again, first as the version it just
        answered with (a file that really changed), then, if that disagrees too (per-host ETags
        behind a load balancer, an ETag new on every response), asking no version, its size still
        checked; `unstable(info)` is called once such a read is complete. Held first bytes are
        yielded only once the continuation has answered as the same version, so they count as
        not sent.
        """
        backend = self.backend(info.src)
        label = metrics.backend_label(urlsplit(info.src).scheme)
        position = start
        held = info.head.take() if info.head is not None else None
        pending = b""  # held bytes waiting for the continuation to prove the same version
        if held is not None and not info.stable and len(held) != info.size:
            held = None  # validators that can't be trusted can't continue a first part
        if held is not None and (start < len(held) or len(held) == info.size):
            position = len(held)
            pending = held[start:] if start else held
            held = None  # the budget has it back: don't keep it alive while the rest streams
            if position == info.size:
                if pending:
                    yield pending
                return
        current = info if info.stable else _without_validators(info)
        # Validators that disagree before anything of the member went out: read it whole again,
        # first expecting the validators just seen (a file that really changed shows them again),
        # then, if those differ too (they change between requests), with none. Never after a byte.
        rereads = 0 if unstable is not None and start == 0 else 2
        distrusted = False  # read without validators because they kept disagreeing
        sent = False
        attempts = 0
        while True:
            metrics.UPSTREAM_REQUESTS.labels(label, "open").inc()
            try:
                body = backend.open(current, position)
            except SourceError as error:
                metrics.UPSTREAM_ERRORS.labels(label, "open", error.code).inc()
                if not sent and rereads < 2 and isinstance(error, SourceChanged) and error.seen:
                    rereads += 1
                    distrusted = rereads == 2
                    current, position, pending = _reread(info, error, rereads), 0, b""
                    continue
                raise
            try:
                for chunk in body:
                    if pending:
                        sent = True
                        yield pending
                        pending = b""
                    position += len(chunk)
                    sent = True
                    yield chunk
                if pending:
                    yield pending
                if distrusted and unstable is not None:
                    unstable(info)
                return
            except SourceError as error:
                metrics.UPSTREAM_ERRORS.labels(label, "read", error.code).inc()
                if not sent and rereads < 2 and isinstance(error, SourceChanged) and error.seen:
                    rereads += 1
                    distrusted = rereads == 2
                    current, position, pending = _reread(info, error, rereads), 0, b""
                    continue
                if not isinstance(error, SourceInterrupted):
                    raise
                attempts += 1
                # Only a body whose validators held can be continued (If-Range / IfMatch on them).
                resumable = current.validated and attempts <= retries
                if not resumable:
                    raise
                log.warning("re-opening %s at byte %d after: %s", info.src, position, error.reason)
            finally:
                close_iterator(body)


def _reread(info: SourceInfo, error: SourceChanged, rereads: int) -> SourceInfo:
    """`info` for reading the file whole again (nothing of it sent yet) after `error`: the first
    time as the version just seen, the second time asking no version (validators that change
    between requests; its size is still checked)."""
    if rereads == 1 and error.seen is not None:
        log.warning("reading %s whole again as the version it answered with (nothing of it sent yet) "
                    "after: %s", info.src, error.reason)
        etag, modified = error.seen
        return replace(info, etag=etag, last_modified=modified, head=None)
    log.warning("reading %s whole again without validators: they differ between requests (%s)",
                info.src, error.reason)
    return _without_validators(info)


def _without_validators(info: SourceInfo) -> SourceInfo:
    """`info` for a read that asks no version (no If-Range / IfMatch) but still checks the size."""
    return replace(info, etag=None, last_modified=None, head=None, stable=False)


def build_sources(config: Config) -> Sources:
    """The backends named by FS_INTERFACES, each built from the config."""
    backends: list[Source] = []
    if "https" in config.fs_interfaces:
        from .http import HttpSource

        backends.append(HttpSource(config))
    if "s3" in config.fs_interfaces:
        from .s3 import S3Source

        backends.append(S3Source(config))
    if "file" in config.fs_interfaces:
        from .file import FileSource

        backends.append(FileSource(config))
    return Sources(backends, hold_bytes=config.preflight_hold_bytes if config.preflight_fetch_bytes else 0)
