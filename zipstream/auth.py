"""Bearer-token checks shared by the routes that can be locked (bundle creation, /metrics)."""

from __future__ import annotations

import hmac

from flask import request


def bearer_matches(expected: str) -> bool:
    """Does the request carry `Authorization: Bearer <expected>`? (Constant-time comparison.)"""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode())
