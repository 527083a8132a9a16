"""`GET /demo` (DEMO=true): a shopping-cart page over the FILE_ROOT files, posting to the real API.

"Download selected" is a plain HTML form posted to `POST /bundle`; "Create a link" posts the same
form to `POST /` with fetch and shows the stored bundle's download link. Off by default: it lists
file names, which a production service should not show to anyone who asks.
"""

from __future__ import annotations

import os
from urllib.parse import quote

from flask import Blueprint, render_template

from .config import get_config
from .errors import NotFound

bp = Blueprint("demo", __name__, template_folder="templates")

# The page is an example, not a file browser: a few hundred checkboxes are plenty.
MAX_LISTED = 500


def list_files(root: str, limit: int = MAX_LISTED) -> list[tuple[str, str, int]]:
    """(src, relative name, size) of the regular files below `root`, sorted, at most `limit`."""
    found: list[tuple[str, str, int]] = []
    for current, subdirectories, files in os.walk(root, followlinks=False):
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        for name in sorted(files):
            path = os.path.join(current, name)
            if name.startswith(".") or os.path.islink(path) or not os.path.isfile(path):
                continue
            relative = os.path.relpath(path, root).replace(os.sep, "/")
            found.append((f"file:///{quote(relative)}", relative, os.path.getsize(path)))
    found.sort(key=lambda item: item[1])
    return found[:limit]


@bp.get("/demo")
def demo() -> str:
    """The shopping-cart example page."""
    config = get_config()
    if not config.demo:
        raise NotFound("the demo page is off; start the service with DEMO=true")
    files = list_files(config.file_root) if "file" in config.fs_interfaces and config.file_root else []
    return render_template("demo.html", files=files, file_enabled="file" in config.fs_interfaces,
                           locked=bool(config.api_key))
