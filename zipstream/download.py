"""One download, prepared: pre-flight, the plan, and what earlier downloads recorded, before any byte.

The data path, top to bottom: `prepare()` runs pre-flight (preflight.py), lays the zip out
(plan.py) and reads what earlier downloads of it recorded (the CrcCache); the response
(response.py) then sends the `PreparedZip`'s bytes (stream.py). Everything that can fail is
decided here, before the first byte is sent (STYLE.md habit 5); what the stream raises afterwards
can only abort the connection.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .config import Config
from .deadline import Deadline
from .errors import SchemaNotReady
from .models import FileRef
from .plan import Plan, plan_zip
from .preflight import heads_given_back_on_error, preflight
from .repositories import CrcCache, Known
from .sources import Sources
from .stream import ZipStream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedZip:
    """A zip whose every source answered: its plan, its bytes, and what earlier downloads recorded."""

    plan: Plan
    body: ZipStream
    # Bytes of this exact zip (by ETag), from its first, known to have gone out in some response:
    # a resume without a validator is only honoured inside them (response.py). Unknown counts as 0.
    delivered: int = 0
    # Where the response records the bytes it sends (CrcCache.mark_served); None: nowhere.
    cache: CrcCache | None = None

    @property
    def etag(self) -> str | None:
        return self.plan.etag

    @property
    def rangeable(self) -> bool:
        return self.plan.rangeable

    def stream(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """The zip's bytes [start, stop) (ZipStream.stream)."""
        return self.body.stream(start, stop)


def prepare(
    files: Sequence[FileRef],
    filename: str,
    compression: str,
    created_at: int,
    sources: Sources,
    cache: CrcCache | None,
    config: Config,
    hold: bool = False,
    deadline: Deadline | None = None,
) -> PreparedZip:
    """Pre-flight every source, lay out the zip and read what earlier downloads recorded of it;
    raises before anything is sent.

    `hold`: let pre-flight keep small files' bytes for the stream (a whole-zip GET; not for HEAD
    or a range, which would hold bytes they never send). `deadline`: pre-flight's time limit and
    cancellation (default: PREFLIGHT_TIMEOUT from now).
    """
    if deadline is None:
        deadline = Deadline(config.preflight_timeout)
    stats = preflight(files, sources, config.preflight_concurrency, deadline, hold)
    with heads_given_back_on_error(stats):
        plan = plan_zip(files, stats, filename, compression, created_at, config.max_files,
                        config.max_bundle_bytes)
        known = _known(plan, cache)
        delivered = known.delivered
        if unsteady := [index for index, info in enumerate(plan.infos)
                        if info.validated and info.src in known.unstable]:
            plan = plan.distrust(unsteady)  # no ETag now: nothing of "this version" was delivered
            delivered = 0
        learned = {}
        if known.crcs:
            for index, info in enumerate(plan.infos):
                crc = known.crcs.get(info.identity()) if plan.entries[index].crc32 is None else None
                if crc is not None and info.validated:
                    learned[index] = crc
        body = ZipStream(plan, sources.open, cache, learned, prefetch=config.prefetch,
                         prefetch_bytes=config.prefetch_bytes, max_bytes=config.max_bundle_bytes)
    return PreparedZip(plan, body, delivered, cache)


def _known(plan: Plan, cache: CrcCache | None) -> Known:
    """What earlier downloads recorded of a stored zip's sources and version, in one read: learned
    CRC-32s, how much of this version went out, which srcs' validators differ between requests.

    A cache that fails is a miss (it costs upstream reads or a refused resume), except a missing
    table: that is a 503 naming `zipstream migrate` (SchemaNotReady), since a quiet miss would turn
    every resume into a 200 of the whole zip.
    """
    if plan.layout is None or cache is None:
        return Known()
    identities: dict[str, None] = {}  # dicts as ordered sets: each asked once, in order
    srcs: dict[str, None] = {}
    for info, entry in zip(plan.infos, plan.entries, strict=True):
        if info.validated:
            srcs[info.src] = None
            if entry.crc32 is None:
                identities[info.identity()] = None
    try:
        return cache.known(list(identities), list(srcs), plan.etag)
    except SchemaNotReady:
        raise
    except Exception as error:  # noqa: BLE001 - a cache miss only costs upstream reads / a restart
        log.warning("could not read learned CRC-32s: %s", error)
        return Known()
