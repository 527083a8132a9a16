"""The OpenAPI 3 document, generated from the marshmallow schemas (`GET /openapi.json`)."""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify

from . import __version__
from .schemas import AppendFilesSchema, BundleSchema, CreateBundleSchema, ErrorSchema, OneOffBundleSchema

bp = Blueprint("openapi", __name__)

_ZIP = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
_SECRET = {"name": "secret", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Malformed body", 401: "Missing or wrong API key", 403: "Wrong secret or source refused",
            404: "No such bundle", 410: "Bundle expired", 413: "A limit was exceeded",
            412: "If-Match names another version of the zip",
            415: "Unsupported content type", 416: "Range not satisfiable",
            428: "A resume (Range, no If-Range) of a zip version that never sent those bytes: start again",
            422: "Invalid fields, or a source that does not exist", 502: "An upstream source failed",
            503: "Database unavailable, or its schema not migrated (`zipstream migrate`)",
            504: "A source did not answer within HTTP_TIMEOUT or PREFLIGHT_TIMEOUT"}
    return {str(code): {"description": text[code], "content": {"application/json": {"schema": "Error"}}}
            for code in codes}


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {
        "application/json": {"schema": schema},
        "application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": {
            "files": {"type": "string", "description": "JSON list of {src, dst}"},
            "src": {"type": "array", "items": {"type": "string"}},
            "dst": {"type": "array", "items": {"type": "string"}},
            "filename": {"type": "string"},
        }}},
    }}


def build_spec() -> dict[str, Any]:
    """The API description as a dict. Every status a route can answer is listed (tests/test_openapi.py
    and the fuzzing run compare what they see against it)."""
    spec = APISpec(
        title="ZipStream", version=__version__, openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Build and stream zip bundles of remote files (S3, HTTP)."},
    )
    spec.components.schema("Error", schema=ErrorSchema)
    spec.components.schema("Bundle", schema=BundleSchema)
    spec.components.schema("CreateBundle", schema=CreateBundleSchema)
    spec.components.schema("OneOffBundle", schema=OneOffBundleSchema)
    spec.components.schema("AppendFiles", schema=AppendFilesSchema)
    download = {
        "summary": "Download the bundle's zip",
        "parameters": [_ID],
        "responses": {"200": {"description": "The zip", "content": _ZIP},
                      "206": {"description": "A byte range of the zip", "content": _ZIP},
                      "304": {"description": "Not modified"},
                      **_errors(403, 404, 410, 412, 413, 416, 422, 428, 502, 503, 504)},
    }
    spec.path("/bundle", operations={"post": {
        "summary": "Zip the posted files and stream the zip back", "requestBody": _body("OneOffBundle"),
        "responses": {"200": {"description": "The zip", "content": _ZIP},
                      **_errors(400, 401, 403, 412, 413, 415, 416, 422, 428, 502, 503, 504)},
    }})
    spec.path("/", operations={"post": {
        "summary": "Create a bundle", "requestBody": _body("CreateBundle"),
        "responses": {"201": {"description": "The new bundle",
                              "content": {"application/json": {"schema": "Bundle"}}},
                      **_errors(400, 401, 403, 413, 415, 422, 503)},
    }})
    spec.path("/{id}", operations={"get": download, "head": {**download, "summary": "Headers of the download"}})
    bundle_json = {"content": {"application/json": {"schema": "Bundle"}}}
    spec.path("/{id}/{secret}", operations={
        "get": {"summary": "The bundle's JSON", "parameters": [_ID, _SECRET],
                "responses": {"200": {"description": "The bundle", **bundle_json}, **_errors(403, 404, 410, 503)}},
        "put": {"summary": "Append files", "parameters": [_ID, _SECRET],
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": "AppendFiles"}}},
                "responses": {"200": {"description": "The updated bundle", **bundle_json},
                              **_errors(400, 403, 404, 410, 413, 415, 422, 503)}},
        "delete": {"summary": "Delete the bundle, expired or not", "parameters": [_ID, _SECRET],
                   "responses": {"200": {"description": "What was deleted", **bundle_json},
                                 **_errors(403, 404, 503)}},
    })
    spec.path("/health-check", operations={"get": {
        "summary": "Service and database health",
        "responses": {"200": {"description": "Healthy"}, "503": {"description": "Database unavailable"}},
    }})
    result: dict[str, Any] = spec.to_dict()
    return result


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI 3 document."""
    return jsonify(build_spec())
