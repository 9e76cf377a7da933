"""Cancel a request's work when its client disconnects (issue 13; docs/rest.md).

A pure ASGI middleware. Each HTTP request runs in a task of its own under a fresh
`memstream.cancellation.Token`; beside it a watcher waits for uvicorn's `http.disconnect`,
which comes once the request body has been read and the client closes the connection
(uvicorn keeps reading the socket while someone waits on `receive`, which is how the close is
seen even while the handler is busy in a worker thread). When the client goes before the
response is complete, the token is cancelled -- worker threads stop at their next
`check()`, DuckDB queries are interrupted -- and the handler's task is cancelled, unless a
write is committing (`cancellation.committing`): then it runs to its end, so what reached
the log stays whole. Either way the event is counted (`memstream_client_disconnects_total`)
and logged at INFO.

The body is passed through unbuffered (the body limit still sees every chunk as it comes);
the watcher starts reading only after the handler has read the whole body, or at once for a
request that has none. `/mcp` is left alone: its transport handles its own streams.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memstream import cancellation, metrics

log = logging.getLogger("memstream.server")

_EMPTY_BODY: Message = {"type": "http.request", "body": b"", "more_body": False}


def _has_body(scope: Scope) -> bool:
    """HTTP/1.1: a request has a body exactly when it declares a length or a transfer coding."""
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
    return False


def _route(scope: Scope) -> str:
    """The route's path template (bounded label values), once the router has matched it."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class CancelOnDisconnect:
    def __init__(self, app: ASGIApp, skip_prefixes: tuple[str, ...] = ("/mcp",)) -> None:
        self.app = app
        self.skip_prefixes = skip_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.skip_prefixes):
            await self.app(scope, receive, send)
            return
        await _Request(self.app, scope, receive, send).run()


class _Request:
    """One request's handler task, its watcher, and what each has seen."""

    def __init__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        self.app, self.scope, self.receive, self.send = app, scope, receive, send
        self.token = cancellation.Token()
        self.body_pending = _has_body(scope)  # the handler has not read all of the body yet
        self.empty_body_owed = not self.body_pending  # what the handler's first receive gets
        self.body_read = asyncio.Event()
        if not self.body_pending:
            self.body_read.set()
        self.gone: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.responded = False  # the last byte of the response was handed to the server

    async def handler_receive(self) -> Message:
        if self.empty_body_owed:
            self.empty_body_owed = False
            return dict(_EMPTY_BODY)
        if not self.body_pending:  # all that can come now is the disconnect
            return await asyncio.shield(self.gone)
        message = await self.receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_pending = False
            self.body_read.set()
            if message["type"] == "http.disconnect" and not self.gone.done():
                self.gone.set_result(message)
        return message

    async def handler_send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.responded = True
        await self.send(message)

    async def handle(self) -> None:
        await self.app(self.scope, self.handler_receive, self.handler_send)

    async def watch(self) -> None:
        """Wait for the client to go (uvicorn answers `http.disconnect` once it has)."""
        await self.body_read.wait()
        while not self.gone.done():
            message = await self.receive()
            if message["type"] == "http.disconnect" and not self.gone.done():
                self.gone.set_result(message)
            # else: the empty body of a request without one, which the handler was owed

    async def run(self) -> None:
        started = time.perf_counter()
        with cancellation.bound(self.token):  # the handler's task (and threads) inherit it
            handler: asyncio.Task[None] = asyncio.create_task(self.handle())
        watcher = asyncio.create_task(self.watch())
        try:
            await asyncio.wait((handler, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not handler.done() and not self.responded:
                self._client_left(handler, time.perf_counter() - started)
            await asyncio.wait((handler,))  # a cancelled handler unwinds; a committing one ends
        finally:
            watcher.cancel()
            if not handler.done():  # our own task was cancelled (server shutdown)
                handler.cancel()
        if handler.cancelled() and self.token.cancelled:
            return  # ours: the client is gone, there is nobody to answer
        handler.result()  # the handler's own outcome, exceptions included

    def _client_left(self, handler: asyncio.Task[None], after_s: float) -> None:
        route = _route(self.scope)
        stopped = self.token.cancel()
        if stopped:
            handler.cancel()
        outcome = "cancelled" if stopped else "completed"
        metrics.CLIENT_DISCONNECTS.labels(route, outcome).inc()
        log.info(
            "client disconnected after %.2f s: %s %s %s",
            after_s, self.scope["method"], self.scope["path"],
            "cancelled" if stopped else "completing (a write already committing)",
        )  # fmt: skip
