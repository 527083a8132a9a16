"""The `zipstream` command: serve, migrate, purge-expired, create-table, bundle create/show/delete."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime

from .config import API_KEY, HOST, ZIPSTREAM_URL, Config, ConfigError
from .errors import ZipStreamError


class CommandError(Exception):
    """A command failed; `main` prints the message as one line (no traceback) and exits 1."""


def _config() -> Config:
    try:
        return Config.from_env()
    except ConfigError as error:
        sys.exit(f"zipstream: configuration error: {error}")


def serve(args: argparse.Namespace) -> int:
    """Run gunicorn with the project's settings (gevent worker, PORT, WEB_CONCURRENCY)."""
    config = _config()  # fail here, once, with a clear message, not in every worker
    # The gunicorn of this interpreter's environment, whether or not its bin/ is on PATH.
    argv = [sys.executable, "-m", "gunicorn", "--config", "python:zipstream.gunicorn_conf",
            "--bind", f"{args.host}:{config.port}", "zipstream.wsgi:app"]
    os.execvp(argv[0], argv)  # noqa: S606 - replaces this process with gunicorn on purpose


def migrate(args: argparse.Namespace) -> int:
    """Create or update the database schema (SQL backends) or table (DynamoDB); safe to run concurrently."""
    from .repositories import SchemaError, build_repository

    config = _config()
    print(f"zipstream: database: {config.describe_database()}", flush=True)
    repository = build_repository(config)
    try:
        repository.migrate()
    except (SchemaError, ZipStreamError) as error:
        # The database's own words are in the message (e.g. a store without the TTL API says so).
        raise CommandError(f"{args.command} failed: {getattr(error, 'message', error)}") from None
    finally:
        repository.close()
    print(f"zipstream: {config.db_interface} schema for table {config.table_name!r} is up to date")
    return 0


def purge_expired(_args: argparse.Namespace) -> int:
    """Delete expired bundles; safe to run from cron or Heroku Scheduler."""
    from .repositories import build_repository

    repository = build_repository(_config())
    try:
        removed = repository.purge_expired(int(time.time()))
    except ZipStreamError as error:
        raise CommandError(f"purge-expired failed: {error.message}") from None
    finally:
        repository.close()
    print(f"zipstream: removed {removed} expired bundle(s)")
    return 0


def _call(args: argparse.Namespace, method: str, base: str, path: str, expected: int,
          body: dict[str, object] | None = None) -> dict[str, object] | None:
    """One request to a running service; its JSON answer, or None after printing why it failed."""
    import requests

    headers = {"Accept": "application/json", "Connection": "close"}  # one request, then exit
    api_key = getattr(args, "api_key", None) or API_KEY.read(os.environ)
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        response = requests.request(method, f"{base}{path}", json=body, headers=headers, timeout=args.timeout)
    except requests.RequestException as error:
        print(f"zipstream: cannot reach {base}: {error}", file=sys.stderr)
        return None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code == expected and isinstance(answer, dict) and "id" in answer:
        return answer
    if response.status_code == expected:  # a 200 page from something that is not ZipStream (a proxy, a default site)
        print(f"zipstream: {base} answered {response.status_code} but not with a bundle's JSON;"
              " is --url a ZipStream service?", file=sys.stderr)
        return None
    problem = answer.get("error", {}) if isinstance(answer, dict) else {}
    problem = problem if isinstance(problem, dict) else {}
    message = problem.get("message") or response.text[:500] or response.reason
    print(f"zipstream: {base} answered {response.status_code}: {message}", file=sys.stderr)
    for source in problem.get("sources") or []:
        print(f"  {source.get('src')}: {source.get('reason')}", file=sys.stderr)
    for field, errors in _flatten(problem.get("fields") or {}):
        print(f"  {field}: {errors}", file=sys.stderr)
    return None


def _flatten(fields: object, prefix: str = "") -> list[tuple[str, str]]:
    """marshmallow's nested field errors as ("files.0.src", "Not a valid URL.") pairs."""
    if isinstance(fields, dict):
        pairs: list[tuple[str, str]] = []
        for key, value in fields.items():
            pairs += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return pairs
    if isinstance(fields, list) and all(isinstance(item, str) for item in fields):
        return [(prefix, " ".join(fields))]
    return [(prefix, str(fields))]


def _bundle_target(args: argparse.Namespace) -> tuple[str, str]:
    """(service base URL, `/<id>/<secret>`) from an id and a secret, or from a whole manage link."""
    given = args.bundle.rstrip("/")
    if "://" in given and args.secret is None and given.count("/") >= 4:
        base, bundle_id, secret = given.rsplit("/", 2)
        return base, f"/{bundle_id}/{secret}"
    if args.secret is None:
        sys.exit("zipstream: give the bundle's secret too (or its manage link: <url>/<id>/<secret>)")
    return args.url.rstrip("/"), f"/{given.rsplit('/', 1)[-1]}/{args.secret}"


def bundle_create(args: argparse.Namespace) -> int:
    """Create a stored bundle through a running service's API; print its download link and secret."""
    body: dict[str, object] = {"files": [{"src": src} for src in args.srcs]}
    if args.filename:
        body["filename"] = args.filename
    answer = _call(args, "POST", args.url.rstrip("/"), "/", 201, body)
    if answer is None or "id" not in answer:
        return 1
    if not args.no_check and not _sources_readable(args, str(answer["id"]), str(answer["secret"])):
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    base = args.url.rstrip("/")
    expires = datetime.fromtimestamp(int(str(answer["expirationDate"])), UTC).isoformat()
    print(f"download: {base}/{answer['id']}")
    print(f"secret:   {answer['secret']}")
    print(f"manage:   {base}/{answer['id']}/{answer['secret']}")
    print(f"expires:  {expires}")
    return 0


def _sources_readable(args: argparse.Namespace, bundle_id: str, secret: str) -> bool:
    """Whether the new bundle downloads: the service's pre-flight reads every source (one byte asked for).

    The API stores a bundle without reading its files; a link whose files are missing would only fail
    when someone downloads it. If it would, the bundle is deleted again and the reasons are printed.
    """
    import requests

    base = args.url.rstrip("/")
    headers = {"Range": "bytes=0-0", "Connection": "close"}
    try:
        with requests.get(f"{base}/{bundle_id}", headers=headers, stream=True, timeout=args.timeout) as response:
            if response.status_code in (200, 206):
                return True
            try:
                problem = response.json().get("error", {})
            except ValueError:
                problem = {}
    except requests.RequestException as error:
        print(f"zipstream: cannot check the bundle's files at {base}: {error}", file=sys.stderr)
        return False
    message = problem.get("message") or response.reason
    print(f"zipstream: bundle not created, {base} cannot zip it ({response.status_code}): {message}",
          file=sys.stderr)
    for source in problem.get("sources") or []:
        print(f"  {source.get('src')}: {source.get('reason')}", file=sys.stderr)
    _call(args, "DELETE", base, f"/{bundle_id}/{secret}", 200)
    return False


def bundle_show(args: argparse.Namespace) -> int:
    """Print a stored bundle (its files, filename, expiry) as JSON."""
    answer = _call(args, "GET", *_bundle_target(args), 200)
    if answer is None:
        return 1
    print(json.dumps(answer, indent=2, ensure_ascii=False))
    return 0


def bundle_delete(args: argparse.Namespace) -> int:
    """Delete a stored bundle; its download link stops working at once."""
    base, path = _bundle_target(args)
    if _call(args, "DELETE", base, path, 200) is None:
        return 1
    print(f"zipstream: deleted bundle {path.split('/')[1]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zipstream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help=serve.__doc__)
    # Loopback unless asked: with HTTP_ALLOW_PRIVATE=true a LAN-wide listener fetches intranet URLs for
    # anyone who reaches it. Platforms bind through the Procfile's gunicorn line (0.0.0.0:$PORT) instead.
    serve_parser.add_argument("--host", default=HOST.read(os.environ),
                              help="address to bind (default $HOST, else 127.0.0.1)")
    serve_parser.set_defaults(func=serve)
    commands.add_parser("migrate", help=migrate.__doc__).set_defaults(func=migrate)
    commands.add_parser("create-table", help="Create the DynamoDB table with its TTL (same as migrate)").set_defaults(
        func=migrate
    )
    commands.add_parser("purge-expired", help=purge_expired.__doc__).set_defaults(func=purge_expired)
    bundle_parser = commands.add_parser("bundle", help="Create, show and delete bundles on a running service")
    bundle_commands = bundle_parser.add_subparsers(dest="bundle_command", required=True)
    create = bundle_commands.add_parser("create", help=bundle_create.__doc__)
    create.add_argument("srcs", nargs="+", metavar="SRC", help="file references (s3://, https://, file://)")
    create.add_argument("--filename", help="name of the downloaded zip (default bundle.zip)")
    create.add_argument("--api-key", help="sent as a Bearer token (default $API_KEY)")
    create.add_argument("--json", action="store_true", help="print the API's JSON answer instead")
    create.add_argument("--no-check", action="store_true",
                        help="keep the bundle even if its files cannot be read now (default: check, and "
                             "delete it again with a non-zero exit if they cannot)")
    create.set_defaults(func=bundle_create)
    for name, func in (("show", bundle_show), ("delete", bundle_delete)):
        command = bundle_commands.add_parser(name, help=func.__doc__)
        command.add_argument("bundle", metavar="ID|LINK",
                             help="the bundle's id, or its manage link <url>/<id>/<secret>")
        command.add_argument("secret", nargs="?", help="the bundle's secret (not needed with a manage link)")
        command.set_defaults(func=func)
    for command in bundle_commands.choices.values():
        command.add_argument("--url", default=ZIPSTREAM_URL.read(os.environ),
                             help="the service's base URL (default $ZIPSTREAM_URL or http://localhost:4040)")
        command.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the service")
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except CommandError as error:
        print(f"zipstream: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("zipstream: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - one line for an operator, never a traceback
        text = str(error).strip().splitlines()
        print(f"zipstream: {args.command} failed: {type(error).__name__}: {text[0] if text else ''}",
              file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
