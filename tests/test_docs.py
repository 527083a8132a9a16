"""GET /docs: Swagger UI served from the app's own assets (no CDN)."""

from __future__ import annotations

import re

from flask.testing import FlaskClient


def test_docs_page_uses_local_assets_and_the_openapi_document(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert '"/openapi.json"' in page
    assert "validatorUrl: null" in page  # Swagger UI would otherwise call its online validator
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets
    assert all(asset.startswith("/docs/static/") for asset in assets), assets
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.get_data()) > 100
        served.close()
    with client.get("/docs/static/swagger-ui-bundle.js") as bundle:
        assert "SwaggerUIBundle" in bundle.get_data(as_text=True)
    assert client.get("/openapi.json").get_json()["openapi"].startswith("3.")


def test_docs_static_does_not_serve_outside_the_bundle(client: FlaskClient) -> None:
    assert client.get("/docs/static/../__init__.py").status_code == 404
    assert client.get("/docs/static/nope.js").status_code == 404
