"""One rule for a missing service or tool: skip on a developer's machine, fail on CI (CI=true)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def missing(message: str, ci_hint: str = "") -> NoReturn:
    """Skip the test locally; on CI fail it, since a skip there would hide a gap in the CI set-up."""
    if on_ci():
        pytest.fail(f"{message}; {ci_hint}" if ci_hint else message, pytrace=False)
    pytest.skip(message)
