"""One typed configuration, read from the environment once and validated at start-up.

The names and defaults are the Node ZipStream's (`PORT`, `DB_INTERFACE`, `DB_CNXN`, `FS_INTERFACES`,
`AWS_REGION`, `TABLE_NAME`, `DATA_LIFETIME`) so its deployments can switch over; everything else is
an addition. Tests pass a plain mapping instead of patching `os.environ`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from .numbers import MAX_BYTES, NotANumber, NumberTooLarge, parse_decimal, parse_digits

T = TypeVar("T")

DB_INTERFACES = ("sqlite", "postgres", "dynamodb")
FS_INTERFACES = ("s3", "https", "file")
COMPRESSIONS = ("stored", "deflate")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _int(name: str, raw: str, minimum: int = 0) -> int:
    try:
        value = parse_digits(raw.strip())
    except NumberTooLarge:
        raise ConfigError(f"{name} must be at most {MAX_BYTES}, not {raw.strip()[:40]!r}") from None
    except NotANumber:
        raise ConfigError(f"{name} must be a whole number (ASCII digits 0-9), not {raw[:40]!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value


def whole_number(name: str, raw: str, minimum: int = 0) -> int:
    """`raw` (ASCII digits, surrounding whitespace ignored) as an int of at least `minimum`;
    ConfigError naming `name` otherwise (for settings read elsewhere). `١٢`, `+5`, `1_0` are refused."""
    return _int(name, raw, minimum)


def _float(name: str, raw: str) -> float:
    try:
        value = parse_decimal(raw.strip())
    except NotANumber:
        raise ConfigError(f"{name} must be a number of seconds such as 30 or 0.5, not {raw[:40]!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, not {value}")
    return value


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


# PostgreSQL truncates identifiers past 63 bytes; the longest derived name adds "_migrations" (11).
SQL_TABLE_NAME_MAX = 52


def _sql_table_name(name: str) -> bool:
    """Whether `name` (and `{name}_files`, `{name}_migrations`...) is a plain unquoted SQL identifier."""
    return (name.isascii() and name.replace("_", "").isalnum() and not name[0].isdigit()
            and len(name) <= SQL_TABLE_NAME_MAX)


def _database(env: Mapping[str, str]) -> tuple[str, str]:
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
    interface = env.get("DB_INTERFACE", "").strip().lower()
    database_url = env.get("DATABASE_URL", "").strip()
    cnxn = env.get("DB_CNXN", "").strip()
    if interface and interface not in DB_INTERFACES:
        raise ConfigError(f"DB_INTERFACE must be one of {', '.join(DB_INTERFACES)}, not {interface!r}")
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
    """Every setting the service reads; see the README's configuration table."""

    port: int = 4040
    db_interface: str = "sqlite"
    # The PostgreSQL connection string in use (DB_CNXN or DATABASE_URL, see _database); "" for the
    # other backends.
    db_cnxn: str = field(default="", repr=False)  # may hold a password
    sqlite_path: str = "zipstream.sqlite3"
    db_pool_size: int = 10
    db_timeout: float = 5.0
    db_idle_timeout: float = 60.0  # seconds a pooled PostgreSQL connection may sit unused before it is closed
    fs_interfaces: tuple[str, ...] = ("s3", "https")
    aws_region: str = "us-west-2"
    table_name: str = "bundles"
    data_lifetime: int = 10080  # minutes
    http_allow_private: bool = False
    http_hosts: tuple[str, ...] = ()
    http_timeout: float = 30.0
    # The whole pre-flight (every source, retries included) must fit in this: under Heroku's 30 s
    # to first byte with room for queueing and the database. See README, deploying.
    preflight_timeout: float = 20.0
    max_files: int = 10000
    max_body_bytes: int = 16 * 1024 * 1024
    max_name_length: int = 1024
    max_src_length: int = 4096
    max_bundle_bytes: int = 0  # 0 = unlimited
    s3_buckets: tuple[str, ...] = ()
    s3_path_style: bool | None = None  # None: botocore's choice (path style for a custom endpoint)
    s3_max_pool: int = 0  # 0 = max(100, 4 x PREFLIGHT_CONCURRENCY)
    s3_timeout: float = 30.0
    file_root: str = ""
    prefetch: int = 16  # chosen by bench B2: see README, performance
    prefetch_bytes: int = 4 * 1024 * 1024  # read-ahead buffered per download, all members together
    preflight_concurrency: int = 64  # chosen by bench B2: see README, performance
    # Pre-flight GETs this many first bytes of each http(s) file instead of a HEAD (0: HEAD only);
    # files this small need no second request. See sources/held.py and README, performance.
    preflight_fetch_bytes: int = 64 * 1024
    preflight_hold_bytes: int = 64 * 1024 * 1024  # per worker; one download holds at most half
    api_key: str = field(default="", repr=False)  # secrets stay out of reprs and tracebacks
    metrics_token: str = field(default="", repr=False)  # when set, /metrics needs "Bearer <METRICS_TOKEN>"
    cors_origins: tuple[str, ...] = ()  # empty = no CORS headers; "*" = any origin
    default_compression: str = "stored"
    demo: bool = False  # GET /demo, the shopping-cart example page
    log_level: str = "info"
    worker_connections: int = 10000  # requests one gunicorn worker serves at once; past it, 503 (middleware.py)
    trusted_proxy_hops: int = 0  # proxies appending to X-Forwarded-For in front of us; 0 = header ignored
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read and validate the settings; raises ConfigError naming the bad variable."""
        env = os.environ if env is None else env

        def get(name: str, convert: Callable[[str, str], T], default: T) -> T:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            return convert(name, raw)

        db_interface, db_cnxn = _database(env)
        fs = tuple(name.lower() for name in _csv(env.get("FS_INTERFACES", "s3,https")))
        unknown = [name for name in fs if name not in FS_INTERFACES]
        if unknown:
            raise ConfigError(
                f"FS_INTERFACES has unknown backends {', '.join(unknown)}; known: {', '.join(FS_INTERFACES)}"
            )
        if not fs:
            raise ConfigError("FS_INTERFACES must name at least one filestore backend")
        compression = env.get("DEFAULT_COMPRESSION", "stored").strip().lower() or "stored"
        if compression not in COMPRESSIONS:
            raise ConfigError(f"DEFAULT_COMPRESSION must be one of {', '.join(COMPRESSIONS)}")
        file_root = env.get("FILE_ROOT", "").strip()
        if "file" in fs and not file_root:
            raise ConfigError("FS_INTERFACES contains 'file' but FILE_ROOT is not set")
        if file_root and not os.path.isdir(file_root):
            raise ConfigError(f"FILE_ROOT {file_root!r} is not a directory")
        table_name = env.get("TABLE_NAME", "bundles").strip() or "bundles"
        # ASCII only: str.isalnum() is true for full-width letters or CJK, which DynamoDB refuses at every call.
        if not (table_name.isascii() and table_name.replace("_", "").replace("-", "").replace(".", "").isalnum()):
            raise ConfigError(f"TABLE_NAME may only hold letters, digits, '_', '-' and '.', not {table_name!r}")
        if db_interface in ("sqlite", "postgres") and not _sql_table_name(table_name):
            # Used unquoted in SQL: `-`/`.` were a syntax error in migrate, then "run migrate" forever.
            raise ConfigError(
                f"TABLE_NAME {table_name!r} is not usable with {db_interface}: use letters, digits and '_' only,"
                f" not starting with a digit, at most {SQL_TABLE_NAME_MAX} characters ('-' and '.' are for DynamoDB)"
            )
        log_level = env.get("LOG_LEVEL", "info").strip().lower() or "info"
        if log_level not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {log_level!r}")
        return cls(
            port=get("PORT", lambda n, r: _int(n, r, 1), 4040),
            db_interface=db_interface,
            db_cnxn=db_cnxn,
            sqlite_path=env.get("SQLITE_PATH", "").strip() or "zipstream.sqlite3",
            db_pool_size=get("DB_POOL_SIZE", lambda n, r: _int(n, r, 1), 10),
            db_timeout=get("DB_TIMEOUT", _float, 5.0),
            db_idle_timeout=get("DB_IDLE_TIMEOUT", _float, 60.0),
            fs_interfaces=fs,
            aws_region=env.get("AWS_REGION", "").strip() or "us-west-2",
            table_name=table_name,
            data_lifetime=get("DATA_LIFETIME", lambda n, r: _int(n, r, 1), 10080),
            http_allow_private=get("HTTP_ALLOW_PRIVATE", _bool, False),
            http_hosts=tuple(h.lower().lstrip(".") for h in _csv(env.get("HTTP_HOSTS", ""))),
            http_timeout=get("HTTP_TIMEOUT", _float, 30.0),
            preflight_timeout=get("PREFLIGHT_TIMEOUT", _float, 20.0),
            max_files=get("MAX_FILES", lambda n, r: _int(n, r, 1), 10000),
            max_body_bytes=get("MAX_BODY_BYTES", lambda n, r: _int(n, r, 1024), 16 * 1024 * 1024),
            max_name_length=get("MAX_NAME_LENGTH", lambda n, r: _int(n, r, 16), 1024),
            max_src_length=get("MAX_SRC_LENGTH", lambda n, r: _int(n, r, 16), 4096),
            max_bundle_bytes=get("MAX_BUNDLE_BYTES", _int, 0),
            s3_buckets=_csv(env.get("S3_BUCKETS", "")),
            s3_path_style=get("S3_PATH_STYLE", _bool, None),
            s3_max_pool=get("S3_MAX_POOL", lambda n, r: _int(n, r, 1), 0),
            s3_timeout=get("S3_TIMEOUT", _float, 30.0),
            file_root=os.path.realpath(file_root) if file_root else "",
            prefetch=get("PREFETCH", lambda n, r: _int(n, r, 0), 16),
            prefetch_bytes=get("PREFETCH_BYTES", lambda n, r: _int(n, r, 64 * 1024), 4 * 1024 * 1024),
            preflight_concurrency=get("PREFLIGHT_CONCURRENCY", lambda n, r: _int(n, r, 1), 64),
            preflight_fetch_bytes=get("PREFLIGHT_FETCH_BYTES", lambda n, r: _int(n, r, 0), 64 * 1024),
            preflight_hold_bytes=get("PREFLIGHT_HOLD_BYTES", lambda n, r: _int(n, r, 0), 64 * 1024 * 1024),
            api_key=env.get("API_KEY", "").strip(),
            metrics_token=env.get("METRICS_TOKEN", "").strip(),
            cors_origins=tuple(origin.rstrip("/") for origin in _csv(env.get("CORS_ORIGINS", ""))),
            default_compression=compression,
            demo=get("DEMO", _bool, False),
            log_level=log_level,
            worker_connections=get("WORKER_CONNECTIONS", lambda n, r: _int(n, r, 1), 10000),
            trusted_proxy_hops=get("TRUSTED_PROXY_HOPS", lambda n, r: _int(n, r, 0), 0),
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
        # boto3 reads the endpoint from the environment itself (see aws.py); named here so the log says it.
        endpoint = os.environ.get("AWS_ENDPOINT_URL_DYNAMODB") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
        return f"dynamodb region {self.aws_region} table {self.table_name} endpoint {endpoint}"

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed (tests use this)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Config(**values)
