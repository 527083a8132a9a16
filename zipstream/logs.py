"""Logging helpers: secrets never reach a log line."""

from __future__ import annotations

import re
from typing import Any

from gunicorn.glogging import Logger

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_SECRET_PATH = re.compile(rf"(/{_UUID}/)({_UUID}|[^/?\s]+)")


def mask_path(path: str) -> str:
    """`/<id>/<secret>` with the secret replaced by `***`."""
    return _SECRET_PATH.sub(r"\1***", path)


class MaskingGunicornLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger with `/:id/:secret` masked in the request line, path and query atoms."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "q"):
            if isinstance(atoms.get(key), str):
                atoms[key] = mask_path(atoms[key])
        return atoms
