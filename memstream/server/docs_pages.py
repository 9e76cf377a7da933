"""`/docs` (Swagger UI) and `/redoc` (ReDoc) from files shipped in the package, not a CDN.

FastAPI's defaults load both from jsDelivr (and ReDoc's fonts from Google), so an
air-gapped install showed a blank page. The vendored files and their versions are listed in
`memstream/server/static/VERSIONS.md`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
PREFIX = "/static/api-docs"


def install_docs(app: FastAPI) -> None:
    """Serve the vendored assets and the two docs pages (kept out of the OpenAPI document)."""
    app.mount(PREFIX, StaticFiles(directory=STATIC_DIR), name="api-docs-assets")
    favicon = f"{PREFIX}/swagger-ui/favicon-32x32.png"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{PREFIX}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{PREFIX}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=favicon,
            # the default validator badge is an image from validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{PREFIX}/redoc/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )
