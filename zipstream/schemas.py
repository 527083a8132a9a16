"""marshmallow schemas: every request body is loaded through one of these, every response dumped."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates,
    validates_schema,
)

from .config import COMPRESSIONS, Config
from .errors import BadRequest, InvalidInput, LimitExceeded
from .models import FileRef
from .names import download_filename

SCHEMES = {"s3": ("s3",), "https": ("http", "https"), "file": ("file",)}


def _check_text(value: str) -> None:
    """Refuse what no database or zip can hold: lone surrogates (not UTF-8) and NUL."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("Contains a lone surrogate: not valid UTF-8 text.") from None
    if "\x00" in value:
        raise ValidationError("Contains a NUL character.")


class FileRefSchema(Schema):
    """`{"src": ..., "dst"?: ..., "crc32"?: ...}`."""

    class Meta:
        unknown = RAISE

    src = fields.String(required=True, metadata={
        "description": "Location of the file: s3://bucket/key, https://host/path or file:///path.",
        "example": "s3://my-aws-bucket-1/path/to/foo.jpg",
    })
    dst = fields.String(allow_none=True, metadata={
        "description": "Path of the file inside the zip; defaults to the path of src. Made safe at download "
                       "time; one that leaves nothing (\"\", \"..\", \"/\") means the default.",
        "example": "foo.jpg",
    })
    crc32 = fields.Integer(
        # strict: "12" or 1.5 is a mistake, and a wrong CRC-32 makes every download of the file fail.
        allow_none=True, strict=True, validate=validate.Range(0, 0xFFFFFFFF),
        metadata={"description": "Optional CRC-32 of the file: lets a resumed download skip re-reading it."},
    )

    def __init__(self, *args: Any, config: Config | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = config or Config()

    @validates("src")
    def _check_src(self, value: str, **_: Any) -> None:
        _check_text(value)
        if len(value) > self.config.max_src_length:
            raise ValidationError(
                f"Longer than the maximum of {self.config.max_src_length} characters (MAX_SRC_LENGTH).")
        if any(ord(char) < 32 or ord(char) == 127 for char in value):
            raise ValidationError("Contains control characters.")
        try:
            scheme = urlsplit(value).scheme.lower()
        except ValueError as error:  # "Invalid IPv6 URL": an unbalanced "[" or "]" in the host
            raise ValidationError(f"Not a valid URL: {error}.") from None
        enabled = [s for backend in self.config.fs_interfaces for s in SCHEMES.get(backend, ())]
        if scheme not in enabled:
            raise ValidationError(
                f"Scheme {scheme + '://' if scheme else '(none)'} is not enabled; "
                f"FS_INTERFACES allows {', '.join(s + '://' for s in enabled)}."
            )
        if scheme == "s3":
            from .sources.s3 import src_problem  # botocore is loaded only where S3 is enabled

            problem = src_problem(value, self.config.s3_buckets)
            if problem is not None:
                raise ValidationError(f"Not a readable s3:// src: {problem}.")

    @validates("dst")
    def _check_dst(self, value: str | None, **_: Any) -> None:
        if value is None:
            return
        _check_text(value)
        if len(value) > self.config.max_name_length:
            raise ValidationError(
                f"Longer than the maximum of {self.config.max_name_length} characters (MAX_NAME_LENGTH).")
        # Nothing else is refused: the name is made safe at download time (names.safe_name), and one
        # that leaves nothing falls back to the src's default name, so a bad title can't fail a cart.

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> FileRef:
        # Stored as sent ("" included): what a client stored is what it reads back.
        return FileRef(src=data["src"], dst=data.get("dst"), crc32=data.get("crc32"))


class _BundleBodySchema(Schema):
    class Meta:
        unknown = RAISE

    filename = fields.String(metadata={
        "description": "File name of the zip, stored as sent. Downloads carry it made safe (controls and bidi "
                       "characters dropped, '/' and '\\' as '_', '.zip' appended unless present).",
        "example": "my-awesome-bundle.zip",
    })
    compression = fields.String(
        validate=validate.OneOf(COMPRESSIONS),
        metadata={"description": "stored (default: exact length, resumable) or deflate."},
    )

    def __init__(self, *args: Any, config: Config | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = config or Config()
        self.fields["files"].inner.schema.config = self.config  # type: ignore[attr-defined]

    @validates("filename")
    def _check_filename(self, value: str, **_: Any) -> None:
        _check_text(value)
        if not value.strip():
            raise ValidationError("Must not be empty.")
        if len(value) > 255:
            raise ValidationError("Longer than the maximum of 255 characters.")
        # Stored as sent; made safe when a download names the zip (names.download_filename).
        if not download_filename(value):
            raise ValidationError("Leaves no usable file name once made safe (only dots, spaces, "
                                  "control or bidi characters).")


class CreateBundleSchema(_BundleBodySchema):
    """Body of `POST /`: a bundle to store (files optional)."""

    files = fields.List(fields.Nested(FileRefSchema), load_default=list)


class OneOffBundleSchema(_BundleBodySchema):
    """Body of `POST /bundle`: files to zip right now."""

    files = fields.List(fields.Nested(FileRefSchema), required=True, validate=validate.Length(min=1))


class AppendFilesSchema(_BundleBodySchema):
    """Body of `PUT /:id/:secret`: files to append and/or a new `filename` / `compression`.

    The Node service's body is `{"files": [...]}`; `files` may be left out to only rename the zip or
    change its compression. A body that changes nothing is refused (422), as is an empty `files` list.
    """

    files = fields.List(fields.Nested(FileRefSchema), load_default=list, validate=validate.Length(min=1))

    @validates_schema(pass_original=True)
    def _check_changes_something(self, _data: Mapping[str, Any], original: Any, **_: Any) -> None:
        # The original body: `files` has a load_default, so the loaded data always holds it.
        if isinstance(original, Mapping) and not ({"files", "filename", "compression"} & set(original)):
            raise ValidationError("Give files to append, a filename or a compression.", field_name="files")


class BundleSchema(Schema):
    """A stored bundle as the API returns it (the Node service's shape plus `compression`)."""

    class Meta:
        unknown = EXCLUDE

    id = fields.String(metadata={"format": "uuid"})
    secret = fields.String(metadata={"format": "uuid"})
    filename = fields.String()
    files = fields.List(fields.Nested(FileRefSchema))
    expirationDate = fields.Integer(metadata={"description": "Unix time (seconds) after which the bundle is gone."})
    compression = fields.String()


class ErrorSchema(Schema):
    """`{"error": {"code", "message", "fields"?, "sources"?}}`."""

    error = fields.Dict()


def form_to_body(form: Mapping[str, Any]) -> dict[str, Any]:
    """A browser form post as a JSON body: a `files` field holding JSON, or repeated `src`/`dst` fields."""
    getlist = getattr(form, "getlist", None)
    body: dict[str, Any] = {}
    for key in form:
        if key not in ("files", "src", "dst", "filename", "compression"):
            body[key] = form[key]  # unknown fields are reported by the schema
    for key in ("filename", "compression"):
        if form.get(key):
            body[key] = form[key]
    if form.get("files") and getlist is not None and getlist("src"):
        raise InvalidInput("send either a 'files' field or 'src' fields, not both",
                           fields={"files": ["Given together with 'src' fields."]})
    if form.get("files"):
        try:
            body["files"] = json.loads(form["files"])
        except (ValueError, RecursionError):
            raise BadRequest("the 'files' form field must hold a JSON list of {src, dst} objects") from None
    elif getlist is not None and getlist("src"):
        srcs, dsts = getlist("src"), getlist("dst")
        if dsts and len(dsts) != len(srcs):
            raise InvalidInput("every src needs its dst field (it may be empty)",
                               fields={"dst": ["Give one dst per src, or none at all."]})
        body["files"] = [
            {"src": src, **({"dst": dsts[i]} if dsts and dsts[i] else {})} for i, src in enumerate(srcs)
        ]
    return body


def load(schema: Schema, body: Any, config: Config) -> dict[str, Any]:
    """Validate `body` with `schema`: 400 if it is not an object, 422 with per-field messages."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    files = body.get("files")
    if isinstance(files, list) and len(files) > config.max_files:
        raise LimitExceeded(
            f"at most {config.max_files} files are allowed per bundle (MAX_FILES); got {len(files)}",
            limit="MAX_FILES",
        )
    try:
        result: dict[str, Any] = schema.load(body)
    except ValidationError as error:
        raise InvalidInput("the request body is invalid", fields=error.messages) from None
    return result
