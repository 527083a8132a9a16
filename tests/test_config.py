"""Configuration by convention: which database a set of variables selects, and what refuses to start."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zipstream import create_app
from zipstream.config import Config, ConfigError, mask_dsn
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
