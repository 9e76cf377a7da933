"""The FastAPI application: a Mem0-Platform-compatible REST API over the memory ledger.

One process runs the HTTP server, the projector (a background task) and, by default, the
embedded file log; with Kafka configured, several servers (each with its own data dir) can
share one topic. Errors map to HTTP in one place (`install_error_handlers`) as JSON
`{"detail": "<message>"}`, the shape the mem0 client reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from memstream.dashboard import mount_dashboard
from memstream.errors import AuthError, LogCorruptError, LogUnavailableError, MemstreamError
from memstream.keys import KeyRegistry
from memstream.mcp.http import McpHttp
from memstream.server import (
    routes_entities,
    routes_erasure,
    routes_exports,
    routes_health,
    routes_memories,
    routes_metrics,
    routes_platform,
    routes_stats,
    routes_webhooks,
)
from memstream.server.deps import PendingAdds
from memstream.server.disconnect import CancelOnDisconnect
from memstream.server.docs_pages import install_docs
from memstream.server.limits import BodyLimit, RateLimiter, retry_after
from memstream.service import Memstream
from memstream.settings import Settings

log = logging.getLogger("memstream.server")

DESCRIPTION = """\
The Mem0 Platform API, served by memstream: point `mem0.MemoryClient(api_key=KEY,
host="http://HOST:PORT")` at it. Authenticate with `Authorization: Token <key>` (keys come
from `memstream keys create`); the key decides the org and project of every request.
See docs/rest.md for where memstream deliberately differs from the hosted platform.
"""


class JSON(JSONResponse):
    """JSON with non-ASCII escaped: any string a client sent can be echoed back safely."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    where = ".".join(parts)
    if loc and loc[0] in ("query", "path", "header") and where:
        return f"{loc[0]} parameter {where}"
    return where or "body"


def install_error_handlers(app: FastAPI) -> None:
    """The one place where failures become HTTP statuses."""

    async def memstream_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, MemstreamError)
        headers: dict[str, str] = {}
        if isinstance(exc, AuthError):
            headers["WWW-Authenticate"] = "Token"
        elif isinstance(exc, LogUnavailableError) and not isinstance(exc, LogCorruptError):
            headers["Retry-After"] = "1"  # a corrupt log waits for an operator, not a retry
        if (wait := getattr(exc, "retry_after_s", None)) is not None:
            headers["Retry-After"] = retry_after(wait)
        if exc.status_code >= 500 and exc.status_code != 501:  # 501: a documented answer
            log.error(
                "%s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc.message
            )
        return JSON({"detail": exc.message}, status_code=exc.status_code, headers=headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "field": _field(e.get("loc", ())),
                "message": str(e.get("msg", "invalid")),
                "type": e.get("type"),
            }
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
        return JSON({"detail": detail, "errors": errors}, status_code=422)

    app.add_exception_handler(MemstreamError, memstream_error)
    app.add_exception_handler(RequestValidationError, validation_error)


class CollapseLeadingSlashes:
    """`//v1/ping/` is `/v1/ping/`: a client whose host ends in `/` (the Node SDK joins
    host and path with another) reaches the same routes. Only leading slashes collapse,
    so an id with an encoded `%2F%2F` inside a path keeps its meaning."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("//"):
            scope = dict(scope)
            scope["path"] = "/" + scope["path"].lstrip("/")
            raw = scope.get("raw_path")
            if raw:
                scope["raw_path"] = b"/" + raw.lstrip(b"/")
        await self.app(scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    """The ASGI app; the ledger (log, projector, keys) starts and stops with its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ms = Memstream(settings)
        # reads never wait for other clients' in-flight writes (see Memstream.start)
        await ms.start(
            background_projector=True,
            read_your_writes=False,
            dispatch_webhooks=settings.webhooks,
        )
        keys = KeyRegistry.from_settings(settings)
        stop = asyncio.Event()
        follower: asyncio.Task[None] | None = None
        try:
            await keys.start()
            follower = asyncio.create_task(keys.follow(stop))
            app.state.ms, app.state.keys, app.state.pending = ms, keys, PendingAdds()
            app.state.rate_limiter = RateLimiter(settings.limits)
            log.info("memstream serving %s from %s", settings.log_description, settings.data_dir)
            log.info("memstream %s", settings.llm_description)
            async with mcp.running():
                yield
        finally:  # ms.close() lets async inferred adds under way finish (the rest stay owed)
            stop.set()
            if follower is not None:
                await follower
            await keys.close()
            await ms.close()

    app = FastAPI(
        title="memstream",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        redirect_slashes=False,
        default_response_class=JSON,
        docs_url=None,  # served from the package's own files (docs_pages.py)
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.limits.max_body_bytes)
    mcp = McpHttp(app.state)  # the MCP tools at /mcp, same keys and tenancy (docs/mcp.md)
    app.router.routes.append(mcp.route())
    for module in (
        routes_health, routes_platform, routes_memories, routes_entities, routes_exports,
        routes_erasure, routes_stats, routes_webhooks, routes_metrics,
    ):  # fmt: skip
        app.include_router(module.router)
    install_docs(app)
    mount_dashboard(app)
    app.add_middleware(CancelOnDisconnect)  # a client that leaves stops its request's work
    app.add_middleware(CollapseLeadingSlashes)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("memstream")
    except PackageNotFoundError:
        return "0"


def serve(
    settings: Settings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> None:
    """Run the server until SIGINT/SIGTERM (uvicorn; one process), also on the local socket
    the CLI of the same data directory forwards its commands to (server/local_cli.py).

    The root logger is configured here, before the app is built, because the MCP SDK's
    server configures it at INFO on construction when nobody has: `--log-level warning`
    must silence memstream's and the MCP session manager's INFO lines alike.
    """
    import logging

    from memstream.server import local_cli

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    local_cli.serve(create_app(settings), settings, host=host, port=port, log_level=log_level)
