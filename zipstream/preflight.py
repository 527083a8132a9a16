"""Pre-flight: every src of a bundle stat-ed, concurrently, within one deadline, before a byte is sent.

What it learns (sizes, validators, names; `SourceInfo`) is all the zip plan needs (plan.py). A source
may also hand over a file's first bytes while it is at it (`SourceInfo.head`, sources/held.py): those
are held until their member streams out, and given back (`discard_heads`) by whoever ends the download
first: pre-flight itself when it fails, the plan when it refuses the zip, the stream when it ends.
No Flask: the web layer gives the deadline and cancels it when the client hangs up (disconnect.py).

How: `concurrency` workers (greenlets under gevent, threads without it) take the srcs in order from
one shared queue, each stat-ing one at a time; the caller waits for the last of them, for the deadline
or for a cancellation, whichever comes first, and never for a worker stuck on a socket. A fixed set of
workers rather than a task and a future per src: under gevent a `concurrent.futures` future costs a
Condition (an RLock and a gevent lock) and a work item per src, ~10% of a small file's pre-flight CPU
(bench B7's profile).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext

from .cooperative import spawn
from .deadline import Deadline
from .errors import ClientGone, SourceError, SourcesFailed, SourceTimeout
from .models import FileRef
from .sources import HoldScope, SourceInfo, Sources

Outcome = list[SourceInfo] | SourceError  # what stat-ing one src came to


class _Raised:
    """An error `Sources.stat` was not expected to raise: raised again by the caller of pre-flight."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def preflight(files: Sequence[FileRef], sources: Sources, concurrency: int,
              deadline: Deadline | None = None, hold: bool = False) -> list[list[SourceInfo]]:
    """Stat every src, `concurrency` at a time: for each file, in order, what its src names (several
    files for a prefix or directory). Raises SourcesFailed listing every src that cannot be read.

    With `hold`, sources may keep the first bytes of files (`SourceInfo.head`) within this
    download's share of their budget (sources/held.py).
    With a `deadline`, the answer comes by then whatever the sources do: a src not stat-ed by then
    fails with SourceTimeout (so SourcesFailed is a 504 unless another src failed worse), and the
    requests still in flight are aborted. If the deadline is cancelled (the client hung up), queued
    srcs are never requested, those in flight are aborted, and ClientGone is raised at once.
    No request starts after the answer; what a request still in flight then learns is given back.
    """
    if not files:
        return []
    deadline = deadline if deadline is not None else Deadline(None)
    run = _Preflight(files, sources, deadline, HoldScope() if hold else None)
    # A cancellation (the client hung up) wakes the wait at once, not at the next look.
    with deadline.aborting(run.finished.set):
        run.start(max(1, min(concurrency, len(files))))
        while not run.finished.is_set() and not deadline.cancelled and not deadline.expired:
            remaining = deadline.remaining()
            run.finished.wait(remaining if remaining != float("inf") else None)
    outcomes = run.answer()
    if outcomes is None:  # some srcs have no answer: wake the requests in flight, they start no others
        deadline.expire()
        outcomes = run.timed_out()
    if deadline.cancelled:
        discard_heads(_infos(outcomes))
        raise ClientGone("the client closed the connection during pre-flight")
    raised = [outcome.error for outcome in outcomes if isinstance(outcome, _Raised)]
    failures = [outcome for outcome in outcomes if isinstance(outcome, SourceError)]
    if raised or failures:
        discard_heads(_infos(outcomes))
        if raised:
            raise raised[0]
        raise SourcesFailed(failures)
    return [outcome for outcome in outcomes if isinstance(outcome, list)]


class _Preflight:
    """One pre-flight's workers and what they learn, src by src (`preflight` runs it)."""

    def __init__(self, files: Sequence[FileRef], sources: Sources, deadline: Deadline,
                 scope: HoldScope | None) -> None:
        self._files = files
        self._sources = sources
        self._deadline = deadline
        self._scope = scope
        self._next = iter(range(len(files)))  # the queue: taking from a range iterator is atomic
        self._outcomes: list[Outcome | _Raised | None] = [None] * len(files)
        self._started = bytearray(len(files))  # 1 once a worker took the src
        self._answered = False  # no worker takes a src after this
        self._taken: list[Outcome | _Raised | None] | None = None  # the outcomes the answer used
        self._lock = threading.Lock()
        self._running = 0
        self.finished = threading.Event()  # set when the last worker ends (or to wake the wait early)

    def start(self, workers: int) -> None:
        self._running = workers
        for _ in range(workers):
            spawn(self._work, "preflight")

    def _work(self) -> None:
        try:
            # The scope is the running greenlet's (thread's): set once for every src this worker takes.
            with self._scope.applying() if self._scope is not None else nullcontext():
                for index in self._next:
                    if self._closed():
                        break
                    self._started[index] = 1
                    outcome = self._stat(self._files[index].src)
                    self._outcomes[index] = outcome
                    if self._closed():  # answered while this request was in flight
                        self._late(index, outcome)
                        break
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self.finished.set()

    def _closed(self) -> bool:
        """True once the answer is out: no src is taken after that."""
        return self._answered

    def _stat(self, src: str) -> Outcome | _Raised:
        try:
            self._deadline.check(src)  # queued behind slower srcs: maybe there is no time left
            return self._sources.stat(src, self._deadline)
        except SourceError as error:
            return error
        except BaseException as error:  # noqa: BLE001 - raised again in the caller of preflight()
            return _Raised(error)

    def _late(self, index: int, outcome: Outcome | _Raised) -> None:
        """An outcome that came after the answer: its held bytes go back unless the answer used it."""
        with self._lock:
            used = self._taken is not None and self._taken[index] is outcome
        if not used and isinstance(outcome, list):
            discard_heads(outcome)

    def answer(self) -> list[Outcome | _Raised] | None:
        """Every src's outcome if each has one (then no worker takes a src any more); else None."""
        with self._lock:
            self._answered = True
            self._taken = list(self._outcomes)
        if any(outcome is None for outcome in self._taken):
            return None
        return self._taken  # type: ignore[return-value]  # checked just above: no None

    def timed_out(self) -> list[Outcome | _Raised]:
        """The answer when some srcs have none: SourceTimeout for each of those."""
        assert self._taken is not None
        outcomes: list[Outcome | _Raised] = []
        for ref, started, outcome in zip(self._files, self._started, self._taken, strict=True):
            if outcome is None:
                reason = (f"no answer within {self._deadline.describe()}" if started
                          else f"not checked: {self._deadline.describe()} ran out first")
                outcome = SourceTimeout(ref.src, reason)
            outcomes.append(outcome)
        return outcomes


def _infos(outcomes: Iterable[Outcome | _Raised]) -> Iterator[SourceInfo]:
    for outcome in outcomes:
        if isinstance(outcome, list):
            yield from outcome


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
