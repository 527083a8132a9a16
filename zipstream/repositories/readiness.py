"""The readiness gate: a 503 naming the fix until the database answers and its schema is current."""

from __future__ import annotations

import time

from ..errors import SchemaNotReady, ServiceUnavailable, ZipStreamError
from .contract import MIGRATE_HINT, BundleRepository, SchemaError, SchemaState


class Readiness:
    """Whether the repository may be used: its database answers and its schema is current.

    Until it is, `require()` raises a 503 whose message names `zipstream migrate`. While not ready
    the schema is looked at again at most every `recheck_seconds`, so a web process started before
    the release step becomes ready by itself once `zipstream migrate` has run; once ready it costs
    nothing (a missing table met later by a request calls `invalidate()`).

    `auto_migrate`: the embedded SQLite file has no release step, so checking means migrating.
    """

    def __init__(self, repository: BundleRepository, table: str, auto_migrate: bool = False,
                 recheck_seconds: float = 2.0) -> None:
        self.repository = repository
        self.table = table
        self.auto_migrate = auto_migrate
        self.recheck_seconds = recheck_seconds
        self._problem: ServiceUnavailable | None = ServiceUnavailable("the database has not been checked yet")
        self._checked_at = float("-inf")

    @property
    def ready(self) -> bool:
        return self._problem is None

    def check(self) -> ServiceUnavailable | None:
        """Look at the database now; None when ready, else the error `require()` will raise."""
        self._checked_at = time.monotonic()
        try:
            if self.auto_migrate:
                self.repository.migrate()
            state = self.repository.schema_state()
        except ServiceUnavailable as error:
            problem: ServiceUnavailable | None = error
        except (ZipStreamError, SchemaError) as error:
            problem = self._unusable(error)
        else:
            problem = None if state is SchemaState.CURRENT else self._not_current(state)
        self._problem = problem
        return problem

    def confirm(self) -> None:
        """Look at the schema now, never migrating (cheap: /health-check calls it every time).

        Raises as `require()` would. A schema found missing or incomplete makes the process not ready
        (requests then answer 503 naming `zipstream migrate`, and the gate re-checks as usual); a
        database that does not answer raises its ServiceUnavailable and leaves the gate as it was.
        """
        self.require()
        try:
            state = self.repository.schema_state()
        except ServiceUnavailable:
            raise
        except (ZipStreamError, SchemaError) as error:
            problem = self._unusable(error)
        else:
            if state is SchemaState.CURRENT:
                return
            problem = self._not_current(state)
        self.invalidate(problem)
        raise problem

    def _unusable(self, error: ZipStreamError | SchemaError) -> SchemaNotReady:
        return SchemaNotReady(f"the database schema for table {self.table!r} cannot be used: "
                              f"{getattr(error, 'message', error)}", retry_after=30)

    def _not_current(self, state: SchemaState) -> SchemaNotReady:
        return SchemaNotReady(
            f"the database schema for table {self.table!r} is {state.value}: {MIGRATE_HINT}; "
            "this process becomes ready by itself afterwards", retry_after=10)

    def require(self) -> None:
        """Return when ready; raise the reason (ServiceUnavailable, SchemaNotReady) otherwise."""
        if self._problem is None:
            return
        if time.monotonic() - self._checked_at >= self.recheck_seconds:
            self.check()
        if self._problem is not None:
            raise self._problem

    def invalidate(self, problem: ServiceUnavailable) -> None:
        """A request found the schema gone (a dropped table, a restored backup): check again soon."""
        if self._problem is None:
            self._problem = problem
            self._checked_at = float("-inf")
