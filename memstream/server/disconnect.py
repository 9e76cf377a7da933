"""Cancel a request's work when its client disconnects (issue 13; docs/rest.md).

A pure ASGI middleware. Each HTTP request runs under a fresh `memstream.cancellation.Token`;
once it has run for WATCH_AFTER_S a watcher task waits for uvicorn's `http.disconnect`,
which comes once the request body has been read and the client closes the connection
(uvicorn keeps reading the socket while someone waits on `receive`, which is how the close is
seen even while the handler is busy in a worker thread). When the client goes before the
response is complete, the token is cancelled -- worker threads stop at their next
`check()`, DuckDB queries are interrupted -- and so is the request's task (uvicorn's task
for this request; the cancellation is taken back once it has unwound), unless a write is
committing (`cancellation.committing`): then it runs to its end, so what reached the log
stays whole. Either way the event is counted (`memstream_client_disconnects_total`) and
logged at INFO.

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
WATCH_AFTER_S = 0.01
"""A request still running after this starts watching for its client's disconnect (a
disconnect that came earlier is seen at once then): the watcher's cost, ~50 us, is paid
only by the requests that can be worth stopping."""


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
        await _Request(self.app, scope, receive, send, asyncio.get_running_loop()).run()


class _Request:
    """One request: its handler (run in the request's own task), a watcher started if it is
    still running after WATCH_AFTER_S, and what each has seen."""

    def __init__(
        self,
        app: ASGIApp,
        scope: Scope,
        receive: Receive,
        send: Send,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.app, self.scope, self.receive, self.send, self.loop = app, scope, receive, send, loop
        self.token = cancellation.Token()
        self.body_pending = _has_body(scope)  # the handler has not read all of the body yet
        self.empty_body_owed = not self.body_pending  # what the handler's first receive gets
        self.body_read = asyncio.Event()
        if not self.body_pending:
            self.body_read.set()
        self.gone: asyncio.Future[Message] = loop.create_future()
        self.responded = False  # the last byte of the response was handed to the server
        self.stopped = False  # the watcher cancelled the request's task

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

    async def watch(self, task: asyncio.Task[Any], started: float) -> None:
        """Wait for the client to go (uvicorn answers `http.disconnect` once it has), and
        stop the request if it has not been answered by then."""
        await self.body_read.wait()
        while not self.gone.done():
            message = await self.receive()
            if message["type"] == "http.disconnect" and not self.gone.done():
                self.gone.set_result(message)
            # else: the empty body of a request without one, which the handler was owed
        if not self.responded:
            self._client_left(task, time.perf_counter() - started)

    async def run(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        watchers: list[asyncio.Task[None]] = []
        started = time.perf_counter()
        timer = self.loop.call_later(
            WATCH_AFTER_S,
            lambda: watchers.append(self.loop.create_task(self.watch(task, started))),
        )
        try:
            with cancellation.bound(self.token):  # the threads the handler starts inherit it
                await self.app(self.scope, self.handler_receive, self.handler_send)
        except asyncio.CancelledError:
            # ours alone (not also the server's shutdown): nobody is left to answer
            if self.stopped and task.uncancel() == 0:
                return
            raise
        else:
            if self.stopped:  # the handler swallowed our cancellation
                task.uncancel()
        finally:
            timer.cancel()
            for watcher in watchers:
                watcher.cancel()

    def _client_left(self, task: asyncio.Task[Any], after_s: float) -> None:
        route = _route(self.scope)
        self.stopped = self.token.cancel()
        if self.stopped:
            task.cancel()  # raised where the handler awaits (it is not running: we are)
        outcome = "cancelled" if self.stopped else "completed"
        metrics.CLIENT_DISCONNECTS.labels(route, outcome).inc()
        log.info(
            "client disconnected after %.2f s: %s %s %s",
            after_s, self.scope["method"], self.scope["path"],
            "cancelled" if self.stopped else "completing (a write already committing)",
        )  # fmt: skip
