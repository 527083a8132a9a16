"""The `zipstream` command: serve, migrate, purge-expired, create-table, bundle."""

from __future__ import annotations

import argparse
import os
import sys
import time

from .config import Config, ConfigError


def _config() -> Config:
    try:
        return Config.from_env()
    except ConfigError as error:
        sys.exit(f"zipstream: configuration error: {error}")


def serve(args: argparse.Namespace) -> int:
    """Run gunicorn with the project's settings (gevent worker, PORT, WEB_CONCURRENCY)."""
    config = _config()  # fail here, once, with a clear message, not in every worker
    # The gunicorn of this interpreter's environment, whether or not its bin/ is on PATH.
    argv = [sys.executable, "-m", "gunicorn", "--config", "python:zipstream.gunicorn_conf", "--bind", f"{args.host}:{config.port}",
            "zipstream.wsgi:app"]
    os.execvp(argv[0], argv)  # noqa: S606 - replaces this process with gunicorn on purpose


def migrate(_args: argparse.Namespace) -> int:
    """Create or update the database schema (SQL backends) or table (DynamoDB)."""
    from .repositories import build_repository

    config = _config()
    repository = build_repository(config)
    repository.migrate()
    print(f"zipstream: {config.db_interface} schema for table {config.table_name!r} is up to date")
    return 0


def purge_expired(_args: argparse.Namespace) -> int:
    """Delete expired bundles; safe to run from cron or Heroku Scheduler."""
    from .repositories import build_repository

    repository = build_repository(_config())
    removed = repository.purge_expired(int(time.time()))
    print(f"zipstream: removed {removed} expired bundle(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zipstream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help=serve.__doc__)
    serve_parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")  # noqa: S104
    serve_parser.set_defaults(func=serve)
    commands.add_parser("migrate", help=migrate.__doc__).set_defaults(func=migrate)
    commands.add_parser("create-table", help="Create the DynamoDB table with its TTL (same as migrate)").set_defaults(
        func=migrate
    )
    commands.add_parser("purge-expired", help=purge_expired.__doc__).set_defaults(func=purge_expired)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
