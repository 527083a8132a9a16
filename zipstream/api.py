"""The HTTP API (the Node ZipStream's routes).

A download: validate -> load the bundle -> prepare (download.py) -> ZipResponse (response.py).
"""

from __future__ import annotations

import hmac
import io
import logging
import re
import time
import uuid
from typing import Any

import gevent
from flask import Blueprint, Response, current_app, jsonify, request
from gunicorn.http.errors import ParseException

from . import counters, disconnect
from .auth import bearer_matches
from .config import Config, get_config
from .connections import close_after_response
from .deadline import Deadline
from .download import PreparedZip, prepare
from .errors import (
    BadRequest,
    Forbidden,
    Gone,
    LimitExceeded,
    NotFound,
    RequestTimeout,
    SchemaNotReady,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    ZipStreamError,
)
from .models import Bundle, FileRef
from .plan import check_count
from .repositories import BundleRepository, confirm_ready, get_cache, get_repository, schema_gone
from .response import DEFAULT_FILENAME, ZipResponse
from .schemas import AppendFilesSchema, CreateBundleSchema, OneOffBundleSchema, form_to_body, load
from .sources import get_sources

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__)


def _config() -> Config:
    return get_config()


def _repository() -> BundleRepository:
    """The repository, once ready: until then every route that needs it answers 503 naming the fix."""
    return get_repository()


@bp.before_app_request
def _read_body() -> None:
    """Read a request's body now, whole, within BODY_TIMEOUT; refuse it past MAX_BODY_BYTES.

    - A body that stops arriving (one byte now and then: "slow POST") would hold its connection and
      greenlet for as long as the client likes: past BODY_TIMEOUT seconds (counted from here, right after
      the head) it is answered 408 and its connection closed (connections.py), like nginx's
      `client_body_timeout` and Node's `requestTimeout`. HEADER_TIMEOUT covers the head before it
      (gunicorn_worker.py).
    - A body sent without Content-Length (chunked): Werkzeug stops reading such a body at
      MAX_CONTENT_LENGTH without a word, so a long form post would be parsed from its first part and
      stored as a smaller bundle; here it is counted.
    A Content-Length past MAX_BODY_BYTES is left to Werkzeug (413 without reading it).
    """
    if request.method not in ("POST", "PUT", "PATCH", "DELETE"):
        return
    environ = request.environ
    length = request.content_length
    chunked = length is None and (bool(environ.get("wsgi.input_terminated"))
                                  or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", ""))
    limit = _config().max_body_bytes
    if not chunked and (not length or length > limit):
        return
    seconds = _config().body_timeout
    timer = gevent.Timeout(seconds)
    try:
        with timer:
            data = environ["wsgi.input"].read(limit + 1)
    except gevent.Timeout as error:
        if error is not timer:
            raise
        close_after_response(environ)
        raise RequestTimeout(f"the request body did not arrive within {seconds} s (BODY_TIMEOUT)",
                             limit="BODY_TIMEOUT") from None
    except (ParseException, OSError) as error:
        # gunicorn's chunked reader: a bad chunk size or terminator, or a body cut short (NoMoreData
        # is an OSError); gunicorn does not reuse the connection after it (RFC 9112 §7.1).
        raise BadRequest(f"the request body is malformed or cut short ({type(error).__name__}); "
                         "send Transfer-Encoding: chunked as RFC 9112 §7.1 frames it, or all of "
                         "Content-Length") from None
    if len(data) > limit:
        raise LimitExceeded(
            f"the request body is larger than {limit} bytes (MAX_BODY_BYTES)", limit="MAX_BODY_BYTES"
        )
    if not chunked and len(data) < (length or 0):
        # A WSGI server hands a cut Content-Length body over short instead of raising.
        raise BadRequest(f"the request body ended after {len(data)} of its {length} bytes (Content-Length)")
    environ["wsgi.input"] = io.BytesIO(data)
    environ["CONTENT_LENGTH"] = str(len(data))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    environ["wsgi.input_terminated"] = False


def _body() -> Any:
    """The request body as a dict, from JSON or from a browser form."""
    mimetype = request.mimetype
    if mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return form_to_body(request.form)
    if mimetype == "application/json" or mimetype.endswith("+json") or not mimetype:
        data = request.get_data(cache=False)
        if not data.strip():
            raise BadRequest("the request body is empty; send a JSON object")
        try:
            return current_app.json.loads(data)
        except ValueError as error:
            raise BadRequest(f"the request body is not valid JSON: {error}") from None
        except RecursionError:
            raise BadRequest("the request body is nested too deeply") from None
    raise UnsupportedMediaType(
        f"send application/json, application/x-www-form-urlencoded or multipart/form-data, not {mimetype}"
    )


def _check_api_key() -> None:
    key = _config().api_key
    if not key:
        return
    if not bearer_matches(key):
        raise Unauthorized("creating bundles needs 'Authorization: Bearer <API_KEY>'")


def _check_sources(files: list[FileRef]) -> None:
    """Refuse srcs no backend will read (bucket allowlist, FILE_ROOT) before storing anything."""
    sources = get_sources()
    for ref in files:
        sources.check(ref.src)


# RFC 9562 §4: a UUID's string form is 8-4-4-4-12 hex digits, case-insensitive on input. The other
# spellings `uuid.UUID` reads (no hyphens, braces, urn:uuid:) name no bundle here: one spelling per id.
_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _load_bundle(bundle_id: str, secret: str | None = None, expired_ok: bool = False) -> Bundle:
    """The bundle: 404 unknown, 403 wrong secret (when one is given), 410 expired unless `expired_ok`."""
    if not _ID.fullmatch(bundle_id):
        raise NotFound(f"no bundle with id {bundle_id}")
    bundle_id = bundle_id.lower()
    bundle = _repository().get(bundle_id)
    if bundle is None:
        raise NotFound(f"no bundle with id {bundle_id}")
    if secret is not None and not hmac.compare_digest(secret.encode(), bundle.secret.encode()):
        raise Forbidden("wrong secret for this bundle")
    if bundle.expired() and not expired_ok:
        raise Gone(f"bundle {bundle_id} expired at {bundle.expiration_date} (unix time)")
    return bundle


def _prepare(files: tuple[FileRef, ...] | list[FileRef], filename: str, compression: str,
             created_at: int) -> PreparedZip:
    # A bundle stored before MAX_FILES was lowered: refused before any source is asked or named.
    check_count(len(files), _config().max_files)
    # One deadline for all of pre-flight (PREFLIGHT_TIMEOUT), cancelled if the client hangs up meanwhile.
    deadline = Deadline(_config().preflight_timeout)
    with counters.PREFLIGHT_SECONDS.time(), disconnect.watching(request.environ, deadline):
        return prepare(files, filename, compression, created_at, get_sources(), get_cache(), _config(),
                       ZipResponse.sends_whole_zip(request), deadline)


@bp.post("/bundle", strict_slashes=False)
def one_off_bundle() -> Response:
    """Zip the posted files now and stream the zip back."""
    _check_api_key()
    config = _config()
    data = load(OneOffBundleSchema(config=config), _body(), config)
    files = data["files"]
    _check_sources(files)
    prepared = _prepare(files, data.get("filename") or DEFAULT_FILENAME,
                        data.get("compression") or config.default_compression, int(time.time()))
    return ZipResponse(prepared, request, kind="one_off")


@bp.post("/")
def create_bundle() -> tuple[Response, int]:
    """Store a bundle; answer with its id, secret and expiration date."""
    _check_api_key()
    config = _config()
    data = load(CreateBundleSchema(config=config), _body(), config)
    files = tuple(data["files"])
    _check_sources(list(files))
    bundle = Bundle.new(
        filename=data.get("filename") or DEFAULT_FILENAME,
        files=files,
        lifetime_minutes=config.data_lifetime,
        compression=data.get("compression") or config.default_compression,
    )
    _repository().create(bundle)
    return jsonify(bundle.to_json()), 201


# uuid: so `/bundle`, `/health-check` and friends are not also "a download", and OPTIONS on them
# does not advertise GET.
@bp.route("/<uuid:bundle_id>", methods=["GET", "HEAD"], strict_slashes=False)
def download_bundle(bundle_id: uuid.UUID) -> Response:
    """Stream the bundle's zip (resumable: exact length, ETag, Range)."""
    bundle = _load_bundle(str(bundle_id))
    prepared = _prepare(bundle.files, bundle.filename, bundle.compression, bundle.created_at)
    return ZipResponse(prepared, request)


@bp.get("/<bundle_id>/<secret>", strict_slashes=False)
def get_bundle(bundle_id: str, secret: str) -> Response:
    """The bundle's JSON."""
    return jsonify(_load_bundle(bundle_id, secret).to_json())


@bp.put("/<bundle_id>/<secret>", strict_slashes=False)
def append_files(bundle_id: str, secret: str) -> Response:
    """Append files to the bundle; answer with the updated bundle."""
    config = _config()
    bundle = _load_bundle(bundle_id, secret)
    data = load(AppendFilesSchema(config=config), _body(), config)
    files = data["files"]
    _check_sources(files)
    updated = _repository().append(
        bundle.id, files, config.max_files,
        filename=data.get("filename"), compression=data.get("compression"),
    )
    if updated is None:
        raise NotFound(f"no bundle with id {bundle_id}")
    return jsonify(updated.to_json())


@bp.delete("/<bundle_id>/<secret>", strict_slashes=False)
def delete_bundle(bundle_id: str, secret: str) -> Response:
    """Delete the bundle, expired or not (its owner may clean up after it); answer with what was deleted."""
    bundle = _load_bundle(bundle_id, secret, expired_ok=True)
    deleted = _repository().delete(bundle.id)
    if deleted is None:
        raise NotFound(f"no bundle with id {bundle_id}")
    return jsonify(deleted.to_json())


@bp.get("/health-check", strict_slashes=False)
def health_check() -> tuple[Response, int]:
    """200 when the database answers and its schema is current; 503 otherwise (a readiness probe).

    The schema is looked at on every call (every table and column the code uses: one cheap read),
    so a table dropped after start-up makes it 503 too. The 503's message names the fix:
    `zipstream migrate` for a missing, old or incomplete schema.
    """
    unavailable: ServiceUnavailable | None = None
    try:
        confirm_ready()
    except ServiceUnavailable as error:  # its message already says what is unavailable, and why
        if isinstance(error, SchemaNotReady):
            schema_gone(error)
        unavailable = error
    except ZipStreamError as error:
        unavailable = ServiceUnavailable(f"database unavailable: {error.message}")
    if unavailable is not None:
        response = jsonify({"status": "unavailable", **unavailable.to_dict()})
        response.headers.update(unavailable.headers())
        return response, 503
    return jsonify({"status": "ok", "database": _config().db_interface}), 200
