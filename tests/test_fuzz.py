"""schemathesis against /openapi.json (WSGI, in process): no 5xx, every response as documented.

`make fuzz` runs this with ZIPSTREAM_FUZZ_EXAMPLES=200 (well over 1,000 requests); the suite's own
run is smaller. The app only fetches from an allow-listed host that does not exist, so generated
srcs never reach the network: they are refused at validation (403), as any stranger's would be;
likewise S3 buckets outside S3_BUCKETS.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from zipstream import create_app
from zipstream.config import Config

from .support import ci
from .test_openapi import undocumented

# The allowlists name hosts and buckets no test serves: a generated src that matched one would send a
# DNS query or an S3 request off the machine, so the run stays in a loopback-only namespace.
pytestmark = pytest.mark.loopback_only

EXAMPLES = int(os.environ.get("ZIPSTREAM_FUZZ_EXAMPLES", "30"))
CALLS: list[int] = []
SEEN: set[tuple[str, str, int]] = set()  # (method, path template, status) of every generated request


def _app(root: Path) -> object:
    root.mkdir(parents=True, exist_ok=True)
    return create_app(Config.from_env({
        "SQLITE_PATH": str(root / "fuzz.sqlite3"),
        "FS_INTERFACES": "https,s3",
        "HTTP_HOSTS": "upstream.invalid",
        "S3_BUCKETS": "bucket.invalid",
        "HTTP_TIMEOUT": "1",
        "MAX_FILES": "50",
        "MAX_BODY_BYTES": "65536",
    }))


# Built at import: schemathesis parametrises the test from the schema at collection time.
schema = schemathesis.openapi.from_wsgi("/openapi.json", _app(Path(tempfile.mkdtemp(prefix="zipstream-fuzz-"))))


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    print(f"\nschemathesis: {len(CALLS)} generated requests")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case: schemathesis.Case) -> None:
    CALLS.append(1)
    if case.media_type in (None, "application/json"):
        # Schema-valid is not always acceptable: enabled schemes, bucket and host allowlists and
        # safe entry names are rules of the running config that JSON Schema cannot carry (422/403).
        response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
    else:
        # A form's `files` field holds JSON, which a form schema cannot describe either.
        response = case.call_and_validate(excluded_checks=[positive_data_acceptance, negative_data_rejection])
    SEEN.add((case.method.upper(), case.operation.path, response.status_code))


def test_every_status_the_fuzzing_run_saw_is_documented() -> None:
    """Runs after the fuzzing above (file order): each status it saw is listed for its operation."""
    if not SEEN:
        # Deselected locally (-k): nothing to compare. On CI the whole file runs, so no statuses means
        # the fuzzing itself did not run, which must not pass as a skip.
        ci.missing("the fuzzing run did not run in this session (deselected)")
    print(f"\nstatuses seen: {sorted(SEEN)}")
    assert {path for _method, path, _status in SEEN} >= {"/", "/bundle", "/{id}", "/{id}/{secret}"}
    assert undocumented(SEEN) == []
