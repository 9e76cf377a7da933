"""Routes of the dashboard: the page and its static files (none of them in /openapi.json).

The page itself holds no data: it is the same for everyone, and everything it shows comes
from the REST API, called by the browser with the signed-in key.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).parent
STATIC_PREFIX = "/dashboard/static"

# Only this origin's files and API: a stray CDN reference fails loudly in the browser.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)


def _version() -> str:
    try:
        return version("memstream")
    except PackageNotFoundError:
        return "0"


@router.get("/dashboard", response_class=HTMLResponse)
@router.get("/dashboard/", response_class=HTMLResponse)
async def dashboard(request: Request) -> HTMLResponse:
    """The single page; `?v=` on the assets makes an upgrade reload them."""
    response = templates.TemplateResponse(
        request,
        "dashboard.html",
        {"static": STATIC_PREFIX, "version": _version()},
    )
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def mount_dashboard(app: FastAPI) -> None:
    """Add the dashboard page and its assets to the REST server's app."""
    app.mount(STATIC_PREFIX, StaticFiles(directory=HERE / "static"), name="dashboard-static")
    app.include_router(router)
