"""Command-line download clients (curl, wget, aria2c, axel) for resume tests; Debian packages.

tests/support/system_deps.py installs them; a missing one skips locally and fails on CI.
"""

from __future__ import annotations

import shutil
from typing import Final

from . import ci

# Debian package of each client binary.
PACKAGES: Final[dict[str, str]] = {"curl": "curl", "wget": "wget", "aria2c": "aria2", "axel": "axel"}
DEBIAN_PACKAGES: Final[tuple[str, ...]] = tuple(sorted(set(PACKAGES.values())))


def require(binary: str) -> str:
    """The client's path; skips (fails on CI) when it is not installed."""
    path = shutil.which(binary)
    if path is None:
        ci.missing(f"{binary} not installed (apt-get install -y {PACKAGES[binary]})",
                   "CI must run tests/support/system_deps.py")
    return path
