"""Configuration by convention: which database a set of variables selects, and what refuses to start."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from zipstream import create_app
from zipstream.config import SETTINGS, Config, ConfigError, aws_endpoint, get_config, mask_dsn, setting
from zipstream.repositories.postgres import PostgresRepository

HEROKU_URL = "postgres://u:s3cret@db.internal:5432/d1"


def _db(**env: str) -> tuple[str, str]:
    config = Config.from_env(env)
    return config.db_interface, config.db_cnxn


def test_database_url_alone_selects_postgres() -> None:
    """Heroku, Render, Fly and Dokku set only DATABASE_URL (it used to be ignored: a SQLite file per dyno)."""
    assert _db(DATABASE_URL=HEROKU_URL) == ("postgres", HEROKU_URL)
    assert _db(DATABASE_URL="postgresql://h/db") == ("postgres", "postgresql://h/db")


def test_db_interface_and_db_cnxn_keep_their_meaning_and_win() -> None:
    assert _db() == ("sqlite", "")
    assert _db(DB_INTERFACE="postgres", DB_CNXN="postgres://a/x") == ("postgres", "postgres://a/x")
    assert _db(DB_INTERFACE="postgres", DB_CNXN="postgres://a/x", DATABASE_URL=HEROKU_URL) == (
        "postgres", "postgres://a/x")
    assert _db(DB_INTERFACE="postgres", DATABASE_URL=HEROKU_URL) == ("postgres", HEROKU_URL)
    assert _db(DB_CNXN="host=a dbname=x") == ("postgres", "host=a dbname=x")
    # The seed's example file sets DB_CNXN next to DB_INTERFACE=sqlite: it is not used, as before.
    assert _db(DB_INTERFACE="sqlite", DB_CNXN="postgres://localhost:5432/zipstream") == ("sqlite", "")
    assert _db(DB_INTERFACE="dynamodb", DATABASE_URL="") == ("dynamodb", "")


@pytest.mark.parametrize(("env", "words"), [
    ({"DB_INTERFACE": "sqlite", "DATABASE_URL": HEROKU_URL}, ["DB_INTERFACE=sqlite", "DATABASE_URL"]),
    ({"DB_INTERFACE": "dynamodb", "DATABASE_URL": HEROKU_URL}, ["DB_INTERFACE=dynamodb", "DATABASE_URL"]),
    ({"DB_INTERFACE": "postgres"}, ["DB_INTERFACE=postgres", "DB_CNXN", "DATABASE_URL"]),
    ({"DATABASE_URL": "mysql://u@h/db"}, ["DATABASE_URL", "postgres://"]),
    ({"DB_CNXN": "host=h password=s3cret dbname"}, ["DB_CNXN", "libpq"]),
    ({"DB_INTERFACE": "oracle"}, ["DB_INTERFACE"]),
])
def test_a_contradiction_refuses_to_start_with_one_line(env: dict[str, str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as refused:
        Config.from_env(env)
    message = str(refused.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    assert "s3cret" not in message


def test_the_cli_refuses_a_contradiction_in_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DB_INTERFACE": "sqlite", "DATABASE_URL": HEROKU_URL,
           "SQLITE_PATH": str(tmp_path / "x.sqlite3")}
    result = subprocess.run([sys.executable, "-m", "zipstream.cli", "migrate"], env=env, capture_output=True,
                            text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("zipstream: configuration error: DB_INTERFACE=sqlite but DATABASE_URL is set")
    assert not (tmp_path / "x.sqlite3").exists()  # nothing was touched


@pytest.mark.parametrize(("dsn", "masked"), [
    # libpq takes these unencoded; urlsplit ended the host part at "?" / "#" and showed the password.
    ("postgres://postgres:p?ss#w0rd@127.0.0.1:5432/db", "postgres://postgres:***@127.0.0.1:5432/db"),
    ("postgres://u:s3cret#x@h/db", "postgres://u:***@h/db"),
    ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
    ("postgres://u:[s3cret@h/db", "postgres://u:***@h/db"),  # urlsplit raised "Invalid IPv6 URL"
    ("host=h password=sec\\ ret dbname=x", "host=h password=*** dbname=x"),
    ("postgres:///x?password=abc&sslmode=require", "postgres:///x?password=***&sslmode=require"),
])
def test_passwords_libpq_accepts_unencoded_are_masked(dsn: str, masked: str) -> None:
    assert mask_dsn(dsn) == masked


def test_an_unbalanced_bracket_in_the_url_is_one_config_line_not_a_traceback() -> None:
    with pytest.raises(ConfigError) as refused:
        Config.from_env({"DATABASE_URL": "postgres://u:s3cret@[::1/db"})
    assert "DATABASE_URL" in str(refused.value) and "s3cret" not in str(refused.value)


def test_passwords_are_masked_in_the_database_line() -> None:
    assert mask_dsn(HEROKU_URL) == "postgres://u:***@db.internal:5432/d1"
    assert mask_dsn("postgres://u@h/db?sslmode=require&password=p") == "postgres://u@h/db?sslmode=require&password=***"
    assert mask_dsn("host=h password='a b' dbname=x") == "host=h password=*** dbname=x"
    assert Config.from_env({"DATABASE_URL": HEROKU_URL}).describe_database() == (
        "postgres postgres://u:***@db.internal:5432/d1 table bundles")
    sqlite = Config.from_env({"SQLITE_PATH": "/srv/z.sqlite3"})
    assert sqlite.describe_database() == "sqlite /srv/z.sqlite3 table bundles"
    dynamo = Config.from_env({"DB_INTERFACE": "dynamodb", "AWS_REGION": "eu-west-1", "TABLE_NAME": "zs"})
    assert dynamo.describe_database().startswith("dynamodb region eu-west-1 table zs endpoint ")


def test_heroku_spelling_connects(postgres_url: str) -> None:
    """libpq takes `postgres://` as well as `postgresql://`: Heroku's DATABASE_URL works unchanged."""
    heroku = "postgres://" + postgres_url.split("://", 1)[1]
    config = Config.from_env({"DATABASE_URL": heroku})
    repository = PostgresRepository(config.db_cnxn, "t_unused")
    try:
        repository.ping()
    finally:
        repository.close()


def test_start_up_logs_one_line_naming_the_database(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "z.sqlite3"
    with caplog.at_level(logging.INFO, logger="zipstream"):
        create_app({"SQLITE_PATH": str(path), "FS_INTERFACES": "https"})
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("database: ")]
    assert lines == [f"database: sqlite {path} table bundles"]


def test_start_up_line_masks_the_postgres_password(caplog: pytest.LogCaptureFixture) -> None:
    url = "postgresql://zs:hunter2@127.0.0.1:1/nowhere"  # nothing listens: the app still starts (503s)
    with caplog.at_level(logging.INFO, logger="zipstream"):
        create_app({"DATABASE_URL": url, "DB_TIMEOUT": "1", "FS_INTERFACES": "https"})
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "database: postgres postgresql://zs:***@127.0.0.1:1/nowhere table bundles" in text
    assert "hunter2" not in text


def test_gunicorn_refuses_a_contradiction_with_one_line_and_stops(tmp_path: Path) -> None:
    """The web process stops (no endless re-forking of workers) and says why once per worker, no traceback."""
    from .support.live import ROOT, free_port

    env = {**os.environ, "DB_INTERFACE": "sqlite", "DATABASE_URL": HEROKU_URL, "WEB_CONCURRENCY": "1",
           "SQLITE_PATH": str(tmp_path / "x.sqlite3"), "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--config", str(ROOT / "gunicorn.conf.py"),
         "--bind", f"127.0.0.1:{free_port()}", "zipstream.wsgi:app"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "zipstream: configuration error: DB_INTERFACE=sqlite but DATABASE_URL is set" in result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize("name", ["\uff5a\uff53", "表", "zs²"])
def test_a_table_name_with_letters_or_digits_outside_ascii_is_refused_for_dynamodb(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"DB_INTERFACE": "dynamodb", "AWS_REGION": "eu-west-1", "TABLE_NAME": name})
    assert "TABLE_NAME" in str(caught.value)


@pytest.mark.parametrize("name", ["zip-bundles", "zs.bundles", "1bundles", "b" * 53])
@pytest.mark.parametrize("database", [{}, {"DATABASE_URL": "postgresql://127.0.0.1/test"}])
def test_a_table_name_sql_cannot_use_is_refused_for_sql_backends(name: str, database: dict[str, str]) -> None:
    """`-` or `.` used to pass, then broke migrate (a syntax error) and the web process said "run migrate" forever."""
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"TABLE_NAME": name, **database})
    message = str(caught.value)
    assert "TABLE_NAME" in message and name in message and "\n" not in message


def test_dynamodb_keeps_dashes_and_dots_in_table_names() -> None:
    config = Config.from_env({"DB_INTERFACE": "dynamodb", "AWS_REGION": "eu-west-1", "TABLE_NAME": "zip-bundles.v2"})
    assert config.table_name == "zip-bundles.v2"
    assert Config.from_env({"TABLE_NAME": "Zip_Bundles2"}).table_name == "Zip_Bundles2"


# -- numbers: ASCII digits only (zipstream.numbers), refused in one line naming the setting --

@pytest.mark.parametrize("value", ["\u0661\u0662", "\uff11\uff12", "²", "+5", "1_0", "5.0", "-1", "0x10", "1e3",
                                   "9" * 20])
def test_a_whole_number_setting_takes_ascii_digits_only(value: str) -> None:
    """`int()` took `١٢` (as 12), `+5` and `1_0` silently."""
    with pytest.raises(ConfigError) as refused:
        Config.from_env({"MAX_FILES": value})
    message = str(refused.value)
    assert message.startswith("MAX_FILES must be") and "\n" not in message


@pytest.mark.parametrize("value", ["nan", "inf", "Infinity", "-1", "1e3", "\u0661.\u0665", "1_0", "+2", ".", "0x1"])
def test_a_seconds_setting_is_a_plain_decimal(value: str) -> None:
    """`float()` took `nan` (a timeout nothing is ever past) and `inf`."""
    with pytest.raises(ConfigError) as refused:
        Config.from_env({"HTTP_TIMEOUT": value})
    assert str(refused.value).startswith("HTTP_TIMEOUT must be")


def test_numbers_settings_still_read() -> None:
    config = Config.from_env({"MAX_FILES": " 0012\n", "HTTP_TIMEOUT": "0.5", "PREFLIGHT_TIMEOUT": "20"})
    assert (config.max_files, config.http_timeout, config.preflight_timeout) == (12, 0.5, 20.0)


# -- every declared setting: its default, a value it takes, the values it refuses (one line naming it) --

ROOT = Path(__file__).resolve().parents[1]
TOO_BIG = "9" * 20
# name, default, a valid value as set, what it reads as
READS: list[tuple[str, object, str, object]] = [
    ("PORT", 4040, "8080", 8080),
    ("DB_INTERFACE", "", " Postgres ", "postgres"),
    ("DB_CNXN", "", " host=h dbname=x ", "host=h dbname=x"),
    ("DATABASE_URL", "", "postgres://u@h/db", "postgres://u@h/db"),
    ("FS_INTERFACES", ("s3", "https"), "HTTPS, s3,", ("https", "s3")),
    ("AWS_REGION", "us-west-2", "eu-west-1", "eu-west-1"),
    ("TABLE_NAME", "bundles", "Zip_Bundles2", "Zip_Bundles2"),
    ("DATA_LIFETIME", 10080, "60", 60),
    ("SQLITE_PATH", "zipstream.sqlite3", "/srv/z.sqlite3", "/srv/z.sqlite3"),
    ("DB_POOL_SIZE", 10, "4", 4),
    ("DB_TIMEOUT", 5.0, "0.5", 0.5),
    ("DB_IDLE_TIMEOUT", 60.0, "30", 30.0),
    ("HTTP_ALLOW_PRIVATE", False, "yes", True),
    ("HTTP_HOSTS", (), "Example.COM, .cdn.example.org", ("example.com", "cdn.example.org")),
    ("HTTP_TIMEOUT", 30.0, "2.5", 2.5),
    ("PREFLIGHT_TIMEOUT", 20.0, "25", 25.0),
    ("S3_BUCKETS", (), "a, b", ("a", "b")),
    ("S3_PATH_STYLE", None, "false", False),
    ("S3_MAX_POOL", 0, "50", 50),
    ("S3_TIMEOUT", 30.0, "10", 10.0),
    ("FILE_ROOT", "", "/usr/../usr", "/usr"),  # its real path
    ("PREFETCH", 16, "0", 0),
    ("PREFETCH_BYTES", 4194304, "65536", 65536),
    ("MEMORY_BUDGET", 100663296, "4194304", 4194304),
    ("PREFLIGHT_CONCURRENCY", 256, "8", 8),
    ("PREFLIGHT_FETCH_BYTES", 65536, "0", 0),
    ("PREFLIGHT_HOLD_BYTES", 67108864, "0", 0),
    ("AWS_ENDPOINT_URL", "", "http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ("AWS_ENDPOINT_URL_S3", "", "http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ("AWS_ENDPOINT_URL_DYNAMODB", "", "http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("MAX_FILES", 10000, " 0012\n", 12),
    ("MAX_BODY_BYTES", 16777216, "1024", 1024),
    ("MAX_NAME_LENGTH", 1024, "16", 16),
    ("MAX_SRC_LENGTH", 4096, "16", 16),
    ("MAX_BUNDLE_BYTES", 0, "1000", 1000),
    ("API_KEY", "", " k3y ", "k3y"),
    ("METRICS_TOKEN", "", "t0ken", "t0ken"),
    ("CORS_ORIGINS", (), "https://a.example/, *", ("https://a.example", "*")),
    ("DEFAULT_COMPRESSION", "stored", "DEFLATE", "deflate"),
    ("DEMO", False, "on", True),
    ("LOG_LEVEL", "info", "Warning", "warning"),
    ("ACCESS_LOG", "", "-", "-"),
    ("WEB_CONCURRENCY", None, "7", 7),
    ("WORKER_CONNECTIONS", 10000, "100", 100),
    ("GRACEFUL_TIMEOUT", 3600, "0", 0),
    ("WORKER_TIMEOUT", 60, "30", 30),
    ("SEND_TIMEOUT", 60, "1", 1),
    ("BODY_TIMEOUT", 30, "1", 1),
    ("HEADER_TIMEOUT", 10, "1", 1),
    ("PROMETHEUS_MULTIPROC_DIR", "", "/tmp/metrics", "/tmp/metrics"),
    ("TRUSTED_PROXY_HOPS", 0, "1", 1),
    ("HOST", "127.0.0.1", "0.0.0.0", "0.0.0.0"),
    ("ZIPSTREAM_URL", "http://localhost:4040", "https://zip.example", "https://zip.example"),
]
# name, a value it refuses, the whole message
REFUSES: list[tuple[str, str, str]] = [
    ("PORT", "0", "PORT must be at least 1, not 0"),
    ("PORT", "65536", "PORT must be at most 65535, not '65536'"),
    ("PORT", "http", "PORT must be a whole number (ASCII digits 0-9), not 'http'"),
    ("DB_INTERFACE", "oracle", "DB_INTERFACE must be one of sqlite, postgres, dynamodb, not 'oracle'"),
    ("FS_INTERFACES", "ftp,s3", "FS_INTERFACES has unknown backends ftp; known: s3, https, file"),
    ("FS_INTERFACES", ",", "FS_INTERFACES must name at least one filestore backend"),
    ("TABLE_NAME", "zip bundles", "TABLE_NAME may only hold letters, digits, '_', '-' and '.', not 'zip bundles'"),
    ("TABLE_NAME", "zs\u00b2", "TABLE_NAME may only hold letters, digits, '_', '-' and '.', not 'zs\u00b2'"),
    ("DATA_LIFETIME", "0", "DATA_LIFETIME must be at least 1, not 0"),
    ("DB_POOL_SIZE", "0", "DB_POOL_SIZE must be at least 1, not 0"),
    ("DB_TIMEOUT", "0", "DB_TIMEOUT must be positive, not 0.0"),
    ("DB_TIMEOUT", "nan", "DB_TIMEOUT must be a number of seconds such as 30 or 0.5, not 'nan'"),
    ("DB_IDLE_TIMEOUT", "-1", "DB_IDLE_TIMEOUT must be a number of seconds such as 30 or 0.5, not '-1'"),
    ("HTTP_ALLOW_PRIVATE", "maybe", "HTTP_ALLOW_PRIVATE must be true or false, not 'maybe'"),
    ("HTTP_TIMEOUT", "inf", "HTTP_TIMEOUT must be a number of seconds such as 30 or 0.5, not 'inf'"),
    ("PREFLIGHT_TIMEOUT", "0", "PREFLIGHT_TIMEOUT must be positive, not 0.0"),
    ("S3_PATH_STYLE", "path", "S3_PATH_STYLE must be true or false, not 'path'"),
    ("S3_MAX_POOL", "0", "S3_MAX_POOL must be at least 1, not 0"),
    ("S3_TIMEOUT", "1e3", "S3_TIMEOUT must be a number of seconds such as 30 or 0.5, not '1e3'"),
    ("FILE_ROOT", "/nonexistent-zipstream-root", "FILE_ROOT '/nonexistent-zipstream-root' is not a directory"),
    ("PREFETCH", "-1", "PREFETCH must be a whole number (ASCII digits 0-9), not '-1'"),
    ("PREFETCH_BYTES", "65535", "PREFETCH_BYTES must be at least 65536, not 65535"),
    ("MEMORY_BUDGET", "4194303", "MEMORY_BUDGET must be at least 4194304, not 4194303"),
    ("PREFLIGHT_CONCURRENCY", "0", "PREFLIGHT_CONCURRENCY must be at least 1, not 0"),
    ("PREFLIGHT_FETCH_BYTES", "64k", "PREFLIGHT_FETCH_BYTES must be a whole number (ASCII digits 0-9), not '64k'"),
    ("PREFLIGHT_HOLD_BYTES", "1_000", "PREFLIGHT_HOLD_BYTES must be a whole number (ASCII digits 0-9), not '1_000'"),
    ("MAX_FILES", "0", "MAX_FILES must be at least 1, not 0"),
    ("MAX_FILES", TOO_BIG, f"MAX_FILES must be at most 9223372036854775807, not '{TOO_BIG}'"),
    ("MAX_BODY_BYTES", "1023", "MAX_BODY_BYTES must be at least 1024, not 1023"),
    ("MAX_NAME_LENGTH", "15", "MAX_NAME_LENGTH must be at least 16, not 15"),
    ("MAX_SRC_LENGTH", "15", "MAX_SRC_LENGTH must be at least 16, not 15"),
    ("MAX_BUNDLE_BYTES", "-1", "MAX_BUNDLE_BYTES must be a whole number (ASCII digits 0-9), not '-1'"),
    ("DEFAULT_COMPRESSION", "zstd", "DEFAULT_COMPRESSION must be one of stored, deflate, not 'zstd'"),
    ("DEMO", "2", "DEMO must be true or false, not '2'"),
    ("LOG_LEVEL", "loud", "LOG_LEVEL must be one of debug, info, warning, error, critical, not 'loud'"),
    ("WEB_CONCURRENCY", "0", "WEB_CONCURRENCY must be at least 1, not 0"),
    # int() took U+0667 (Arabic-Indic 7) as 7, `+7`, and `7_0` as 70; gunicorn too.
    ("WEB_CONCURRENCY", "\u0667", "WEB_CONCURRENCY must be a whole number (ASCII digits 0-9), not '\u0667'"),
    ("WEB_CONCURRENCY", "+7", "WEB_CONCURRENCY must be a whole number (ASCII digits 0-9), not '+7'"),
    ("WEB_CONCURRENCY", "7_0", "WEB_CONCURRENCY must be a whole number (ASCII digits 0-9), not '7_0'"),
    ("WEB_CONCURRENCY", "7.0", "WEB_CONCURRENCY must be a whole number (ASCII digits 0-9), not '7.0'"),
    ("WORKER_CONNECTIONS", "0", "WORKER_CONNECTIONS must be at least 1, not 0"),
    ("GRACEFUL_TIMEOUT", "1h", "GRACEFUL_TIMEOUT must be a whole number (ASCII digits 0-9), not '1h'"),
    ("WORKER_TIMEOUT", "0", "WORKER_TIMEOUT must be at least 1, not 0"),
    ("SEND_TIMEOUT", "0", "SEND_TIMEOUT must be at least 1, not 0"),
    ("BODY_TIMEOUT", "0", "BODY_TIMEOUT must be at least 1, not 0"),
    ("HEADER_TIMEOUT", "0", "HEADER_TIMEOUT must be at least 1, not 0"),
    ("HEADER_TIMEOUT", "2.5", "HEADER_TIMEOUT must be a whole number (ASCII digits 0-9), not '2.5'"),
    ("TRUSTED_PROXY_HOPS", "x", "TRUSTED_PROXY_HOPS must be a whole number (ASCII digits 0-9), not 'x'"),
]
# Settings any text is good for (names, paths, URLs, secrets): refused only together with others, if at all.
FREE_TEXT = {"DB_CNXN", "DATABASE_URL", "AWS_REGION", "SQLITE_PATH", "HTTP_HOSTS", "S3_BUCKETS", "AWS_ENDPOINT_URL",
             "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_DYNAMODB", "API_KEY", "METRICS_TOKEN", "CORS_ORIGINS",
             "ACCESS_LOG", "PROMETHEUS_MULTIPROC_DIR", "HOST", "ZIPSTREAM_URL"}


class _Asking(dict[str, str]):
    """An environment that remembers which variables were asked for."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)


def _read_by_config() -> set[str]:
    env = _Asking({})
    Config.from_env(env)
    return env.asked


def _config_field(name: str) -> str | None:
    """The Config field holding setting `name`, if one does."""
    return next((field for field, declared in Config.declared().items() if declared.name == name), None)


def test_the_tables_cover_every_declared_setting() -> None:
    assert [row[0] for row in READS] == list(SETTINGS)  # and in declaration order
    assert {row[0] for row in REFUSES} | FREE_TEXT == set(SETTINGS)
    assert not {row[0] for row in REFUSES} & FREE_TEXT


@pytest.mark.parametrize(("name", "default", "raw", "value"), READS, ids=[row[0] for row in READS])
def test_a_setting_reads_its_default_and_a_valid_value(name: str, default: object, raw: str, value: object) -> None:
    declared = SETTINGS[name]
    assert declared.read({}) == default
    assert declared.read({name: "  "}) == default  # blank is unset
    assert declared.read({name: raw}) == value
    field = _config_field(name)
    if field is not None:  # Config.from_env reads it the same way, and Config() holds the same default
        assert getattr(Config(), field) == default
        assert getattr(Config.from_env({}), field) == default
        assert getattr(Config.from_env({name: raw}), field) == value


@pytest.mark.parametrize(("name", "raw", "message"), REFUSES, ids=[f"{row[0]}={row[1]!r}" for row in REFUSES])
def test_a_setting_refuses_a_bad_value_in_one_line_naming_it(name: str, raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        SETTINGS[name].read({name: raw})
    assert str(refused.value) == message
    if name in _read_by_config():  # the app refuses to start with the same line
        with pytest.raises(ConfigError) as refused:
            Config.from_env({name: raw})
        assert str(refused.value) == message


def test_config_reads_exactly_the_app_settings() -> None:
    """Server, CLI, boto3 and prometheus-client settings are not the app's: a bad one does not stop `migrate`."""
    app_settings = {declared.name for declared in Config.declared().values()}
    assert _read_by_config() == app_settings | {"DB_INTERFACE", "DB_CNXN", "DATABASE_URL"}
    assert Config.from_env({"WEB_CONCURRENCY": "0", "HEADER_TIMEOUT": "x", "HOST": ""}) == Config()


def test_a_setting_is_declared_once() -> None:
    with pytest.raises(ValueError, match="PORT is declared twice"):
        setting("PORT", lambda _name, raw: raw, "", "again")


def test_secrets_stay_out_of_the_repr() -> None:
    config = Config.from_env({"API_KEY": "k3y-secret", "METRICS_TOKEN": "t0k-secret", "DATABASE_URL": HEROKU_URL})
    assert "secret" not in repr(config) and "s3cret" not in repr(config)


def test_the_aws_endpoint_is_boto3s_choice() -> None:
    """AWS_ENDPOINT_URL_<SERVICE> first, then AWS_ENDPOINT_URL, then AWS's own (botocore's order)."""
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:2"}
    assert aws_endpoint("s3", env) == "http://127.0.0.1:2"
    assert aws_endpoint("dynamodb", env) == "http://127.0.0.1:1"
    assert aws_endpoint("dynamodb", {"AWS_ENDPOINT_URL_DYNAMODB": "http://127.0.0.1:3"}) == "http://127.0.0.1:3"
    assert aws_endpoint("s3", {}) is None


def test_the_app_holds_its_config(tmp_path: Path) -> None:
    config = Config.from_env({"SQLITE_PATH": str(tmp_path / "z.sqlite3"), "FS_INTERFACES": "https",
                              "MAX_BODY_BYTES": "4096", "MAX_FILES": "20"})
    app = create_app(config)
    with app.app_context():
        assert get_config() is config
    assert (app.config["MAX_CONTENT_LENGTH"], app.config["MAX_FORM_PARTS"]) == (4096, 56)


# -- the README's configuration table: the declared names, with the declared defaults --

# Rows where the README may differ from the declarations: none (add a name here only with a reason).
README_PENDING: set[str] = set()


def readme_defaults() -> dict[str, str]:
    """Name -> the default the README's configuration table shows: the `literal` a cell starts with, else ""
    (a description such as *(empty)*, — or "CPUs this process may use": the variable is unset by default)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Configuration\n"):]
    section = section[:section.index("\n## ", 1)]
    shown: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        names_cell, default_cell = (cell.strip() for cell in line.strip("| ").split("|")[:2])
        names = re.findall(r"`([A-Z][A-Z0-9_]*)`", names_cell)
        defaults = default_cell.split(" / ")  # `A` / `B` | `1` / `2`; one cell for all otherwise
        if len(defaults) != len(names):
            defaults = [default_cell] * len(names)
        for name, cell in zip(names, defaults, strict=True):
            literal = re.match(r"`([^`]*)`", cell.strip())
            shown[name] = literal.group(1) if literal else ""
    return shown


def test_the_readme_table_lists_the_declared_settings_with_their_defaults() -> None:
    readme = readme_defaults()
    declared = {name: declared.shown_default for name, declared in SETTINGS.items()}
    differ = {name for name in declared.keys() | readme.keys() if readme.get(name) != declared.get(name)}
    assert differ == README_PENDING, {name: (readme.get(name), declared.get(name)) for name in differ ^ README_PENDING}
