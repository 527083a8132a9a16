"""The DynamoDB repository against moto: large and expired bundles, create-table, S3 bundles served from it;
and its faults (issue 14): a hung or refusing DynamoDB is a documented status within DB_TIMEOUT.

The DynamoDB endpoint is the moto server behind tests/support/dynamo_faults.py, an HTTP proxy that
hangs chosen operations, loses their answers, or answers them with DynamoDB's own JSON errors
(AccessDeniedException, UnrecognizedClientException, UnknownOperationException, ...) and counts
every request. The elapsed-time bounds here are deadline checks (the promise is "an answer within
DB_TIMEOUT"), generous for a loaded machine, not performance measurements.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from flask.testing import FlaskClient

from zipstream import create_app
from zipstream.config import Config
from zipstream.errors import ServiceUnavailable
from zipstream.models import Bundle, FileRef
from zipstream.repositories import get_repository
from zipstream.repositories.dynamodb import ATTEMPTS, DynamoRepository, server_message

from .support.dynamo import dynamodb_repository
from .support.dynamo_faults import DynamoFaults
from .support.live import LiveServer, live_server
from .support.moto import REGION, MotoServer
from .support.readers import CheckZip
from .support.s3 import Store, expected_bundle
from .support.upstream import UpstreamServer

DB_TIMEOUT = 2.0
# Deadline checks, not timings: an operation must answer by DB_TIMEOUT; a loaded 2-core machine gets
# as much again. Before the fix a hung DynamoDB took 5 x DB_TIMEOUT (botocore's 5 attempts of 2 s).
WITHIN = 2 * DB_TIMEOUT
ROOT = Path(__file__).resolve().parents[1]

Serve = Callable[..., LiveServer]


@pytest.fixture
def faults(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[DynamoFaults]:
    """The fault proxy, and every DynamoDB client made from now on pointed at it."""
    with DynamoFaults(moto_server.port) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", proxy.endpoint)
        yield proxy


@pytest.fixture
def table(moto_server: MotoServer) -> Iterator[str]:
    """A table name of its own; the table (if made) is dropped afterwards, straight on moto."""
    name = "t_" + uuid.uuid4().hex[:12]
    yield name
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=moto_server.endpoint)
    try:
        client.delete_table(TableName=name)
    except client.exceptions.ResourceNotFoundException:
        pass
    finally:
        client.close()


def _config(table: str, **env: str) -> Config:
    return Config.from_env({"DB_INTERFACE": "dynamodb", "TABLE_NAME": table, "AWS_REGION": REGION,
                            "DB_TIMEOUT": str(DB_TIMEOUT), "FS_INTERFACES": "https", **env})


@pytest.fixture
def repository(faults: DynamoFaults, table: str) -> Iterator[DynamoRepository]:
    """A migrated DynamoRepository (DB_TIMEOUT=2) talking to moto through the fault proxy."""
    repo = DynamoRepository(_config(table))
    repo.migrate()
    yield repo
    faults.clear()
    repo.close()


def _bundle(files: int = 2) -> Bundle:
    return Bundle.new("b.zip", tuple(FileRef(f"https://example.com/{n}.bin") for n in range(files)), 60)


# -- 1. a hung DynamoDB answers 503 within DB_TIMEOUT, retrying inside it --

OPERATIONS: dict[str, Callable[[DynamoRepository, Bundle], Any]] = {
    "ping": lambda repo, _b: repo.ping(),
    "schema_state": lambda repo, _b: repo.schema_state(),
    "get": lambda repo, b: repo.get(b.id),
    "create": lambda repo, _b: repo.create(_bundle()),
    "append": lambda repo, b: repo.append(b.id, [FileRef("https://example.com/more.bin")], 100),
    "delete": lambda repo, b: repo.delete(b.id),
    "known": lambda repo, _b: repo.known(["identity-1", "identity-2"], ["https://example.com/a"], '"zs1-v"'),
    "put_crcs": lambda repo, _b: repo.put_crcs({"identity-1": 1234}),
    "mark_served": lambda repo, _b: repo.mark_served('"zs1-v"', 1000),
    "mark_unstable": lambda repo, _b: repo.mark_unstable("https://example.com/a"),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_a_hung_dynamodb_is_a_503_within_db_timeout(repository: DynamoRepository, faults: DynamoFaults,
                                                    operation: str) -> None:
    bundle = _bundle()
    repository.create(bundle)
    faults.hang()  # every request from now on is read and never answered
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as raised:
        OPERATIONS[operation](repository, bundle)
    took = time.monotonic() - started
    assert raised.value.status == 503
    assert "DB_TIMEOUT" in raised.value.message, raised.value.message
    assert took < WITHIN, f"{operation}: {took:.1f} s"  # before: ~10 s (5 attempts of DB_TIMEOUT)
    # Each attempt got half of DB_TIMEOUT, so a hung connection was retried once, inside the deadline.
    assert 2 <= faults.count(since=started) <= ATTEMPTS


def test_a_request_that_hangs_once_is_retried_within_the_deadline(faults: DynamoFaults, table: str) -> None:
    repository = DynamoRepository(_config(table, DB_TIMEOUT="3"))
    repository.migrate()
    bundle = _bundle()
    repository.create(bundle)
    faults.hang("GetItem", times=1)
    started = time.monotonic()
    found = repository.get(bundle.id)
    took = time.monotonic() - started
    repository.close()
    assert found == bundle
    assert faults.count("GetItem", since=started) == 2
    # Before: the first attempt waited the whole DB_TIMEOUT (its read timeout) before the retry.
    assert took < 3, f"{took:.1f} s"


@pytest.mark.parametrize(("code", "status"), [("ThrottlingException", 400), ("InternalServerError", 500),
                                              ("ProvisionedThroughputExceededException", 400)])
def test_transient_errors_are_retried_inside_the_deadline(repository: DynamoRepository, faults: DynamoFaults,
                                                          code: str, status: int) -> None:
    bundle = _bundle()
    repository.create(bundle)
    started = time.monotonic()
    faults.fail(code, "try again", "GetItem", status=status, times=2)
    assert repository.get(bundle.id) == bundle
    assert faults.count("GetItem", since=started) == 3  # two refused, the third answered
    faults.clear()
    faults.fail(code, "Rate of requests exceeds the allowed throughput.", "GetItem", status=status)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=code) as raised:
        repository.get(bundle.id)
    assert "Rate of requests exceeds" in raised.value.message  # the server's own words
    assert time.monotonic() - started < WITHIN
    assert 2 <= faults.count("GetItem", since=started) <= ATTEMPTS


def test_a_create_whose_answer_was_lost_is_retried_without_failing(repository: DynamoRepository,
                                                                    faults: DynamoFaults) -> None:
    # The PutItem reaches the table but its answer never comes back: the retry finds the item it wrote.
    # Before: the retry's `attribute_not_exists(pk)` failed and the bundle's creation was a 500.
    faults.lose("PutItem", times=1)
    bundle = _bundle()
    repository.create(bundle)
    assert faults.count("PutItem") == 2
    assert repository.get(bundle.id) == bundle


def test_a_hung_dynamodb_is_a_503_within_db_timeout_through_gunicorn(
        faults: DynamoFaults, table: str, tmp_path: Path) -> None:
    env = {"DB_INTERFACE": "dynamodb", "TABLE_NAME": table, "AWS_REGION": REGION, "DB_TIMEOUT": str(DB_TIMEOUT),
           "AWS_ENDPOINT_URL_DYNAMODB": faults.endpoint}
    migrated = DynamoRepository(_config(table))
    migrated.migrate()
    migrated.close()
    with live_server(env, tmp_path) as server:
        created = requests.post(server.url("/"), json={"files": [{"src": "https://example.com/a.bin"}]}, timeout=10)
        assert created.status_code == 201, created.text
        bundle_id = created.json()["id"]
        faults.hang()
        for method, path in (("POST", "/"), ("GET", f"/{bundle_id}"), ("GET", "/health-check")):
            started = time.monotonic()
            body = {"files": [{"src": "https://example.com/b.bin"}]} if method == "POST" else None
            answer = requests.request(method, server.url(path), json=body, timeout=30)
            took = time.monotonic() - started
            assert answer.status_code == 503, (path, answer.text)
            assert "DB_TIMEOUT" in answer.json()["error"]["message"]
            assert took < WITHIN, f"{method} {path}: {took:.1f} s"  # before: 10 s and more
        faults.clear()
        assert "Traceback" not in server.log_text()


# -- 2. permissions and credentials refused: 503 naming the permission, on every route --

AUTH_ERRORS = {
    "AccessDeniedException": "User: arn:aws:iam::123456789012:user/zipstream is not authorized to perform: "
                             "dynamodb:{op} on resource: arn:aws:dynamodb:us-east-1:123456789012:table/t",
    "UnrecognizedClientException": "The security token included in the request is invalid.",
    "InvalidSignatureException": "The request signature we calculated does not match the signature you provided.",
    "MissingAuthenticationTokenException": "Request is missing Authentication Token",
    "ExpiredTokenException": "The security token included in the request is expired",
}


@pytest.fixture
def app_client(faults: DynamoFaults, table: str, make_config: Callable[..., Config]) -> Iterator[FlaskClient]:
    """The app on DynamoDB (through the fault proxy), migrated and ready."""
    config = make_config(DB_INTERFACE="dynamodb", TABLE_NAME=table, AWS_REGION=REGION, DB_TIMEOUT=str(DB_TIMEOUT))
    DynamoRepository(config).migrate()
    app = create_app(config)
    yield app.test_client()
    faults.clear()


def _routes(bundle_id: str, secret: str, src: str) -> list[tuple[str, str, dict[str, Any] | None, str]]:
    """(method, path, JSON body, the operation DynamoDB is asked first) for every route that uses the table."""
    files = {"files": [{"src": src}]}
    return [
        ("POST", "/", files, "BatchWriteItem"),
        ("GET", f"/{bundle_id}", None, "GetItem"),
        ("HEAD", f"/{bundle_id}", None, "GetItem"),
        ("GET", f"/{bundle_id}/{secret}", None, "GetItem"),
        ("PUT", f"/{bundle_id}/{secret}", files, "GetItem"),
        ("DELETE", f"/{bundle_id}/{secret}", None, "GetItem"),
        ("GET", "/health-check", None, "DescribeTable"),
    ]


@pytest.mark.parametrize("code", sorted(AUTH_ERRORS))
def test_refused_permissions_are_a_503_naming_the_permission_on_every_route(
        app_client: FlaskClient, faults: DynamoFaults, upstream: UpstreamServer, code: str) -> None:
    upstream.add("/a.bin", b"a" * 100)
    src = upstream.url("/a.bin")
    created = app_client.post("/", json={"files": [{"src": src}]})
    assert created.status_code == 201, created.get_data(as_text=True)
    bundle_id, secret = created.get_json()["id"], created.get_json()["secret"]
    for method, path, body, operation in _routes(bundle_id, secret, src):
        faults.clear()
        faults.fail(code, AUTH_ERRORS[code].format(op=operation))
        answer = app_client.open(path, method=method, json=body)
        assert answer.status_code == 503, (method, path, answer.get_data(as_text=True))  # before: 500
        assert answer.headers["Retry-After"]
        if method == "HEAD":
            continue
        message = answer.get_json()["error"]["message"]
        assert f"DynamoDB refused dynamodb:{operation}" in message, message
        assert f"{code}: {AUTH_ERRORS[code].format(op=operation)}" in message, message
    # A one-off zip needs no table: its CRC cache read is refused, and only costs reading the files.
    faults.clear()
    faults.fail(code, AUTH_ERRORS[code].format(op="BatchGetItem"))
    one_off = app_client.post("/bundle", json={"files": [{"src": src}]})
    assert one_off.status_code == 200
    assert one_off.headers["Content-Type"] == "application/zip"


def test_only_the_missing_permission_is_named(app_client: FlaskClient, faults: DynamoFaults) -> None:
    faults.fail("AccessDeniedException", "not authorized to perform: dynamodb:PutItem", "PutItem")
    answer = app_client.post("/", json={"files": [{"src": "https://example.com/a.bin"}]})
    assert answer.status_code == 503
    message = answer.get_json()["error"]["message"]
    assert message.startswith("DynamoDB refused dynamodb:PutItem on table "), message
    assert "grant dynamodb:PutItem" in message


def test_a_signature_error_never_echoes_credentials(app_client: FlaskClient, faults: DynamoFaults) -> None:
    key_id, token = "AKIAIOSFODNN7EXAMPLE", "FwoGZXIvYXdzEJr//////////wEaDM1Sy5nF2x6example0token0value0Q=="
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    faults.fail("InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. Check your AWS "
                f"Secret Access Key and signing method. Credential={key_id}/20260101/us-east-1/dynamodb {secret}\n\n"
                "The Canonical String for this request should have been\n'POST\n/\n\n"
                f"content-type:application/x-amz-json-1.0\nx-amz-security-token:{token}\n'")
    answer = app_client.get("/health-check")
    assert answer.status_code == 503
    text = answer.get_data(as_text=True)
    assert "InvalidSignatureException: The request signature we calculated" in text
    for leaked in (key_id, token, secret, "x-amz-security-token", "Canonical String"):
        assert leaked not in text


@pytest.mark.parametrize(("text", "kept", "gone"), [
    ("User: arn:aws:iam::123456789012:user/z is not authorized", "arn:aws:iam::123456789012:user/z", ""),
    ("bad key ASIAXYZXYZXYZXYZXYZ0 used", "bad key [key id] used", "ASIAXYZXYZXYZXYZXYZ0"),
    ("token=" + "Ab1/" * 20, "token=[redacted]", "Ab1/Ab1/"),
    ("line one\n\n  line two", "line one line two", "\n"),
    ("word " * 200, ("word " * 60)[:299] + "…", "word " * 61),
])
def test_server_messages_are_one_short_line_without_secrets(text: str, kept: str, gone: str) -> None:
    cleaned = server_message(text)
    assert kept in cleaned
    assert not gone or gone not in cleaned
    assert len(cleaned) <= 300


# -- 3. commands: one line with the server's own message, exit 1 --


def _command(faults: DynamoFaults, table: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DB_INTERFACE": "dynamodb", "TABLE_NAME": table, "AWS_REGION": REGION,
           "AWS_ENDPOINT_URL_DYNAMODB": faults.endpoint, "DB_TIMEOUT": str(DB_TIMEOUT)}
    return subprocess.run([sys.executable, "-m", "zipstream.cli", *argv], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize(("argv", "operation", "code", "message"), [
    (("create-table",), "UpdateTimeToLive", "UnknownOperationException", "TimeToLive is not supported by this store"),
    (("create-table",), "DescribeTimeToLive", "UnknownOperationException", "TimeToLive is not supported here"),
    (("migrate",), "CreateTable", "AccessDeniedException", "not authorized to perform: dynamodb:CreateTable"),
    (("purge-expired",), "Scan", "AccessDeniedException", "not authorized to perform: dynamodb:Scan"),
])
def test_commands_fail_in_one_line_with_the_servers_message(faults: DynamoFaults, table: str, argv: tuple[str, ...],
                                                           operation: str, code: str, message: str) -> None:
    if argv == ("purge-expired",):
        assert _command(faults, table, "migrate").returncode == 0
    faults.fail(code, message, operation)
    done = _command(faults, table, *argv)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"zipstream: {argv[0]} failed: "), lines[0]
    assert operation in lines[0] and code in lines[0] and message in lines[0]  # before: the message was dropped


# -- the repository behind the service (moto, no faults) -------------------------------------------


@pytest.fixture
def dynamo_table(moto_server: MotoServer) -> Iterator[str]:
    repository = dynamodb_repository()
    repository.migrate()
    yield repository.table
    repository.client.delete_table(TableName=repository.table)
    repository.close()


def test_ten_thousand_files_on_dynamodb(make_config: Callable[..., Config], dynamo_table: str) -> None:
    config = make_config(DB_INTERFACE="dynamodb", TABLE_NAME=dynamo_table, FS_INTERFACES="s3",
                         AWS_REGION=REGION, MAX_FILES="10000")
    client = create_app(config).test_client()
    long = "x" * 300
    files = [{"src": f"s3://bucket/{long}/{i:05d} é.bin", "dst": f"d/{i}"} for i in range(9999)]
    created = client.post("/", json={"files": files})
    assert created.status_code == 201, created.get_data(as_text=True)[:500]
    bundle = created.json
    assert bundle is not None
    url = f"/{bundle['id']}/{bundle['secret']}"
    appended = client.put(url, json={"files": [{"src": "s3://bucket/last.bin"}]})
    assert appended.status_code == 200
    assert appended.json is not None and len(appended.json["files"]) == 10000
    refused = client.put(url, json={"files": [{"src": "s3://bucket/one-too-many.bin"}]})
    assert refused.status_code == 413
    stored = client.get(url).json
    assert stored is not None
    assert stored["files"] == [*files, {"src": "s3://bucket/last.bin"}]


def test_expired_bundle_on_dynamodb_is_410(make_config: Callable[..., Config], dynamo_table: str) -> None:
    config = make_config(DB_INTERFACE="dynamodb", TABLE_NAME=dynamo_table, FS_INTERFACES="s3", AWS_REGION=REGION)
    app = create_app(config)
    old = Bundle.new("old.zip", (FileRef("s3://bucket/a"),), 1, now=time.time() - 3600)
    with app.app_context():
        get_repository().create(old)
    client = app.test_client()
    for path in (f"/{old.id}", f"/{old.id}/{old.secret}"):
        response = client.get(path)
        assert response.status_code == 410
        assert response.json is not None and response.json["error"]["code"] == "expired"




def test_s3_bundle_on_dynamodb_through_the_service(serve: Serve, store: Store, dynamo_table: str,
                                                   tmp_path: Path, zip_readers: CheckZip) -> None:
    files, expected = expected_bundle(store)
    server = serve(FS_INTERFACES="s3,https", DB_INTERFACE="dynamodb", TABLE_NAME=dynamo_table,
                   S3_BUCKETS=store.bucket, AWS_REGION=REGION)
    created = requests.post(server.url("/"), json={"files": files, "filename": "s3.zip"}, timeout=30)
    assert created.status_code == 201, created.text
    bundle = created.json()
    full = requests.get(server.url(f"/{bundle['id']}"), timeout=60)
    assert full.status_code == 200, full.text[:500]
    assert int(full.headers["Content-Length"]) == len(full.content)
    archive = tmp_path / "s3.zip"
    archive.write_bytes(full.content)
    zip_readers(archive, expected)
    start = len(full.content) // 3
    part = requests.get(server.url(f"/{bundle['id']}"), headers={"Range": f"bytes={start}-"}, timeout=60)
    assert part.status_code == 206
    assert part.content == full.content[start:]




def test_create_table_command_is_idempotent_and_enables_ttl(moto_server: MotoServer) -> None:
    table = "t_" + uuid.uuid4().hex[:12]
    env = {**os.environ, "DB_INTERFACE": "dynamodb", "TABLE_NAME": table, "AWS_REGION": REGION}
    for command in ("create-table", "migrate"):
        done = subprocess.run([sys.executable, "-m", "zipstream.cli", command], env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
    client = boto3.client("dynamodb", region_name=REGION)
    try:
        ttl = client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        assert ttl.get("TimeToLiveStatus") == "ENABLED" and ttl.get("AttributeName") == "expirationDate"
        table_info = client.describe_table(TableName=table)["Table"]
        assert table_info.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST"
    finally:
        client.delete_table(TableName=table)
