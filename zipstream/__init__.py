"""ZipStream: build and stream zip bundles of remote files.

Flask is imported by `create_app` and the web modules only: importing a module below the web layer
(`zipstream.sources`, `zipstream.archive`, `zipstream.repositories`) imports this package first, and
must not bring Flask with it (tests/test_layers.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import config as configuration
from .config import Config
from .errors import LimitExceeded, SchemaNotReady, ZipStreamError

if TYPE_CHECKING:
    from flask import Flask, Response

__version__ = "0.1.0"

log = logging.getLogger(__name__)


def create_app(config: Config | Mapping[str, str] | None = None) -> Flask:
    """Assemble the app: read config, build the repository and sources, register blueprints."""
    from flask import Flask

    from . import api, cors, demo, docs, logs, metrics, middleware, openapi, repositories, sources

    if not isinstance(config, Config):
        config = Config.from_env(config)
    logs.configure(config.log_level)
    app = Flask(__name__)
    configuration.init_app(app, config)
    app.config.update(JSON_SORT_KEYS=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.url_map.strict_slashes = False
    # "/bundle//" should be a JSON 404, not Werkzeug's HTML redirect to "/bundle/".
    app.url_map.merge_slashes = False
    repositories.init_app(app, config)
    sources.init_app(app, config)
    app.register_blueprint(api.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(demo.bp)
    # Outermost: the client's address, the request log (the real end of a streamed body, and errors no
    # handler caught) and the per-worker request limit (middleware.py).
    app.wsgi_app = middleware.wrap(app.wsgi_app, config)  # type: ignore[method-assign, assignment]
    cors.init_app(app, config)
    _register_errors(app)
    return app


def _error_response(error: ZipStreamError) -> Response:
    from flask import jsonify

    response = jsonify(error.to_dict())
    response.status_code = error.status
    response.headers.update(error.headers())
    return response


def _register_errors(app: Flask) -> None:
    from flask import current_app
    from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

    @app.errorhandler(ZipStreamError)
    def zipstream_error(error: ZipStreamError) -> Response:
        if isinstance(error, SchemaNotReady):
            from .repositories import schema_gone

            schema_gone(error)
        return _error_response(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        if isinstance(error, RequestEntityTooLarge):
            limit = current_app.config["MAX_CONTENT_LENGTH"]
            return _error_response(LimitExceeded(
                f"the request body is larger than {limit} bytes (MAX_BODY_BYTES)", limit="MAX_BODY_BYTES"))
        code = (error.name or "error").lower().replace(" ", "_")
        wrapped = ZipStreamError(error.description or error.name or "error")
        wrapped.status, wrapped.code = error.code or 500, code
        response = _error_response(wrapped)
        if error.code == 405 and error.response is None:
            allowed: Any = getattr(error, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        log.exception("unexpected error")  # the trace goes to the log, never to the client
        wrapped = ZipStreamError("internal error; it has been logged")
        return _error_response(wrapped)
