"""DynamoDB requests on one table within DB_TIMEOUT: deadlines, retries with back-off, batches.

Each call of the contract (`bounded`) answers within DB_TIMEOUT: its requests and their retries share
that deadline, and each attempt may take at most ATTEMPT_SHARE of it. Commands (`migrate`,
`purge_expired`) have no overall limit; their requests are retried and bounded the same way each.
"""

from __future__ import annotations

import functools
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from ...cooperative import gevent_active
from ...deadline import Deadline
from ...errors import ServiceUnavailable
from ._errors import DENIED, RETRYABLE, UNAUTHENTICATED, error_code, http_status, translated

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

T = TypeVar("T")
P = ParamSpec("P")

# Requests per DynamoDB call at most (the first and its retries), all within the operation's DB_TIMEOUT.
ATTEMPTS = 4
# One attempt may take this share of DB_TIMEOUT, so a connection that hangs leaves time for a retry.
ATTEMPT_SHARE = 0.5
# A retry is started only with at least this long left before the deadline (seconds).
MIN_ATTEMPT = 0.1
# Rounds of re-sending what a batch request left unprocessed (throughput exceeded).
BATCH_ATTEMPTS = 8
# Items per BatchWriteItem and keys per BatchGetItem at most (DynamoDB's limits).
BATCH_WRITE_ITEMS = 25
BATCH_GET_KEYS = 100
_NO_DEADLINE = Deadline(None, "DB_TIMEOUT")


class AttemptStopped(Exception):
    """One DynamoDB request was stopped at its deadline while blocked (under gevent; see `_stopped_at`)."""


def _pause(attempt: int) -> float:
    """Seconds to wait before retry `attempt` (1, 2, ...): exponential, jittered."""
    return min(2.0, 0.05 * 2.0**attempt) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not secrecy


def _operation_name(method: Callable[..., Any]) -> str:
    """DynamoDB's name of a client method: get_item -> GetItem (the IAM action is dynamodb:GetItem)."""
    return "".join(part.title() for part in getattr(method, "__name__", "request").split("_"))


def _transient(error: Exception) -> bool:
    """Whether the same request may well succeed if sent again."""
    if isinstance(error, ClientError):
        code = error_code(error)
        return code in RETRYABLE or (http_status(error) >= 500 and code not in DENIED | UNAUTHENTICATED)
    return isinstance(error, (AttemptStopped, BotoConnectionError, HTTPClientError))


@contextmanager
def _stopped_at(deadline: Deadline) -> Iterator[None]:
    """Under gevent, raise AttemptStopped in the block once `deadline` passes, whatever it is blocked on.

    Socket timeouts bound each connect and each read, not the request: this bounds a connect started
    late or an answer that trickles. Without gevent the socket timeouts (capped by the deadline) are all.
    """
    if deadline.seconds is None or not gevent_active():
        yield
        return
    import gevent

    timer = gevent.Timeout(max(0.001, deadline.remaining()))
    timer.start()
    try:
        yield
    except gevent.Timeout as fired:
        if fired is not timer:
            raise
        raise AttemptStopped(f"no answer within {deadline.seconds:.3g} s") from None
    finally:
        timer.close()


class TableCalls:
    """Requests to one DynamoDB table through `client`, each operation within `db_timeout` seconds."""

    def __init__(self, client: DynamoDBClient, table: str, db_timeout: float) -> None:
        self.client = client
        self.table = table
        self.db_timeout = db_timeout
        self.attempt_seconds = db_timeout * ATTEMPT_SHARE
        self._local = threading.local()  # the running operation's deadline (greenlet-local under gevent)

    @contextmanager
    def operation(self) -> Iterator[None]:
        """One contract call: every request in the block, and every retry, ends within DB_TIMEOUT
        (a call made by another, such as `get` by `append`, shares the caller's deadline)."""
        if getattr(self._local, "deadline", None) is not None:
            yield
            return
        self._local.deadline = Deadline(self.db_timeout, "DB_TIMEOUT")
        try:
            yield
        finally:
            self._local.deadline = None

    def _deadline(self) -> Deadline:
        deadline: Deadline | None = getattr(self._local, "deadline", None)
        return deadline or _NO_DEADLINE

    def errors(self, action: str) -> AbstractContextManager[None]:
        """Translate botocore errors of `action` on this table into the service's (see _errors.translate)."""
        return translated(action, self.table)

    def call(self, method: Callable[..., T], **params: Any) -> T:
        """`method(**params)`, a client call, sent again while its error is transient (throttling, 5xx,
        a timeout, a lost connection): at most ATTEMPTS times, every attempt and back-off inside the
        operation's deadline, each attempt within `attempt_seconds`.

        Raises the last botocore error (see `errors`), or ServiceUnavailable naming DB_TIMEOUT when
        the time ran out without an answer.
        """
        deadline = self._deadline()
        attempt = 0
        while True:
            if deadline.expired:  # spent by the operation's earlier requests: send nothing more
                raise ServiceUnavailable(f"DynamoDB did not answer within {deadline.describe()} "
                                         f"({_operation_name(method)} not sent)")
            attempt += 1
            limit = Deadline(deadline.cap(self.attempt_seconds), "DB_TIMEOUT")
            try:
                with limit.applying(), _stopped_at(limit):  # the client's before-send hook reads `limit`
                    return method(**params)
            except (ClientError, BotoCoreError, AttemptStopped) as error:
                if not _transient(error):
                    raise
                pause = _pause(attempt)
                if attempt < ATTEMPTS and pause + MIN_ATTEMPT < deadline.remaining() and deadline.sleep(pause):
                    continue
                if isinstance(error, ClientError):
                    raise  # it answered: "unavailable", with its own words
                within = f"{attempt} attempt(s) within {deadline.describe()}"
                if deadline.seconds is None:
                    within = f"{attempt} attempt(s) of {self.attempt_seconds:g} s each"
                raise ServiceUnavailable(
                    f"DynamoDB did not answer {_operation_name(method)} ({within}; the last: "
                    f"{type(error).__name__})"
                ) from None

    def _sleep_or_give_up(self, attempt: int, what: str) -> None:
        """Wait before re-sending what DynamoDB left unprocessed; ServiceUnavailable if no time is left."""
        deadline = self._deadline()
        pause = _pause(attempt)
        if attempt + 1 >= BATCH_ATTEMPTS or pause + MIN_ATTEMPT >= deadline.remaining() or not deadline.sleep(pause):
            raise ServiceUnavailable(f"DynamoDB kept refusing {what} (throughput exceeded)")

    def batch_write(self, requests: Sequence[dict[str, Any]]) -> None:
        """BatchWriteItem in groups of BATCH_WRITE_ITEMS, re-sending what DynamoDB left unprocessed."""
        for start in range(0, len(requests), BATCH_WRITE_ITEMS):
            pending: list[Any] = list(requests[start : start + BATCH_WRITE_ITEMS])
            for attempt in range(BATCH_ATTEMPTS):
                with self.errors("batch-write"):
                    answer = self.call(self.client.batch_write_item, RequestItems={self.table: pending})
                pending = list(answer.get("UnprocessedItems", {}).get(self.table, []))
                if not pending:
                    break
                self._sleep_or_give_up(attempt, "writes")

    def batch_get(self, keys: Sequence[dict[str, Any]], action: str) -> Iterator[dict[str, Any]]:
        """The items of `keys` that exist (BatchGetItem in groups of BATCH_GET_KEYS, re-asking for what
        DynamoDB left unprocessed); `keys` must not repeat one."""
        for start in range(0, len(keys), BATCH_GET_KEYS):
            pending: list[Any] = list(keys[start : start + BATCH_GET_KEYS])
            for attempt in range(BATCH_ATTEMPTS):
                with self.errors(action):
                    answer = self.call(self.client.batch_get_item, RequestItems={self.table: {"Keys": pending}})
                responses: dict[str, Any] = dict(answer.get("Responses", {}))
                for item in responses.get(self.table, []):
                    yield dict(item)
                unprocessed: dict[str, Any] = dict(answer.get("UnprocessedKeys", {}))
                pending = list(unprocessed.get(self.table, {}).get("Keys", []))
                if not pending:
                    break
                self._sleep_or_give_up(attempt, "reads")


class _UsesTable(Protocol):
    calls: TableCalls


S = TypeVar("S", bound=_UsesTable)


def bounded(method: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], T]:
    """A contract call: all its requests and retries end within DB_TIMEOUT (TableCalls.operation)."""

    @functools.wraps(method)
    def bounded(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self.calls.operation():
            return method(self, *args, **kwargs)

    return bounded
