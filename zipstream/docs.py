"""`GET /docs`: the OpenAPI document rendered by Swagger UI, whose assets the app serves itself.

The assets come from the `swagger-ui-bundle` package, so the page works with no internet access
(no CDN); `/docs/static/<file>` serves them with a long cache lifetime.
"""

from __future__ import annotations

from flask import Blueprint, render_template
from swagger_ui_bundle import swagger_ui_path

bp = Blueprint(
    "docs", __name__,
    static_folder=str(swagger_ui_path), static_url_path="/docs/static",
    template_folder="templates",
)


@bp.get("/docs")
def docs() -> str:
    """The interactive API documentation page."""
    return render_template("docs.html")
