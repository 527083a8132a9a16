"""Pre-flight: every src of a bundle stat-ed, concurrently, within one deadline, before a byte is sent.

What it learns (sizes, validators, names; `SourceInfo`) is all the zip plan needs (plan.py). A source
may also hand over a file's first bytes while it is at it (`SourceInfo.head`, sources/held.py): those
are held until their member streams out, and given back (`discard_heads`) by whoever ends the download
first: pre-flight itself when it fails, the plan when it refuses the zip, the stream when it ends.
No Flask: the web layer gives the deadline and cancels it when the client hangs up (disconnect.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext

from .deadline import Deadline
from .errors import ClientGone, SourceError, SourcesFailed, SourceTimeout
from .models import FileRef
from .sources import HoldScope, SourceInfo, Sources

# How often pre-flight looks up from waiting to see whether the client has gone (seconds).
CANCEL_POLL = 0.25


def preflight(files: Sequence[FileRef], sources: Sources, concurrency: int,
              deadline: Deadline | None = None, hold: bool = False) -> list[list[SourceInfo]]:
    """Stat every src concurrently: for each file, in order, what its src names (several files for a
    prefix or directory). Raises SourcesFailed listing every src that cannot be read.

    With `hold`, sources may keep the first bytes of files (`SourceInfo.head`) within this
    download's share of their budget (sources/held.py).
    With a `deadline`, the answer comes by then whatever the sources do: a src not stat-ed by then
    fails with SourceTimeout (so SourcesFailed is a 504 unless another src failed worse), and the
    requests still in flight are aborted. If the deadline is cancelled (the client hung up), queued
    srcs are never requested, those in flight are aborted, and ClientGone is raised.
    """
    deadline = deadline if deadline is not None else Deadline(None)
    scope = HoldScope() if hold else None

    def stat(ref: FileRef) -> list[SourceInfo] | SourceError:
        try:
            deadline.check(ref.src)  # queued behind slower srcs: maybe there is no time left
            with scope.applying() if scope is not None else nullcontext():
                return sources.stat(ref.src, deadline)
        except SourceError as error:
            return error

    # Always through the pool (a greenlet each under gevent), even for one src: waiting on futures
    # is what lets the answer come at the deadline while a socket or a DNS lookup still hangs.
    pool = ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(files))), thread_name_prefix="preflight")
    futures = [pool.submit(stat, ref) for ref in files]
    pending: set[Future[list[SourceInfo] | SourceError]] = set(futures)
    try:
        while pending and not deadline.cancelled and not deadline.expired:
            _done, pending = wait(pending, timeout=min(deadline.remaining(), CANCEL_POLL))
    finally:
        # Never wait for the workers here: one may be stuck until its socket gives up.
        pool.shutdown(wait=False, cancel_futures=True)
    if pending or deadline.cancelled:
        deadline.expire()  # wake the requests still in flight; they end without starting others
    results: list[list[SourceInfo] | SourceError] = []
    for ref, future in zip(files, futures, strict=True):
        if future in pending:
            started = future.running() or future.done()
            reason = (f"no answer within {deadline.describe()}" if started
                      else f"not checked: {deadline.describe()} ran out first")
            results.append(SourceTimeout(ref.src, reason))
        else:
            results.append(future.result())  # an unexpected error is raised here, as before
    if deadline.cancelled:
        discard_heads(info for result in results if not isinstance(result, SourceError) for info in result)
        raise ClientGone("the client closed the connection during pre-flight")
    failures = [result for result in results if isinstance(result, SourceError)]
    if failures:
        discard_heads(info for result in results if not isinstance(result, SourceError) for info in result)
        raise SourcesFailed(failures)
    return [result for result in results if not isinstance(result, SourceError)]


def discard_heads(infos: Iterable[SourceInfo]) -> None:
    """Give the bytes pre-flight held back to the budget (a download that ended or never started)."""
    for info in infos:
        if info.head is not None:
            info.head.discard()


@contextmanager
def heads_given_back_on_error(stats: Sequence[Sequence[SourceInfo]]) -> Iterator[None]:
    """A zip refused after pre-flight (too many files, too big) never streams: give its held bytes back."""
    try:
        yield
    except BaseException:
        discard_heads(info for infos in stats for info in infos)
        raise
