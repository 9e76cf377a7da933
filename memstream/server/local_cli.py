"""`memstream serve`'s Unix socket for the CLI of its own data directory (issue 16, section 7).

The CLI forwards `get-all`, `search` and verbatim `add` to a running server of the same data
directory (memstream/cli/forward.py; discovery and why it is safe: memstream/local_server.py).
This module is the server's half: a Unix socket in `<data_dir>/serve/`, served by the same
uvicorn server and app as the TCP port, and one route, `POST /v1/local/cli/`, left out of the
OpenAPI document. The route accepts only requests that came through that socket and carry
the per-run token (`Authorization: Local <token>`), and runs the very `Memstream` call the
command would run by itself, for the tenant the command names, after the projection has
caught up with the log (a command by itself applies the whole log before it reads). It
answers the result's dataclasses as JSON, or the error the call raised (with whether it was
a validation error, which the CLI exits 2 for), marked `"local": true` so the CLI can tell
its answer from one the request never reached (a 401, a 404 of an older server).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from memstream.errors import AuthError, MemstreamError, ValidationError
from memstream.events import Actor
from memstream.local_server import (
    AUTH_SCHEME,
    PATH,
    LocalServer,
    fingerprint,
    prepare_folder,
    publish,
    socket_path,
    withdraw,
)
from memstream.models import Tenant
from memstream.service import Memstream
from memstream.settings import Settings

log = logging.getLogger("memstream.server")

router = APIRouter(include_in_schema=False)

ENV = "MEMSTREAM_LOCAL_SOCKET"  # 0: serve no local socket (the CLI then never forwards)


@dataclasses.dataclass(frozen=True)
class LocalAccess:
    entry: LocalServer

    def admits(self, request: Request) -> bool:
        server = request.scope.get("server")  # (path, None) for a Unix socket
        if not server or server[1] is not None or server[0] != str(self.entry.socket):
            return False
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        return scheme == AUTH_SCHEME and hmac.compare_digest(token, self.entry.token)


def _answer(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse({**body, "local": True}, status_code=status)


@router.post(PATH)
async def local_cli(request: Request) -> JSONResponse:
    access: LocalAccess | None = getattr(request.app.state, "local_cli", None)
    if access is None or not access.admits(request):
        raise AuthError("the local CLI socket takes only its own data directory's owner")
    ms: Memstream = request.app.state.ms
    try:
        body = await request.json()
        op, args = body["op"], body["args"]
        tenant = Tenant(str(body["org_id"]), str(body["project_id"]))
        if not isinstance(args, dict):
            raise ValueError("args: must be an object")
        result = await _run(ms, op, tenant, args)
    except MemstreamError as exc:
        detail = {"detail": exc.message, "validation": isinstance(exc, ValidationError)}
        return _answer(detail, exc.status_code)
    except (ValueError, KeyError, TypeError) as exc:  # not what this CLI sends
        return _answer({"detail": f"bad local request: {exc!r}", "validation": True}, 400)
    return _answer({"result": result})


async def _run(ms: Memstream, op: str, tenant: Tenant, a: dict[str, Any]) -> Any:
    if op == "get_all":
        await ms.catch_up(flush=False)  # get_all merges the fresh tier (as_of flushes it)
        page = await ms.get_all(
            a["filters"], tenant=tenant, page=a["page"], page_size=a["page_size"],
            show_expired=a["show_expired"], as_of=a["as_of"],
        )  # fmt: skip
        return {"count": page.count, "page": page.page, "page_size": page.page_size,
                "results": [dataclasses.asdict(m) for m in page.results]}  # fmt: skip
    if op == "search":
        await ms.catch_up(flush=False)  # search merges the fresh tier (as_of flushes it)
        found = await ms.search(
            a["query"], a["filters"], tenant=tenant, top_k=a["top_k"], threshold=a["threshold"],
            show_expired=a["show_expired"], as_of=a["as_of"],
        )  # fmt: skip
        return [dataclasses.asdict(m) for m in found]
    if op == "add":  # verbatim only: an inferred add asks the command's own LLM settings
        results = await ms.add(
            a["messages"], tenant=tenant, infer=False, actor=Actor(source="cli"),
            user_id=a["user_id"], agent_id=a["agent_id"], app_id=a["app_id"],
            run_id=a["run_id"], metadata=a["metadata"], categories=a["categories"],
            expiration_date=a["expiration_date"], immutable=a["immutable"],
            request_id=a["request_id"], wait=a["wait"],
        )  # fmt: skip
        return [dataclasses.asdict(r) for r in results]
    raise ValueError(f"op: unknown {op!r}")


def serve(app: FastAPI, settings: Settings, *, host: str, port: int, log_level: str) -> None:
    """Run `app` with uvicorn on host:port and, unless MEMSTREAM_LOCAL_SOCKET=0 or the data
    directory cannot hold a private socket, on the local CLI socket too."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False)
    off = os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off")
    folder = None if off else prepare_folder(Path(settings.data_dir))
    if folder is None:
        uvicorn.Server(config).run()
        return
    path = socket_path(folder, os.getpid())
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a socket a process with our pid left long ago
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))  # inside a 0700 directory: nobody else can reach it meanwhile
    os.chmod(path, 0o600)
    entry = LocalServer(os.getpid(), path, secrets.token_urlsafe(32), fingerprint(settings))
    app.state.local_cli = LocalAccess(entry)
    app.include_router(router)
    server = _WithLocalSocket(config, sock, folder, entry)
    try:
        server.run()
    finally:
        withdraw(folder, entry)
        sock.close()


class _WithLocalSocket(uvicorn.Server):
    """A uvicorn server that also serves the local socket once it has started (the ledger is
    open by then), and takes its discovery file away before it stops."""

    def __init__(
        self, config: uvicorn.Config, sock: socket.socket, folder: Path, entry: LocalServer
    ) -> None:
        super().__init__(config)
        self.local = (sock, folder, entry)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.started or self.should_exit:
            return
        sock, folder, entry = self.local
        try:
            await self._listen(sock)
        except (AttributeError, TypeError) as exc:  # another uvicorn: no local socket then
            log.warning("memstream: no local CLI socket (%r)", exc)
            return
        publish(folder, entry)

    async def _listen(self, sock: socket.socket) -> None:
        """One more listener with the protocol the TCP one uses (what uvicorn's own startup
        does for each socket it is given)."""
        cfg = self.config

        def protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            made: asyncio.Protocol = cfg.http_protocol_class(  # type: ignore[call-arg]
                config=cfg, server_state=self.server_state, app_state=self.lifespan.state,
                _loop=_loop,
            )  # fmt: skip
            return made

        loop = asyncio.get_running_loop()
        self.servers.append(await loop.create_server(protocol, sock=sock, backlog=cfg.backlog))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        _, folder, entry = self.local
        withdraw(folder, entry)  # no new command comes here from now on
        await super().shutdown(sockets=sockets)
