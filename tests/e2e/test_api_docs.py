"""/docs, /redoc and /dashboard load every asset from this server: no CDN, no font service.

An air-gapped install used to show blank API docs (FastAPI's defaults load Swagger UI and
ReDoc from jsDelivr). Every src/href of the pages must be a local path answering 200, and
the dashboard page must forbid other origins (Content-Security-Policy).
"""

from __future__ import annotations

from html.parser import HTMLParser

import httpx
import pytest

from tests.servers import Server


class Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


def refs(html: str) -> list[str]:
    parser = Refs()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/dashboard"])
def test_pages_use_only_local_assets(file_server: Server, page: str) -> None:
    with httpx.Client(base_url=file_server.base_url, timeout=30) as c:
        r = c.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        html = r.text
        assert "cdn." not in html and "fonts.googleapis" not in html and "unpkg" not in html
        urls = [u for u in refs(html) if u != "#main"]
        assert urls, "the page references no assets at all?"
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), (page, url)
            asset = c.get(url)
            assert asset.status_code == 200, (page, url, asset.status_code)
            assert len(asset.content) > 100, (page, url)
        scripts = [u for u in urls if u.split("?")[0].endswith(".js")]
        assert scripts, page
    if page == "/dashboard":
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp


def test_openapi_document_is_served_for_the_docs(file_server: Server) -> None:
    spec = httpx.get(f"{file_server.base_url}/openapi.json", timeout=30).json()
    assert "/v1/stats/" in spec["paths"]
    assert not [
        p for p in spec["paths"] if p.startswith(("/dashboard", "/docs", "/redoc", "/static"))
    ]
