"""One contract suite that every backend (BundleRepository, CrcCache) must pass, against the real databases."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from zipstream import create_app, repositories
from zipstream.config import DB_INTERFACES, Config
from zipstream.errors import LimitExceeded, SchemaNotReady, ServiceUnavailable
from zipstream.models import Bundle, FileRef
from zipstream.repositories import BACKENDS as REGISTRY
from zipstream.repositories import (
    Backend,
    BundleRepository,
    Known,
    Readiness,
    SchemaError,
    SchemaState,
    build_repository,
)
from zipstream.repositories.postgres import PostgresRepository
from zipstream.repositories.sql import TABLE_SUFFIXES, SqlRepository
from zipstream.repositories.sqlite import SqliteRepository

from .support.dynamo import dynamodb_backend
from .support.live import free_port
from .support.upstream import UpstreamServer

# Each backend registers a factory: request -> repository (fresh, migrated, isolated table).
BACKENDS: dict[str, Callable[[pytest.FixtureRequest], Backend]] = {}


def _sqlite(request: pytest.FixtureRequest) -> Backend:
    tmp = request.getfixturevalue("tmp_path")
    return SqliteRepository(str(tmp / "contract.sqlite3"), "bundles")


def _postgres(request: pytest.FixtureRequest) -> Backend:
    url = request.getfixturevalue("postgres_url")
    table = "t_" + uuid.uuid4().hex[:12]
    repository = PostgresRepository(url, table, pool_size=20)

    def drop() -> None:
        with repository.transaction() as cursor:
            for suffix in TABLE_SUFFIXES:
                cursor.execute(f"DROP TABLE IF EXISTS {table}{suffix} CASCADE")
        repository.close()

    request.addfinalizer(drop)
    return repository


BACKENDS["sqlite"] = _sqlite
BACKENDS["postgres"] = _postgres
BACKENDS["dynamodb"] = dynamodb_backend


@pytest.fixture(params=sorted(BACKENDS))
def repo(request: pytest.FixtureRequest) -> Iterator[Backend]:
    repository = BACKENDS[request.param](request)
    repository.migrate()
    yield repository
    repository.close()


def _bundle(files: int = 2, lifetime: int = 60, **kwargs: object) -> Bundle:
    refs = tuple(FileRef(src=f"https://example.com/f{i}.bin", dst=f"d{i}" if i % 2 else None) for i in range(files))
    return Bundle.new("b.zip", refs, lifetime, **kwargs)  # type: ignore[arg-type]


def test_migrate_is_idempotent(repo: BundleRepository) -> None:
    repo.migrate()
    repo.migrate()
    repo.ping()


def test_create_then_get_returns_identical_bundle(repo: BundleRepository) -> None:
    bundle = _bundle(files=3, compression="deflate")
    repo.create(bundle)
    assert repo.get(bundle.id) == bundle


def test_get_unknown_is_none(repo: BundleRepository) -> None:
    assert repo.get(str(uuid.uuid4())) is None


def test_empty_bundle_round_trips(repo: BundleRepository) -> None:
    bundle = _bundle(files=0)
    repo.create(bundle)
    stored = repo.get(bundle.id)
    assert stored is not None
    assert stored.files == ()


def test_unicode_and_crc_survive(repo: BundleRepository) -> None:
    refs = (FileRef("s3://b/ключ файл+%20.txt", "dossier/été.txt", crc32=0xFFFFFFFF), FileRef("s3://b/x", None, 0))
    bundle = Bundle.new("naïve.zip", refs, 60)
    repo.create(bundle)
    assert repo.get(bundle.id) == bundle


def test_append_keeps_order_and_returns_updated(repo: BundleRepository) -> None:
    bundle = _bundle(files=2)
    repo.create(bundle)
    extra = (FileRef("https://example.com/new.bin", "new.bin"),)
    updated = repo.append(bundle.id, extra, max_files=100)
    assert updated is not None
    assert updated.files == bundle.files + extra
    assert repo.get(bundle.id) == updated


def test_append_can_rename(repo: BundleRepository) -> None:
    bundle = _bundle(files=1)
    repo.create(bundle)
    updated = repo.append(bundle.id, (FileRef("https://example.com/z"),), 100, filename="renamed.zip")
    assert updated is not None
    assert updated.filename == "renamed.zip"


def test_append_to_unknown_is_none(repo: BundleRepository) -> None:
    assert repo.append(str(uuid.uuid4()), (FileRef("https://example.com/a"),), 100) is None


def test_append_over_limit_stores_nothing(repo: BundleRepository) -> None:
    bundle = _bundle(files=3)
    repo.create(bundle)
    with pytest.raises(LimitExceeded):
        repo.append(bundle.id, tuple(FileRef(f"https://example.com/{i}") for i in range(3)), max_files=5)
    assert repo.get(bundle.id) == bundle


def test_fifty_concurrent_appends_lose_nothing(repo: BundleRepository) -> None:
    bundle = _bundle(files=0)
    repo.create(bundle)
    errors: list[BaseException] = []
    barrier = threading.Barrier(50)

    def append(n: int) -> None:
        try:
            barrier.wait()
            repo.append(bundle.id, (FileRef(f"https://example.com/{n}.bin"), FileRef(f"https://example.com/{n}.b")),
                        max_files=1000)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=append, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stored = repo.get(bundle.id)
    assert stored is not None
    srcs = [ref.src for ref in stored.files]
    assert len(srcs) == 100
    assert sorted(srcs) == sorted({f"https://example.com/{n}.bin" for n in range(50)}
                                  | {f"https://example.com/{n}.b" for n in range(50)})
    for n in range(50):  # each append's files stay together, in the order given
        assert srcs.index(f"https://example.com/{n}.b") == srcs.index(f"https://example.com/{n}.bin") + 1


def test_delete_returns_bundle_then_gone(repo: BundleRepository) -> None:
    bundle = _bundle(files=2)
    repo.create(bundle)
    assert repo.delete(bundle.id) == bundle
    assert repo.get(bundle.id) is None
    assert repo.delete(bundle.id) is None


def test_purge_expired_removes_only_expired(repo: BundleRepository) -> None:
    old = Bundle.new("old.zip", (FileRef("https://example.com/a"),), 1, now=time.time() - 3600)
    fresh = _bundle(files=1)
    repo.create(old)
    repo.create(fresh)
    assert repo.purge_expired(int(time.time())) >= 1
    assert repo.get(old.id) is None
    assert repo.get(fresh.id) == fresh


def test_expired_bundles_are_still_returned(repo: BundleRepository) -> None:
    old = Bundle.new("old.zip", (), 1, now=time.time() - 3600)
    repo.create(old)
    stored = repo.get(old.id)
    assert stored is not None
    assert stored.expired()


def test_the_owner_deletes_an_expired_bundle(repo: BundleRepository, make_config: Callable[..., Config]) -> None:
    """Expired: 410 for downloads, reads and appends, but its owner can still delete it (200, as when live)."""
    config = make_config()
    app = create_app(config)
    repositories.init_app(app, config, backend=repo)  # the API on this backend
    client = app.test_client()
    old = Bundle.new("old.zip", (FileRef("https://example.com/a"),), 1, now=time.time() - 3600)
    repo.create(old)
    path = f"/{old.id}/{old.secret}"
    assert client.get(f"/{old.id}").status_code == 410
    assert client.get(path).status_code == 410
    assert client.put(path, json={"filename": "new.zip"}).status_code == 410
    assert client.delete(f"/{old.id}/{uuid.uuid4()}").status_code == 403  # still only its owner
    deleted = client.delete(path)
    assert deleted.status_code == 200, deleted.get_json()
    assert deleted.get_json() == old.to_json()
    assert repo.get(old.id) is None
    assert client.delete(path).status_code == 404


# -- the download cache (CrcCache): learned CRC-32s, served records, unstable marks --------------------

VERSION = '"zs1-' + "0123456789" * 4 + '"'  # a zip's ETag


def test_nothing_is_known_at_first(repo: Backend) -> None:
    assert repo.known(["a" * 64], ["https://example.com/a"], VERSION) == Known()
    assert repo.known([], [], None) == Known()


def test_learned_crcs_round_trip_and_update(repo: Backend) -> None:
    assert repo.known(["a" * 64], [], None).crcs == {}
    repo.put_crcs({"a" * 64: 1, "b" * 64: 0xFFFFFFFF})
    repo.put_crcs({"a" * 64: 2})
    assert repo.known(["a" * 64, "b" * 64, "c" * 64], [], None) == Known(crcs={"a" * 64: 2, "b" * 64: 0xFFFFFFFF})


def test_many_learned_crcs(repo: Backend) -> None:
    crcs = {f"{i:064x}": i for i in range(1200)}
    repo.put_crcs(crcs)
    assert repo.known(list(crcs), [], None).crcs == crcs


def test_a_served_record_only_ever_rises(repo: Backend) -> None:
    repo.mark_served(VERSION, 1000)
    repo.mark_served(VERSION, 500)  # a later, shorter response of the same version
    assert repo.known([], [], VERSION).delivered == 1000
    repo.mark_served(VERSION, 2**40)  # past 32 bits
    assert repo.known([], [], VERSION).delivered == 2**40
    assert repo.known([], [], '"zs1-another"').delivered == 0  # one record per version


def test_concurrent_served_marks_leave_the_largest(repo: Backend) -> None:
    """Every step of eight concurrent downloads' records, interleaved: the largest stays (a read, then a
    write of the larger, would let a slower writer put back a smaller value)."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def downloader(offset: int) -> None:
        try:
            barrier.wait()
            for step in range(1, 13):
                repo.mark_served(VERSION, step * 1000 + offset)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=downloader, args=(offset,)) for offset in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert repo.known([], [], VERSION).delivered == 12_007


def test_unstable_marks(repo: Backend) -> None:
    marked, other = "https://example.com/a.bin?v=1", "s3://bucket/ключ файл.bin"
    long = "https://example.com/" + "x" * 5000  # any length is a key
    repo.mark_unstable(marked)
    repo.mark_unstable(marked)
    repo.mark_unstable(long)
    assert repo.known([], [marked, other, long], None).unstable == {marked, long}
    assert repo.known([], [other], None).unstable == frozenset()


def test_the_three_kinds_of_record_never_answer_for_one_another(repo: Backend) -> None:
    """Served and unstable marks were fake CRC-32s in one table: now each is its own record."""
    text = "c" * 64
    repo.mark_served(text, 10)
    repo.mark_unstable(text)
    assert repo.known([text], [], None).crcs == {}
    repo.put_crcs({text: 0})
    assert repo.known([text], [text], text) == Known(crcs={text: 0}, delivered=10, unstable=frozenset({text}))
    assert repo.known([], [], '"zs1-other"').delivered == 0


def test_purge_forgets_cache_records_after_their_lifetime(repo: Backend) -> None:
    from zipstream.repositories import CACHE_LIFETIME

    repo.put_crcs({"a" * 64: 1})
    repo.mark_served(VERSION, 100)
    repo.mark_unstable("https://example.com/a")
    everything = Known(crcs={"a" * 64: 1}, delivered=100, unstable=frozenset({"https://example.com/a"}))
    repo.purge_expired(int(time.time()))
    assert repo.known(["a" * 64], ["https://example.com/a"], VERSION) == everything  # recent: kept
    repo.purge_expired(int(time.time()) + CACHE_LIFETIME + 24 * 3600)
    assert repo.known(["a" * 64], ["https://example.com/a"], VERSION) == Known()


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_the_cache_of_an_unmigrated_database_names_migrate(request: pytest.FixtureRequest, backend: str) -> None:
    repository = BACKENDS[backend](request)  # never migrated
    calls: list[Callable[[], object]] = [
        lambda: repository.known(["a" * 64], ["https://example.com/a"], VERSION),
        lambda: repository.put_crcs({"a" * 64: 1}), lambda: repository.mark_served(VERSION, 1),
        lambda: repository.mark_unstable("https://example.com/a"),
    ]
    for call in calls:
        with pytest.raises(SchemaNotReady, match="run `zipstream migrate`"):
            call()
    repository.close()


def test_large_bundle_round_trips(repo: BundleRepository) -> None:
    refs = tuple(FileRef(f"https://example.com/{'x' * 200}/{i}.bin", f"dir/{i}.bin") for i in range(2000))
    bundle = Bundle.new("big.zip", refs, 60)
    repo.create(bundle)
    assert repo.get(bundle.id) == bundle


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_foreign_table_of_the_same_name_is_refused_untouched(request: pytest.FixtureRequest, backend: str) -> None:
    """The Node ZipStream's `bundles` table (another shape) must not be used or changed."""
    from zipstream.repositories import SchemaConflict
    from zipstream.repositories.sql import SqlRepository

    repository = BACKENDS[backend](request)
    assert isinstance(repository, SqlRepository)
    with repository.transaction() as cursor:
        cursor.execute(f"CREATE TABLE {repository.table} (id TEXT PRIMARY KEY, files TEXT, expirationdate BIGINT)")
        cursor.execute(f"INSERT INTO {repository.table} VALUES ('old', '[]', 1)")  # noqa: S608 - test table name
    with pytest.raises(SchemaConflict, match="TABLE_NAME"):
        repository.migrate()
    with repository.transaction() as cursor:
        cursor.execute(f"SELECT id, files FROM {repository.table}")  # noqa: S608 - test table name
        assert cursor.fetchall() == [("old", "[]")]


def test_a_foreign_dynamodb_table_is_refused(request: pytest.FixtureRequest) -> None:
    """A DynamoDB table keyed differently (the Node ZipStream's `id` key) is not used."""
    from zipstream.aws import dynamodb_client
    from zipstream.repositories import SchemaConflict

    repository = BACKENDS["dynamodb"](request)
    client = dynamodb_client(repository.config)  # type: ignore[attr-defined]
    client.create_table(
        TableName=repository.table,  # type: ignore[attr-defined]
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.close()
    with pytest.raises(SchemaConflict, match="TABLE_NAME"):
        repository.migrate()


def test_dynamodb_full_meta_item_refuses_an_append_and_changes_nothing(request: pytest.FixtureRequest) -> None:
    """The meta item lists every chunk key; past DynamoDB's 400 KB item limit an append is a 413 that
    leaves the bundle as it was (and removes the chunk item it had written)."""
    from botocore.exceptions import ClientError

    from zipstream.aws import dynamodb_client
    from zipstream.repositories.dynamodb import CHUNK_PREFIX, META

    repository = BACKENDS["dynamodb"](request)
    repository.migrate()
    bundle = _bundle(files=1)
    repository.create(bundle)
    client = dynamodb_client(repository.config)  # type: ignore[attr-defined]
    table = repository.table  # type: ignore[attr-defined]
    key = {"pk": {"S": bundle.id}, "sk": {"S": META}}

    def pad(count: int) -> bool:
        """Add `count` chunk keys of the real shape to the meta item, as thousands of appends would."""
        keys = [{"S": CHUNK_PREFIX + uuid.uuid4().hex} for _ in range(count)]
        try:
            client.update_item(TableName=table, Key=key, UpdateExpression="SET chunks = list_append(chunks, :k)",
                               ExpressionAttributeValues={":k": {"L": keys}})
        except ClientError as error:
            if "size" not in str(error).lower():
                raise
            return False
        return True

    try:
        while pad(100):  # fill the item to within one key of the limit
            pass
        while pad(1):
            pass
        meta_before = client.get_item(TableName=table, Key=key)["Item"]

        def chunk_items() -> int:
            return int(client.query(
                TableName=table, KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
                ExpressionAttributeValues={":pk": {"S": bundle.id}, ":prefix": {"S": CHUNK_PREFIX}},
                Select="COUNT")["Count"])

        chunks_before = chunk_items()
        with pytest.raises(LimitExceeded) as refused:
            repository.append(bundle.id, [FileRef("https://example.com/one-more.txt")], max_files=10**6)
        assert refused.value.status == 413
        assert refused.value.to_dict()["error"]["limit"] == "DYNAMODB_ITEM_SIZE"
        meta_after = client.get_item(TableName=table, Key=key)["Item"]
        # moto applies `file_count + :n` before it refuses the size (DynamoDB's UpdateItem is atomic),
        # so the counter is left out here; the list of chunks is what the bundle's files are read from.
        assert {k: v for k, v in meta_after.items() if k != "file_count"} == \
            {k: v for k, v in meta_before.items() if k != "file_count"}
        assert chunk_items() == chunks_before  # the chunk it wrote first was removed again
    finally:
        client.close()


# -- readiness: an unmigrated or unreachable database is a 503 naming the fix, never a 500 ------------

def _routes(client: FlaskClient) -> dict[str, TestResponse]:
    """Every route that needs the database, with requests that would otherwise succeed or 404."""
    some_id, some_secret = str(uuid.uuid4()), str(uuid.uuid4())
    files = {"files": [{"src": "http://127.0.0.1:9/a.txt"}]}
    return {
        "POST /": client.post("/", json=files),
        "POST /bundle": client.post("/bundle", json=files),
        "GET /<id>": client.get(f"/{some_id}"),
        "HEAD /<id>": client.head(f"/{some_id}"),
        "GET /<id>/<secret>": client.get(f"/{some_id}/{some_secret}"),
        "PUT /<id>/<secret>": client.put(f"/{some_id}/{some_secret}", json=files),
        "DELETE /<id>/<secret>": client.delete(f"/{some_id}/{some_secret}"),
        "GET /health-check": client.get("/health-check"),
    }


def _all_503(client: FlaskClient, words: str) -> None:
    for route, response in _routes(client).items():
        assert response.status_code == 503, (route, response.status_code, response.data[:300])
        assert int(response.headers["Retry-After"]) > 0, route
        if route.startswith("HEAD"):
            continue  # no body
        error = response.get_json()["error"]
        assert words in error["message"], (route, error)
        assert "database unavailable: database unavailable" not in error["message"]


def _unmigrated_config(request: pytest.FixtureRequest, backend: str) -> Config:
    """Settings pointing at a database where this backend's schema does not exist yet."""
    table = "t_" + uuid.uuid4().hex[:12]
    base = {"FS_INTERFACES": "https", "HTTP_ALLOW_PRIVATE": "true", "TABLE_NAME": table}
    if backend == "postgres":
        url = request.getfixturevalue("postgres_url")

        def drop() -> None:
            with psycopg2.connect(url) as connection, connection.cursor() as cursor:
                for suffix in TABLE_SUFFIXES:
                    cursor.execute(f"DROP TABLE IF EXISTS {table}{suffix} CASCADE")
            connection.close()

        request.addfinalizer(drop)
        return Config.from_env({**base, "DB_INTERFACE": "postgres", "DB_CNXN": url})
    request.getfixturevalue("moto_server")

    def delete() -> None:
        from zipstream.aws import dynamodb_client

        client = dynamodb_client(config)
        with contextlib.suppress(Exception):
            client.delete_table(TableName=table)
        client.close()

    config = Config.from_env({**base, "DB_INTERFACE": "dynamodb", "AWS_REGION": "us-east-1"})
    request.addfinalizer(delete)
    return config


def _until_ready(client: FlaskClient, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while (response := client.get("/health-check")).status_code != 200:
        assert time.monotonic() < deadline, response.get_json()
        time.sleep(0.2)


@pytest.mark.parametrize("backend", ["postgres", "dynamodb"])
def test_unmigrated_database_answers_503_naming_migrate_then_becomes_ready(
    request: pytest.FixtureRequest, backend: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """Web process started before the release step: 503s naming the command (never a 500, never a 200
    health-check), one log line saying so, and ready without a restart once `migrate` has run."""
    config = _unmigrated_config(request, backend)
    with caplog.at_level(logging.INFO, logger="zipstream"):
        app = create_app(config)
    not_ready = [r.getMessage() for r in caplog.records if r.getMessage().startswith("not ready: ")]
    assert len(not_ready) == 1 and "zipstream migrate" in not_ready[0], not_ready
    client = app.test_client()
    _all_503(client, "run `zipstream migrate`")
    health = client.get("/health-check").get_json()
    assert health["status"] == "unavailable"
    assert health["error"]["code"] == "not_migrated"
    assert "missing" in health["error"]["message"]

    build_repository(config).migrate()  # the release step, from another process in real life
    _until_ready(client)
    created = client.post("/", json={"files": [{"src": "http://127.0.0.1:9/a.txt"}]})
    assert created.status_code == 201
    assert client.get(f"/{created.get_json()['id']}/{created.get_json()['secret']}").status_code == 200


def _unapply(repository: Backend, script: str, suffixes: tuple[str, ...]) -> None:
    """Undo one migration behind the repository's back: as a database an older release migrated."""
    assert isinstance(repository, SqlRepository)
    with repository.transaction() as cursor:
        cursor.execute(f"DELETE FROM {repository.table}_migrations WHERE name = '{script}'")  # noqa: S608
        for suffix in suffixes:
            cursor.execute(f"DROP TABLE {repository.table}{suffix}")


# Each migration after the first, and the tables it creates.
LATER_MIGRATIONS = {"0002_source_crcs.sql": ("_crcs",), "0003_download_records.sql": ("_served", "_unstable")}


@pytest.mark.parametrize("script", sorted(LATER_MIGRATIONS))
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_schema_older_than_the_code_is_not_ready(request: pytest.FixtureRequest, backend: str, script: str) -> None:
    """A migration not applied (its tables missing): 503 naming migrate, not a quiet warning."""
    repository = BACKENDS[backend](request)
    assert repository.schema_state() is SchemaState.MISSING
    repository.migrate()
    assert repository.schema_state() is SchemaState.CURRENT
    _unapply(repository, script, LATER_MIGRATIONS[script])
    assert repository.schema_state() is SchemaState.OUTDATED
    readiness = Readiness(repository, repository.table)
    problem = readiness.check()
    assert isinstance(problem, SchemaNotReady)
    assert "older than the code: run `zipstream migrate`" in problem.message
    with pytest.raises(SchemaNotReady, match="run `zipstream migrate`"):
        repository.known(["a" * 64], ["https://example.com/a"], VERSION)
    repository.migrate()
    assert repository.schema_state() is SchemaState.CURRENT
    repository.mark_served(VERSION, 5)
    assert repository.known([], [], VERSION).delivered == 5
    repository.close()


def test_a_postgres_database_of_the_previous_release_answers_503_naming_migrate_until_it_runs(
    request: pytest.FixtureRequest,
) -> None:
    """The release adds 0003 (served and unstable records): a web process started before the release
    step answers 503 naming `zipstream migrate` on every route (never a 500), and is ready once it ran."""
    config = _unmigrated_config(request, "postgres")
    previous = build_repository(config)
    previous.migrate()
    _unapply(previous, "0003_download_records.sql", LATER_MIGRATIONS["0003_download_records.sql"])
    client = create_app(config).test_client()
    _all_503(client, "older than the code: run `zipstream migrate`")
    previous.migrate()  # the release step
    _until_ready(client)
    created = client.post("/", json={"files": [{"src": "http://127.0.0.1:9/a.txt"}]})
    assert created.status_code == 201
    previous.close()


def test_an_embedded_sqlite_file_of_the_previous_release_migrates_itself(tmp_path: Path) -> None:
    path = tmp_path / "previous.sqlite3"
    previous = SqliteRepository(str(path))
    previous.migrate()
    _unapply(previous, "0003_download_records.sql", LATER_MIGRATIONS["0003_download_records.sql"])
    assert previous.schema_state() is SchemaState.OUTDATED
    client = create_app({"SQLITE_PATH": str(path), "FS_INTERFACES": "https"}).test_client()
    assert client.get("/health-check").status_code == 200
    assert previous.schema_state() is SchemaState.CURRENT


def _drop(repository: BundleRepository, suffix: str) -> None:
    """DROP TABLE {table}{suffix} behind the repository's back (an operator, a bad restore)."""
    assert isinstance(repository, SqlRepository)
    cascade = " CASCADE" if isinstance(repository, PostgresRepository) else ""
    with repository.transaction() as cursor:
        cursor.execute(f"DROP TABLE {repository.table}{suffix}{cascade}")


@pytest.mark.parametrize("suffix", ["_files", "_crcs", "_served", "_unstable", ""])
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_table_dropped_after_migrate_is_not_ready_and_migrate_restores_it(
    request: pytest.FixtureRequest, backend: str, suffix: str,
) -> None:
    """The bookkeeping listed both scripts, so schema_state said current and migrate "up to date" forever."""
    repository = BACKENDS[backend](request)
    repository.migrate()
    bundle = _bundle(files=2)
    repository.create(bundle)
    _drop(repository, suffix)
    assert repository.schema_state() is SchemaState.INCOMPLETE
    readiness = Readiness(repository, "t")
    assert readiness.check() is not None
    with pytest.raises(SchemaNotReady, match="run `zipstream migrate`"):
        readiness.confirm()
    repository.migrate()  # re-creates what is missing, keeps what is there
    assert repository.schema_state() is SchemaState.CURRENT
    assert readiness.check() is None
    readiness.confirm()
    if suffix not in ("_files", ""):
        assert repository.get(bundle.id) == bundle
    repository.put_crcs({"a" * 64: 7})
    repository.mark_served(VERSION, 9)
    repository.mark_unstable("https://example.com/a")
    assert repository.known(["a" * 64], ["https://example.com/a"], VERSION) == Known(
        crcs={"a" * 64: 7}, delivered=9, unstable=frozenset({"https://example.com/a"}))
    again = _bundle(files=3)
    repository.create(again)
    assert repository.get(again.id) == again
    repository.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_missing_column_is_not_ready_and_migrate_says_it_cannot_fix_it(
    request: pytest.FixtureRequest, backend: str,
) -> None:
    repository = BACKENDS[backend](request)
    repository.migrate()
    _drop(repository, "_crcs")
    assert isinstance(repository, SqlRepository)
    with repository.transaction() as cursor:
        cursor.execute(f"CREATE TABLE {repository.table}_crcs (identity TEXT PRIMARY KEY)")
    assert repository.schema_state() is SchemaState.INCOMPLETE
    with pytest.raises(SchemaError, match=r"lack columns .*(crc32|learned_at)"):
        repository.migrate()
    repository.close()


@pytest.mark.parametrize("suffix", ["_crcs", "_served"])
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_health_check_sees_a_dropped_table_and_a_resume_never_quietly_becomes_200(
    request: pytest.FixtureRequest, backend: str, suffix: str, upstream: UpstreamServer, tmp_path: Path,
) -> None:
    """Dropped learned-CRC table: health-check stayed 200 and every resume answered 200 with the whole zip.
    The served records are read by the same resume: their table dropped is the same 503."""
    if backend == "postgres":
        config = _unmigrated_config(request, "postgres")
        build_repository(config).migrate()
    else:
        config = Config.from_env({"FS_INTERFACES": "https", "HTTP_ALLOW_PRIVATE": "true",
                                  "SQLITE_PATH": str(tmp_path / "dropped.sqlite3")})
    app = create_app(config)
    client = app.test_client()
    upstream.add("/a.bin", b"a" * 3000)
    created = client.post("/", json={"files": [{"src": upstream.url("/a.bin")}]}).get_json()
    download = f"/{created['id']}"
    whole = client.get(download)
    assert whole.status_code == 200 and len(whole.get_data()) > 3000  # served: a resume of it is safe
    assert client.get(download, headers={"Range": "bytes=500-"}).status_code == 206
    repository = build_repository(config)
    # The readiness probe sees the table gone (it used to answer 200: its ping was SELECT 1).
    _drop(repository, suffix)
    health = client.get("/health-check")
    assert health.status_code == 503, health.get_json()
    assert "run `zipstream migrate`" in health.get_json()["error"]["message"]
    if backend == "postgres":
        repository.migrate()  # the release step, from another process in real life
    _until_ready(client)  # SQLite: the web process migrates its own embedded file again
    # A resume is the first to meet it: 503 naming the fix (it used to be a quiet 200 of the whole zip).
    assert client.get(download).get_data() == whole.get_data()
    _drop(repository, suffix)
    resumed = client.get(download, headers={"Range": "bytes=500-"})
    assert resumed.status_code == 503, (resumed.status_code, resumed.headers)
    assert "run `zipstream migrate`" in resumed.get_json()["error"]["message"]
    if backend == "postgres":
        assert client.get("/health-check").status_code == 503
        repository.migrate()
    _until_ready(client)
    assert client.get(download).get_data() == whole.get_data()
    assert client.get(download, headers={"Range": "bytes=500-"}).get_data() == whole.get_data()[500:]
    repository.close()


def test_dynamodb_schema_state(request: pytest.FixtureRequest) -> None:
    repository = BACKENDS["dynamodb"](request)
    assert repository.schema_state() is SchemaState.MISSING
    repository.migrate()
    assert repository.schema_state() is SchemaState.CURRENT
    repository.close()


def test_sqlite_writes_queue_in_turn_and_a_long_queue_is_a_clean_503(tmp_path: Path) -> None:
    """Writes of one process take turns; one kept waiting past DB_TIMEOUT gets 503 + Retry-After."""
    repository = SqliteRepository(str(tmp_path / "turns.sqlite3"), "bundles", timeout=0.5)
    repository.migrate()
    inside = threading.Event()

    def long_write() -> None:
        with repository.transaction():
            inside.set()
            time.sleep(3.0)

    holder = threading.Thread(target=long_write)
    holder.start()
    assert inside.wait(5)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="database is locked") as caught:
        repository.create(_bundle())
    waited = time.monotonic() - started
    holder.join()
    assert 0.4 <= waited < 2.5, waited  # about DB_TIMEOUT (0.5 s), not the holder's 3 s
    assert int(caught.value.headers()["Retry-After"]) >= 1
    bundle = _bundle()
    repository.create(bundle)  # the turn is free again
    assert repository.get(bundle.id) == bundle


def test_sqlite_tables_gone_under_a_running_app_name_the_fix_and_come_back(tmp_path: Path) -> None:
    """SQLite answered "no such table", naming no fix; the embedded file is re-created by itself."""
    path = tmp_path / "z.sqlite3"
    app = create_app({"SQLITE_PATH": str(path), "FS_INTERFACES": "https", "HTTP_ALLOW_PRIVATE": "true"})
    client = app.test_client()
    assert client.get("/health-check").status_code == 200
    with sqlite3.connect(path) as connection:
        for suffix in TABLE_SUFFIXES:
            connection.execute(f"DROP TABLE bundles{suffix}")
    connection.close()
    response = client.get(f"/{uuid.uuid4()}")
    assert response.status_code == 503
    assert "run `zipstream migrate`" in response.get_json()["error"]["message"]
    _until_ready(client)  # the web process migrates its own embedded file again
    assert client.post("/", json={"files": [{"src": "http://127.0.0.1:9/a.txt"}]}).status_code == 201


def _down_config(request: pytest.FixtureRequest, backend: str, monkeypatch: pytest.MonkeyPatch,
                 tmp_path: Path) -> Config:
    base = {"FS_INTERFACES": "https", "HTTP_ALLOW_PRIVATE": "true", "DB_TIMEOUT": "1"}
    closed = free_port()  # nothing listens there
    if backend == "sqlite":
        return Config.from_env({**base, "SQLITE_PATH": str(tmp_path / "no-such-dir" / "z.sqlite3")})
    if backend == "postgres":
        return Config.from_env({**base, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed}/test"})
    for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_DYNAMODB", raising=False)
    return Config.from_env({**base, "DB_INTERFACE": "dynamodb", "AWS_REGION": "us-east-1"})


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_database_down_answers_503_on_every_route(
    request: pytest.FixtureRequest, backend: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """The app starts (no crash in create_app), answers 503 + Retry-After everywhere, never a 500."""
    app = create_app(_down_config(request, backend, monkeypatch, tmp_path))
    started = time.monotonic()
    _all_503(app.test_client(), "")
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_no_library_error_escapes_a_repository(
    request: pytest.FixtureRequest, backend: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """Every method against a database that is down raises the service's errors, not the driver's."""
    repository = build_repository(_down_config(request, backend, monkeypatch, tmp_path))
    calls: list[Callable[[], object]] = [
        repository.migrate, repository.schema_state, repository.ping, lambda: repository.create(_bundle()),
        lambda: repository.get(str(uuid.uuid4())), lambda: repository.append(str(uuid.uuid4()), (), 10),
        lambda: repository.delete(str(uuid.uuid4())), lambda: repository.purge_expired(0),
        lambda: repository.known(["a" * 64], ["https://example.com/a"], VERSION),
        lambda: repository.put_crcs({"a" * 64: 1}), lambda: repository.mark_served(VERSION, 1),
        lambda: repository.mark_unstable("https://example.com/a"),
    ]
    for call in calls:
        with pytest.raises(ServiceUnavailable):
            call()
    repository.close()


# -- construction: DB_INTERFACE picks a backend from the registry, which builds itself from Config ---------

def test_every_db_interface_names_a_backend_that_builds_itself_from_the_settings(tmp_path: Path) -> None:
    from zipstream.repositories.dynamodb import DynamoRepository

    assert sorted(REGISTRY) == sorted(DB_INTERFACES)
    base = {"FS_INTERFACES": "https", "TABLE_NAME": "t_built", "DB_TIMEOUT": "7"}
    sqlite = build_repository(Config.from_env({**base, "SQLITE_PATH": str(tmp_path / "b.sqlite3")}))
    assert isinstance(sqlite, SqliteRepository)
    assert (sqlite.path, sqlite.table, sqlite.timeout) == (str(tmp_path / "b.sqlite3"), "t_built", 7.0)
    assert sqlite.migrate_on_start
    dsn = "postgresql://zipstream@127.0.0.1:9/none"  # nothing is connected to yet
    postgres = build_repository(Config.from_env({**base, "DB_INTERFACE": "postgres", "DB_CNXN": dsn,
                                                 "DB_IDLE_TIMEOUT": "30"}))
    assert isinstance(postgres, PostgresRepository)
    assert (postgres.dsn, postgres.table, postgres.timeout, postgres.idle_timeout) == (dsn, "t_built", 7.0, 30.0)
    assert not postgres.migrate_on_start
    dynamodb = build_repository(Config.from_env({**base, "DB_INTERFACE": "dynamodb", "AWS_REGION": "us-east-1"}))
    assert isinstance(dynamodb, DynamoRepository)
    assert (dynamodb.table, dynamodb.calls.db_timeout) == ("t_built", 7.0)
    assert not dynamodb.migrate_on_start
    for built in (sqlite, postgres, dynamodb):
        assert type(built) is REGISTRY[type(built).__module__.split(".")[2]]()
        built.close()


# -- SQLite: learned CRC-32s are purged ----------------------------------------------------------


def test_purge_expired_forgets_old_learned_crcs(tmp_path: object) -> None:
    repository = SqliteRepository(str(tmp_path) + "/crc.sqlite3")  # type: ignore[operator]
    repository.migrate()
    repository.put_crcs({"a" * 64: 1})
    repository.purge_expired(int(time.time()))
    assert repository.known(["a" * 64], [], None).crcs == {"a" * 64: 1}  # recent: kept
    repository.purge_expired(int(time.time()) + 31 * 24 * 3600)
    assert repository.known(["a" * 64], [], None).crcs == {}
