"""`memstream mcp`: the tools over stdio, for one tenant per process.

The tenant is the API key's (`--api-key` / `MEMSTREAM_API_KEY`, checked against the key
store the REST server uses, revocation included) or, without a key, the local org/project of
the embedded defaults (`--org-id`/`--project-id`, default `local`/`default`), as every other
CLI command uses. stdout carries the protocol; logs go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib

from mcp.server.mcpserver import Context

from memstream.events import Actor
from memstream.keys import KeyRegistry
from memstream.mcp.tools import McpCaller, build_server
from memstream.service import Memstream
from memstream.settings import Settings

SOURCE = "mcp:stdio"


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("memstream")
    except PackageNotFoundError:
        return "0"


async def run_stdio(settings: Settings, api_key: str | None = None) -> None:
    """Serve the tools on stdin/stdout until the client closes them."""
    async with contextlib.AsyncExitStack() as stack:
        ms = await stack.enter_async_context(Memstream(settings))
        keys: KeyRegistry | None = None
        if api_key:
            keys = await stack.enter_async_context(KeyRegistry.from_settings(settings))
            await keys.authenticate(api_key)  # a bad key fails at start, not at the first call
            stop = asyncio.Event()
            follower = asyncio.create_task(keys.follow(stop))
            stack.push_async_callback(lambda: follower)
            stack.callback(stop.set)

        async def access(ctx: Context) -> McpCaller:
            if keys is None or api_key is None:
                return McpCaller(ms, ms.tenant, Actor(source=SOURCE))
            key = await keys.authenticate(api_key)  # revoked meanwhile: every call refused
            return McpCaller(ms, key.tenant, Actor(key_id=key.key_id, source=SOURCE))

        server = build_server(access, version=package_version())
        await server.run_stdio_async()
