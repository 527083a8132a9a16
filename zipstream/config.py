"""Every environment variable ZipStream reads, declared once; the app's typed `Config`, read and validated once.

Each `Setting` below is one variable: its name, how its text becomes a value (a `ConfigError` naming
the variable otherwise), its default and one line of doc. A blank value means the default.
`Config.from_env` reads the app's settings from them; the gunicorn master (gunicorn_conf.py), the CLI,
boto3's endpoints (`aws_endpoint`) and the metrics read theirs through the same declarations. Tests
pass a plain mapping instead of patching `os.environ`.

The names and defaults are the Node ZipStream's (`PORT`, `DB_INTERFACE`, `DB_CNXN`, `FS_INTERFACES`,
`AWS_REGION`, `TABLE_NAME`, `DATA_LIFETIME`) so its deployments can switch over; Heroku's
(`DATABASE_URL`, `WEB_CONCURRENCY`), gunicorn's, boto3's and prometheus-client's where they have one;
everything else is an addition. The README's configuration table lists the same names and defaults
(tests/test_config.py keeps them in step).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from .numbers import MAX_BYTES, NotANumber, NumberTooLarge, parse_decimal, parse_digits

if TYPE_CHECKING:
    from flask import Flask

T = TypeVar("T")

DB_INTERFACES = ("sqlite", "postgres", "dynamodb")
FILESTORES = ("s3", "https", "file")
COMPRESSIONS = ("stored", "deflate")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# PostgreSQL truncates identifiers past 63 bytes; the longest derived name adds "_migrations" (11).
SQL_TABLE_NAME_MAX = 52


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message (one line) names the variable."""


# -- parsers: (variable name, raw text) -> value, or ConfigError naming the variable --

Parser = Callable[[str, str], T]


def _text(_name: str, raw: str) -> str:
    return raw.strip()


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def whole(minimum: int = 0, maximum: int = MAX_BYTES) -> Parser[int]:
    """ASCII digits (`١٢`, `+5`, `1_0` are refused: zipstream.numbers) from `minimum` to `maximum`."""

    def parse(name: str, raw: str) -> int:
        try:
            value = parse_digits(raw.strip(), maximum)
        except NumberTooLarge:
            raise ConfigError(f"{name} must be at most {maximum}, not {raw.strip()[:40]!r}") from None
        except NotANumber:
            raise ConfigError(f"{name} must be a whole number (ASCII digits 0-9), not {raw[:40]!r}") from None
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, not {value}")
        return value

    return parse


def _seconds(name: str, raw: str) -> float:
    """A positive decimal (`30`, `0.5`): `float()` took `nan`, a timeout nothing is ever past, and `inf`."""
    try:
        value = parse_decimal(raw.strip())
    except NotANumber:
        raise ConfigError(f"{name} must be a number of seconds such as 30 or 0.5, not {raw[:40]!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, not {value}")
    return value


def one_of(choices: tuple[str, ...]) -> Parser[str]:
    """One of `choices`, any case."""

    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        return value

    return parse


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _list(_name: str, raw: str) -> tuple[str, ...]:
    return _csv(raw)


def _hosts(_name: str, raw: str) -> tuple[str, ...]:
    return tuple(host.lower().lstrip(".") for host in _csv(raw))


def _origins(_name: str, raw: str) -> tuple[str, ...]:
    return tuple(origin.rstrip("/") for origin in _csv(raw))


def _filestores(name: str, raw: str) -> tuple[str, ...]:
    chosen = tuple(part.lower() for part in _csv(raw))
    unknown = [part for part in chosen if part not in FILESTORES]
    if unknown:
        raise ConfigError(f"{name} has unknown backends {', '.join(unknown)}; known: {', '.join(FILESTORES)}")
    if not chosen:
        raise ConfigError(f"{name} must name at least one filestore backend")
    return chosen


def _table_name(name: str, raw: str) -> str:
    value = raw.strip()
    # ASCII only: str.isalnum() is true for full-width letters or CJK, which DynamoDB refuses at every call.
    if not (value.isascii() and value.replace("_", "").replace("-", "").replace(".", "").isalnum()):
        raise ConfigError(f"{name} may only hold letters, digits, '_', '-' and '.', not {value!r}")
    return value


def _directory(name: str, raw: str) -> str:
    """An existing directory, as its real path (symbolic links resolved)."""
    path = raw.strip()
    if not os.path.isdir(path):
        raise ConfigError(f"{name} {path!r} is not a directory")
    return os.path.realpath(path)


# -- the declarations --

SETTINGS: dict[str, Setting[Any]] = {}  # every variable the project reads, in declaration order


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One environment variable: `name`, `parse` (text -> value), `default` (for unset or blank), `doc`.

    `shown` is the default as `.env.example` and the README write it when that is not the value itself
    ("": unset, the default is computed). `secret` keeps the value out of reprs.
    """

    name: str
    parse: Parser[T]
    default: T
    doc: str
    shown: str | None = None
    secret: bool = False

    def read(self, env: Mapping[str, str]) -> T:
        """The value in `env`, the default when unset or blank; ConfigError naming the variable if malformed."""
        raw = env.get(self.name)
        if raw is None or not raw.strip():
            return self.default
        return self.parse(self.name, raw)

    @property
    def shown_default(self) -> str:
        """The default as text in the variable's own syntax ("" when unset is the default)."""
        if self.shown is not None:
            return self.shown
        value: Any = self.default
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, tuple):
            return ",".join(value)
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    def field(self) -> T:
        """A `Config` field holding this setting (its default; `Config.from_env` reads it)."""
        return dataclasses.field(default=self.default, repr=not self.secret, metadata={_SETTING: self})


_SETTING = "zipstream.setting"


def setting(name: str, parse: Parser[T], default: T, doc: str, *, shown: str | None = None,
            secret: bool = False) -> Setting[T]:
    """Declare the variable `name` (once: a second declaration of a name raises)."""
    if name in SETTINGS:
        raise ValueError(f"{name} is declared twice")
    declared = Setting(name, parse, default, doc, shown, secret)
    SETTINGS[name] = declared
    return declared


# The Node ZipStream's names (same meanings).
PORT = setting("PORT", whole(1, 65535), 4040, "TCP port to listen on (Heroku sets it)")
DB_INTERFACE = setting("DB_INTERFACE", one_of(DB_INTERFACES), "",
                       "sqlite, postgres or dynamodb; unset: postgres when DATABASE_URL or DB_CNXN is set, else sqlite")
DB_CNXN = setting("DB_CNXN", _text, "", "PostgreSQL connection string (URL or key=value); wins over DATABASE_URL",
                  secret=True)
DATABASE_URL = setting("DATABASE_URL", _text, "", "PostgreSQL URL set by Heroku, Render, Fly, Dokku; selects postgres",
                       secret=True)
FS_INTERFACES: Setting[tuple[str, ...]] = setting(
    "FS_INTERFACES", _filestores, ("s3", "https"), "filestore backends, comma-separated: s3, https, file")
AWS_REGION = setting("AWS_REGION", _text, "us-west-2", "region for S3 and DynamoDB")
TABLE_NAME = setting("TABLE_NAME", _table_name, "bundles", "SQL table or DynamoDB table holding bundles")
DATA_LIFETIME = setting("DATA_LIFETIME", whole(1), 10080, "minutes a stored bundle lives")
# Database.
SQLITE_PATH = setting("SQLITE_PATH", _text, "zipstream.sqlite3", "the SQLite file")
DB_POOL_SIZE = setting("DB_POOL_SIZE", whole(1), 10, "PostgreSQL connections per worker")
DB_TIMEOUT = setting("DB_TIMEOUT", _seconds, 5.0, "seconds before a database call gives up (503)")
DB_IDLE_TIMEOUT = setting("DB_IDLE_TIMEOUT", _seconds, 60.0,
                          "seconds a pooled PostgreSQL connection may sit unused before it is closed")
# Sources.
HTTP_ALLOW_PRIVATE = setting("HTTP_ALLOW_PRIVATE", _bool, False,
                             "allow http(s) sources on private, loopback and link-local addresses")
HTTP_HOSTS: Setting[tuple[str, ...]] = setting(
    "HTTP_HOSTS", _hosts, (), "allowlist of http(s) source hosts or .suffixes, comma-separated (empty: any)")
HTTP_TIMEOUT = setting("HTTP_TIMEOUT", _seconds, 30.0, "seconds to wait on an http(s) source between bytes")
# The whole pre-flight (every source, retries included) must fit in this: under Heroku's 30 s to first
# byte with room for queueing and the database. See README, deploying.
PREFLIGHT_TIMEOUT = setting("PREFLIGHT_TIMEOUT", _seconds, 20.0, "seconds for one download's whole pre-flight (504)")
S3_BUCKETS: Setting[tuple[str, ...]] = setting(
    "S3_BUCKETS", _list, (), "allowlist of S3 buckets, comma-separated (empty: any the credentials can read)")
S3_PATH_STYLE: Setting[bool | None] = setting(
    "S3_PATH_STYLE", _bool, None, "S3 addressing: true path style, false virtual-hosted, unset botocore's choice")
# 0 is "unset" here: the pool is then sized from PREFLIGHT_CONCURRENCY (aws.pool_size).
S3_MAX_POOL = setting("S3_MAX_POOL", whole(1), 0,
                      "S3 connections per worker (unset: max(100, 2 x PREFLIGHT_CONCURRENCY))", shown="")
S3_TIMEOUT = setting("S3_TIMEOUT", _seconds, 30.0, "seconds to wait for S3")
FILE_ROOT = setting("FILE_ROOT", _directory, "", "directory file:// sources are confined to (needed with file)")
PREFETCH = setting("PREFETCH", whole(0), 16, "members fetched ahead of the one streaming out (bench B2)")
PREFETCH_BYTES = setting("PREFETCH_BYTES", whole(64 * 1024), 4 * 1024 * 1024,
                         "bytes read ahead per download, all members together")
# Every byte a worker holds for downloads (chunks going out, read-ahead, pre-flight holds) is granted from
# this; a download that can't get it waits. 96 MiB: 2 workers of ~60 MiB baseline plus this take ~312 MiB of
# a 512 MB container, leaving ~176 MiB for what the budget does not cover (~110-250 KiB per open slow
# download, bench B8). See memory.py and README, performance.
MEMORY_BUDGET = setting("MEMORY_BUDGET", whole(4 * 1024 * 1024), 96 * 1024 * 1024,
                        "bytes one worker holds for all its downloads together; past it downloads wait")
# Requests in flight per download's pre-flight, every host together: also the most one download makes an
# origin serve at once. Pre-flight's latency floor is files x round trip / this: 1,000 files 21 ms away take
# 0.33 s at 64, over the 0.3 s first-byte target; bench B5 measured 0.27 s at 128 and 0.16 s at 256, where
# pre-flight is bound by CPU, not latency (512 gained nothing). Each costs a socket while in flight, little
# memory (README, performance).
PREFLIGHT_CONCURRENCY = setting("PREFLIGHT_CONCURRENCY", whole(1), 256,
                                "concurrent requests per download's pre-flight (bench B5, B2)")
# Files this small need no second request. See sources/held.py and README, performance.
PREFLIGHT_FETCH_BYTES = setting("PREFLIGHT_FETCH_BYTES", whole(0), 64 * 1024,
                                "first bytes of each http(s) file / S3 object pre-flight GETs and keeps (0: HEAD only)")
PREFLIGHT_HOLD_BYTES = setting("PREFLIGHT_HOLD_BYTES", whole(0), 64 * 1024 * 1024,
                               "bytes pre-flight may hold that way per worker (one download: half)")
AWS_ENDPOINT_URL = setting("AWS_ENDPOINT_URL", _text, "", "boto3's endpoint for every AWS service (MinIO, moto)")
AWS_ENDPOINT_URL_S3 = setting("AWS_ENDPOINT_URL_S3", _text, "", "boto3's S3 endpoint (MinIO, Ceph, R2)")
AWS_ENDPOINT_URL_DYNAMODB = setting("AWS_ENDPOINT_URL_DYNAMODB", _text, "",
                                    "boto3's DynamoDB endpoint (local DynamoDB)")
# Limits.
MAX_FILES = setting("MAX_FILES", whole(1), 10000, "files per bundle")
MAX_BODY_BYTES = setting("MAX_BODY_BYTES", whole(1024), 16 * 1024 * 1024, "request body size")
MAX_NAME_LENGTH = setting("MAX_NAME_LENGTH", whole(16), 1024, "longest dst")
MAX_SRC_LENGTH = setting("MAX_SRC_LENGTH", whole(16), 4096, "longest src")
MAX_BUNDLE_BYTES = setting("MAX_BUNDLE_BYTES", whole(0), 0, "total size of a bundle's files (0: unlimited)")
# API.
API_KEY = setting("API_KEY", _text, "", "when set, creating bundles needs 'Authorization: Bearer <API_KEY>'",
                  secret=True)
METRICS_TOKEN = setting("METRICS_TOKEN", _text, "", "when set, /metrics needs 'Authorization: Bearer <METRICS_TOKEN>'",
                        secret=True)
CORS_ORIGINS: Setting[tuple[str, ...]] = setting(
    "CORS_ORIGINS", _origins, (), "origins allowed by CORS, comma-separated ('*': any; empty: no CORS headers)")
DEFAULT_COMPRESSION = setting("DEFAULT_COMPRESSION", one_of(COMPRESSIONS), "stored",
                              "stored or deflate, when a request does not say")
DEMO = setting("DEMO", _bool, False, "serve the shopping-cart example page at /demo")
# Operations: the app, and the gunicorn master (gunicorn_conf.py) and its workers.
LOG_LEVEL = setting("LOG_LEVEL", one_of(LOG_LEVELS), "info", "debug, info, warning, error or critical")
ACCESS_LOG = setting("ACCESS_LOG", _text, "", "gunicorn's own access log file ('-': stderr; unset: none)")
WEB_CONCURRENCY: Setting[int | None] = setting(
    "WEB_CONCURRENCY", whole(1), None, "gunicorn workers (unset: the CPUs this process may use, at least 2)")
WORKER_CONNECTIONS = setting("WORKER_CONNECTIONS", whole(1), 10000,
                             "requests one worker serves at once; past it 503 (middleware.py)")
GRACEFUL_TIMEOUT = setting("GRACEFUL_TIMEOUT", whole(0), 3600, "seconds a stopping worker lets downloads finish")
WORKER_TIMEOUT = setting("WORKER_TIMEOUT", whole(1), 60, "gunicorn's worker heartbeat timeout, seconds")
SEND_TIMEOUT = setting("SEND_TIMEOUT", whole(1), 60,
                       "seconds a download waits for its client to take more bytes; past it the download is cut "
                       "and its memory given back (nginx's send_timeout)")
BODY_TIMEOUT = setting("BODY_TIMEOUT", whole(1), 30,
                       "seconds a client has to send a request's body once its head has arrived (408 past it)")
HEADER_TIMEOUT = setting("HEADER_TIMEOUT", whole(1), 10,
                         "seconds a client has to send a request's line and headers (gunicorn_worker.py)")
PROMETHEUS_MULTIPROC_DIR = setting("PROMETHEUS_MULTIPROC_DIR", _text, "",
                                   "prometheus-client's directory for every worker's metrics (unset: a temporary one)")
TRUSTED_PROXY_HOPS = setting("TRUSTED_PROXY_HOPS", whole(0), 0,
                             "proxies in front appending to X-Forwarded-For (0: the header is ignored)")
# The CLI.
HOST = setting("HOST", _text, "127.0.0.1", "address `zipstream serve` binds")
ZIPSTREAM_URL = setting("ZIPSTREAM_URL", _text, "http://localhost:4040",
                        "the service `zipstream bundle create|show|delete` talk to")


def aws_endpoint(service: Literal["s3", "dynamodb"], env: Mapping[str, str] | None = None) -> str | None:
    """The endpoint boto3 uses for `service`: AWS_ENDPOINT_URL_<SERVICE>, else AWS_ENDPOINT_URL, else AWS's (None).

    boto3 reads these itself when it builds a client (they are its settings, not `Config`'s); this names
    the same one for the S3 client cache and the start-up line.
    """
    env = os.environ if env is None else env
    specific = AWS_ENDPOINT_URL_S3 if service == "s3" else AWS_ENDPOINT_URL_DYNAMODB
    return specific.read(env) or AWS_ENDPOINT_URL.read(env) or None


def _sql_table_name(name: str) -> bool:
    """Whether `name` (and `{name}_files`, `{name}_migrations`...) is a plain unquoted SQL identifier."""
    return (name.isascii() and name.replace("_", "").isalnum() and not name[0].isdigit()
            and len(name) <= SQL_TABLE_NAME_MAX)


def _database(interface: str, cnxn: str, database_url: str) -> tuple[str, str]:
    """(backend, Postgres connection string or "") by convention; ConfigError on a contradiction.

    - DB_INTERFACE set: it decides (the seed's meaning). postgres connects to DB_CNXN, else to
      DATABASE_URL; with neither there is nothing to connect to. sqlite or dynamodb with a
      DATABASE_URL is a contradiction: the platform attached a database this instance would ignore,
      and each instance would keep its own bundles.
    - DB_INTERFACE unset: DATABASE_URL (Heroku, Render, Fly, Dokku set only that) or DB_CNXN selects
      postgres; neither selects the embedded SQLite file.
    A DB_CNXN next to DB_INTERFACE=sqlite/dynamodb is ignored, as in the seed (.env files copied
    from the seed's example carry one).
    """
    if interface in ("sqlite", "dynamodb") and database_url:
        raise ConfigError(
            f"DB_INTERFACE={interface} but DATABASE_URL is set (a PostgreSQL database this instance would "
            "ignore): unset DB_INTERFACE to use DATABASE_URL, or unset DATABASE_URL"
        )
    if not interface:
        interface = "postgres" if database_url or cnxn else "sqlite"
    if interface != "postgres":
        return interface, ""
    target, name = (cnxn, "DB_CNXN") if cnxn else (database_url, "DATABASE_URL")
    if not target:
        raise ConfigError("DB_INTERFACE=postgres but neither DB_CNXN nor DATABASE_URL says which database to use")
    # Not urlsplit: it raises on strings libpq reads happily (an unbalanced "[" in a password).
    scheme_match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", target)
    scheme = scheme_match.group(1).lower() if scheme_match else ""
    if scheme and scheme not in ("postgres", "postgresql"):
        raise ConfigError(f"{name} must be a postgres:// or postgresql:// URL, not a {scheme}:// one")
    from psycopg2 import ProgrammingError
    from psycopg2.extensions import parse_dsn

    try:
        parse_dsn(target)  # libpq's own parser: both URL spellings and the key=value form
    except ProgrammingError:
        # libpq's message may quote the string, password included: not repeated here.
        raise ConfigError(f"{name} is not a PostgreSQL connection string libpq accepts "
                          "(postgres://user:password@host:5432/database)") from None
    return interface, target


def mask_dsn(dsn: str) -> str:
    """A Postgres URL or `key=value` connection string with its password replaced by `***`.

    The URL's user info ends at the last `@` before the first `/` (libpq's conninfo_uri_parse_options
    stops at the first `@` or `/`; the last `@` also covers an unencoded `@` in a password, and at
    worst masks more than the password). So a password holding `?`, `#` or `[`, which libpq accepts
    unencoded, is masked too: `urlsplit` would end the host part there, or raise. A `password=`
    parameter is masked in both forms.
    """
    if "://" not in dsn:
        return _mask_password_parameters(dsn)
    scheme, _, rest = dsn.partition("://")
    at = rest.partition("/")[0].rfind("@")
    if at >= 0:
        user, colon, _password = rest[:at].partition(":")
        rest = user + (":***" if colon else "") + rest[at:]
    return scheme + "://" + re.sub(r"([?&]password=)[^&]*", r"\1***", rest)


def _mask_password_parameters(dsn: str) -> str:
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|(?:[^\s\\]|\\.)+)", r"\1***", dsn)


@dataclass(frozen=True)
class Config:
    """The app's settings, typed: one field per declared setting (see above and the README's configuration
    table), plus the database the DB_INTERFACE / DB_CNXN / DATABASE_URL convention selects."""

    port: int = PORT.field()
    db_interface: str = "sqlite"  # the backend in use: DB_INTERFACE, or the convention (_database)
    # The PostgreSQL connection string in use (DB_CNXN or DATABASE_URL); "" for the other backends.
    db_cnxn: str = field(default="", repr=False)  # may hold a password
    sqlite_path: str = SQLITE_PATH.field()
    db_pool_size: int = DB_POOL_SIZE.field()
    db_timeout: float = DB_TIMEOUT.field()
    db_idle_timeout: float = DB_IDLE_TIMEOUT.field()
    fs_interfaces: tuple[str, ...] = FS_INTERFACES.field()
    aws_region: str = AWS_REGION.field()
    table_name: str = TABLE_NAME.field()
    data_lifetime: int = DATA_LIFETIME.field()
    http_allow_private: bool = HTTP_ALLOW_PRIVATE.field()
    http_hosts: tuple[str, ...] = HTTP_HOSTS.field()
    http_timeout: float = HTTP_TIMEOUT.field()
    preflight_timeout: float = PREFLIGHT_TIMEOUT.field()
    max_files: int = MAX_FILES.field()
    max_body_bytes: int = MAX_BODY_BYTES.field()
    body_timeout: int = BODY_TIMEOUT.field()
    send_timeout: int = SEND_TIMEOUT.field()
    max_name_length: int = MAX_NAME_LENGTH.field()
    max_src_length: int = MAX_SRC_LENGTH.field()
    max_bundle_bytes: int = MAX_BUNDLE_BYTES.field()
    s3_buckets: tuple[str, ...] = S3_BUCKETS.field()
    s3_path_style: bool | None = S3_PATH_STYLE.field()
    s3_max_pool: int = S3_MAX_POOL.field()
    s3_timeout: float = S3_TIMEOUT.field()
    file_root: str = FILE_ROOT.field()
    prefetch: int = PREFETCH.field()
    prefetch_bytes: int = PREFETCH_BYTES.field()
    memory_budget: int = MEMORY_BUDGET.field()
    preflight_concurrency: int = PREFLIGHT_CONCURRENCY.field()
    preflight_fetch_bytes: int = PREFLIGHT_FETCH_BYTES.field()
    preflight_hold_bytes: int = PREFLIGHT_HOLD_BYTES.field()
    api_key: str = API_KEY.field()
    metrics_token: str = METRICS_TOKEN.field()
    cors_origins: tuple[str, ...] = CORS_ORIGINS.field()
    default_compression: str = DEFAULT_COMPRESSION.field()
    demo: bool = DEMO.field()
    log_level: str = LOG_LEVEL.field()
    worker_connections: int = WORKER_CONNECTIONS.field()
    trusted_proxy_hops: int = TRUSTED_PROXY_HOPS.field()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read and validate the settings; raises ConfigError naming the bad variable."""
        env = os.environ if env is None else env
        db_interface, db_cnxn = _database(DB_INTERFACE.read(env), DB_CNXN.read(env), DATABASE_URL.read(env))
        values = {name: declared.read(env) for name, declared in cls.declared().items()}
        config = cls(db_interface=db_interface, db_cnxn=db_cnxn, **values)
        config._check_together()
        return config

    @classmethod
    def declared(cls) -> dict[str, Setting[Any]]:
        """Field name -> the declaration of the variable it holds, for every field but the database's two."""
        return {f.name: f.metadata[_SETTING] for f in fields(cls) if _SETTING in f.metadata}

    def _check_together(self) -> None:
        """The rules that involve more than one setting."""
        if "file" in self.fs_interfaces and not self.file_root:
            raise ConfigError("FS_INTERFACES contains 'file' but FILE_ROOT is not set")
        if self.db_interface in ("sqlite", "postgres") and not _sql_table_name(self.table_name):
            # Used unquoted in SQL: `-`/`.` were a syntax error in migrate, then "run migrate" forever.
            raise ConfigError(
                f"TABLE_NAME {self.table_name!r} is not usable with {self.db_interface}: use letters, digits and '_'"
                f" only, not starting with a digit, at most {SQL_TABLE_NAME_MAX} characters ('-' and '.' are for"
                " DynamoDB)"
            )

    def describe_database(self) -> str:
        """One line naming the backend and its target, password masked (logged at start-up).

        e.g. `postgres postgres://app:***@db:5432/zs table bundles`, `sqlite /srv/zipstream.sqlite3
        table bundles`, `dynamodb region us-west-2 table bundles endpoint http://localhost:8000`.
        """
        if self.db_interface == "postgres":
            return f"postgres {mask_dsn(self.db_cnxn)} table {self.table_name}"
        if self.db_interface == "sqlite":
            return f"sqlite {os.path.abspath(self.sqlite_path)} table {self.table_name}"
        return f"dynamodb region {self.aws_region} table {self.table_name} endpoint {aws_endpoint('dynamodb') or 'AWS'}"

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed (tests use this)."""
        return dataclasses.replace(self, **changes)


_EXTENSION = "zipstream.config"


def init_app(app: Flask, config: Config) -> None:
    """Make `config` the app's (`get_config()`), with the Flask settings it decides."""
    app.config.update(
        MAX_CONTENT_LENGTH=config.max_body_bytes,
        MAX_FORM_MEMORY_SIZE=config.max_body_bytes,
        # Werkzeug's default of 1,000 form parts would cap a form post at ~500 files.
        MAX_FORM_PARTS=config.max_files * 2 + 16,
    )
    app.extensions[_EXTENSION] = config


def get_config() -> Config:
    """The current app's Config (needs an app context, as in a request)."""
    from flask import current_app  # here: nothing else in this module needs Flask, and the sources import it

    config: Config = current_app.extensions[_EXTENSION]
    return config
