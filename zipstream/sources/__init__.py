"""Where file bytes come from. A source turns a `src` into metadata (`stat`) and byte chunks (`open`).

The contract is `contract.Source` (one backend per module: http.py, s3.py, file.py); `Sources` routes
each src to the backend of its scheme, counts the requests and reads on where a body was cut. The
backends FS_INTERFACES names are built from the settings (`build_sources`), once per app (`init_app`,
`get_sources`). Nothing here imports Flask. Library errors (requests, botocore, OS errors) are
translated into `SourceError` subclasses inside each source module, so callers never see which
library was used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .. import counters
from ..chunks import CHUNK_SIZE, close_iterator
from ..config import Config
from ..deadline import Deadline
from ..errors import SourceChanged, SourceError, SourceInterrupted, SourceRefused
from .contract import Source, SourceInfo
from .held import HoldScope

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["BACKENDS", "CHUNK_SIZE", "HoldScope", "Source", "SourceInfo", "Sources", "build_sources",
           "get_sources", "init_app"]

log = logging.getLogger(__name__)

_EXTENSION = "zipstream.sources"


class Sources:
    """The enabled filestore backends, by scheme: every src is checked, stat-ed and read through here."""

    def __init__(self, backends: list[Source]) -> None:
        self.by_scheme: dict[str, Source] = {}
        for backend in backends:
            for scheme in backend.schemes:
                self.by_scheme[scheme] = backend

    def backend(self, src: str) -> Source:
        """The backend reading `src`'s scheme; SourceRefused naming the enabled ones if none does."""
        scheme = scheme_of(src)
        try:
            return self.by_scheme[scheme]
        except KeyError:
            enabled = ", ".join(sorted(self.by_scheme)) or "none"
            reason = f"scheme {scheme or '(none)'!r} is not enabled (enabled: {enabled})"
            raise SourceRefused(src, reason) from None

    def check(self, src: str) -> None:
        """Refuse a src no enabled backend will read (SourceRefused); no I/O (see `Source.check`)."""
        self.backend(src).check(src)

    def stat(self, src: str, deadline: Deadline | None = None) -> list[SourceInfo]:
        """The backend's `stat` of `src` (see `Source.stat`), counted in zipstream_upstream_requests."""
        backend = self.backend(src)
        label = counters.backend_label(scheme_of(src))
        counters.upstream_requests(label, "stat").inc()
        try:
            return backend.stat(src, deadline)
        except SourceError as error:
            counters.UPSTREAM_ERRORS.labels(label, "stat", error.code).inc()
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
        label = counters.backend_label(scheme_of(info.src))
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
            counters.upstream_requests(label, "open").inc()
            try:
                body = backend.open(current, position)
            except SourceError as error:
                counters.UPSTREAM_ERRORS.labels(label, "open", error.code).inc()
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
                    del chunk  # not kept while the next is read (memory.py: a grant covers one chunk)
                if pending:
                    yield pending
                if distrusted and unstable is not None:
                    unstable(info)
                return
            except SourceError as error:
                counters.UPSTREAM_ERRORS.labels(label, "read", error.code).inc()
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


def scheme_of(src: str) -> str:
    """`urlsplit(src).scheme` (lower case), without splitting the rest of `src` when the scheme is
    plain letters: pre-flight asks for it several times per src, thousands of srcs per download."""
    scheme, colon, _ = src.partition(":")
    if colon and scheme.isascii() and scheme.isalpha():
        return scheme.lower()
    return urlsplit(src).scheme


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


def _http() -> type[Source]:
    from .http import HttpSource

    return HttpSource


def _s3() -> type[Source]:
    from .s3 import S3Source  # botocore is imported only where S3 is enabled

    return S3Source


def _file() -> type[Source]:
    from .file import FileSource

    return FileSource


# Every backend by its FS_INTERFACES name ("https" reads http:// and https://), imported when enabled.
BACKENDS: dict[str, Callable[[], type[Source]]] = {"https": _http, "s3": _s3, "file": _file}


def build_sources(config: Config) -> Sources:
    """The backends FS_INTERFACES names, each built from the config (`Source.from_config`)."""
    return Sources([load().from_config(config) for name, load in BACKENDS.items() if name in config.fs_interfaces])


def init_app(app: Flask, config: Config) -> None:
    """Build the app's sources from `config`; `get_sources()` gives them to its requests."""
    app.extensions[_EXTENSION] = build_sources(config)


def get_sources() -> Sources:
    """The running app's sources (inside a request or an app context)."""
    from flask import current_app  # only the web layer asks, so only it imports Flask

    sources: Sources = current_app.extensions[_EXTENSION]
    return sources
