"""CORS for browsers on other origins: off unless `CORS_ORIGINS` is set, and only on the API's open routes.

A page may create bundles and link to downloads from another origin; it has no business reading
or changing a bundle through `/:id/:secret`, so those routes never get CORS headers (a browser
then refuses to hand their answers to foreign scripts). Nor do `/metrics`, `/docs`, `/demo` and
static files: only the routes the README lists (`ROUTES`) answer other origins.
"""

from __future__ import annotations

from flask import Flask, Response, request

from .config import Config

ALLOW_METHODS = "GET, HEAD, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, Range, If-Range, If-None-Match"
EXPOSE_HEADERS = "Content-Disposition, Content-Length, Content-Range, Accept-Ranges, ETag, Retry-After"
MAX_AGE = "600"


# The endpoints of `POST /`, `POST /bundle`, `GET`/`HEAD /:id`, `/health-check` and `/openapi.json`:
# chosen by the route a request matched, so a path that matches none (a 404) gets no headers either.
ROUTES = frozenset({"api.create_bundle", "api.one_off_bundle", "api.download_bundle", "api.health_check",
                    "openapi.openapi_json"})


def allowed_origin(origins: tuple[str, ...], origin: str | None) -> str | None:
    """The Access-Control-Allow-Origin value for `origin`, or None when it is not allowed."""
    if not origins or not origin:
        return None
    if "*" in origins:
        return "*"
    return origin if origin.rstrip("/") in origins else None


def init_app(app: Flask, config: Config) -> None:
    """Add CORS headers to the responses of `ROUTES` when CORS_ORIGINS is set."""
    if not config.cors_origins:
        return
    origins = config.cors_origins

    @app.after_request
    def add_cors_headers(response: Response) -> Response:
        if request.endpoint not in ROUTES:
            return response
        if "*" not in origins:
            response.vary.add("Origin")
        allowed = allowed_origin(origins, request.headers.get("Origin"))
        if allowed is None:
            return response
        response.headers["Access-Control-Allow-Origin"] = allowed
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
            response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = MAX_AGE
        return response
