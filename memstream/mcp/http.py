"""The tools over streamable HTTP, mounted in the REST app at `/mcp`.

Tenancy is the REST API's: the request's `Authorization: Token <key>` (or `Bearer <key>`)
decides the org and project; a request without a valid key is answered 401 before it reaches
the MCP session. The endpoint is stateless (each POST stands alone, JSON answers), so several
servers behind a load balancer need no sticky sessions. DNS-rebinding protection is off: it
guards cookie- or network-trusting servers, and this one trusts only the API key, which a
rebinding page does not have.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from memstream.errors import AuthError, RateLimitedError
from memstream.events import Actor
from memstream.keys import ApiKey, KeyRegistry
from memstream.mcp.stdio import package_version
from memstream.mcp.tools import McpCaller, build_server
from memstream.service import Memstream

PATH = "/mcp"
SOURCE = "mcp:http"


def token_of(header: str | None) -> str:
    """The key in an Authorization header (`Token <key>` or `Bearer <key>`), or AuthError."""
    if not header or not header.strip():
        raise AuthError(
            "Authentication credentials were not provided: send 'Authorization: Token <key>'."
        )
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() not in ("token", "bearer") or not value.strip():
        raise AuthError("Invalid Authorization header: expected 'Token <key>'.")
    return value.strip()


class McpHttp:
    """The MCP endpoint of one app: a route to add and a lifespan to enter."""

    def __init__(self, state: Any) -> None:
        self.state = state  # the app's state: .ms (Memstream) and .keys (KeyRegistry)
        self.server: MCPServer = build_server(self._access, version=package_version())
        starlette = self.server.streamable_http_app(
            streamable_http_path=PATH,
            stateless_http=True,
            json_response=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        (route,) = [r for r in starlette.routes if isinstance(r, Route) and r.path == PATH]
        self._endpoint = route.endpoint

    async def _key(self, header: str | None) -> ApiKey:
        keys: KeyRegistry = self.state.keys
        return await keys.authenticate(token_of(header))

    async def _access(self, ctx: Context) -> McpCaller:
        headers = ctx.headers or {}
        key = await self._key(headers.get("authorization"))
        ms: Memstream = self.state.ms
        return McpCaller(ms, key.tenant, Actor(key_id=key.key_id, source=SOURCE))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Refuse a request without a valid key with 401 (as the REST API does)."""
        request = Request(scope)
        try:
            key = await self._key(request.headers.get("authorization"))
        except AuthError as exc:
            response = JSONResponse(
                {"detail": exc.message}, status_code=401, headers={"WWW-Authenticate": "Token"}
            )
            await response(scope, receive, send)
            return
        limiter = getattr(self.state, "rate_limiter", None)  # the REST API's, per key
        if limiter is not None:
            try:
                limiter.take(key.key_id)
            except RateLimitedError as exc:
                wait = str(max(1, math.ceil(exc.retry_after_s)))
                response = JSONResponse(
                    {"detail": exc.message}, status_code=429, headers={"Retry-After": wait}
                )
                await response(scope, receive, send)
                return
        await self._endpoint(scope, receive, send)

    def route(self) -> Route:
        return Route(PATH, endpoint=self)  # an ASGI app (not a function): any method

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.server.session_manager.run():
            yield
