"""`memstream mcp`: the memory tools for MCP clients over stdio (docs/mcp.md)."""

from __future__ import annotations

import asyncio

import typer

from memstream.cli.common import app, fail, state
from memstream.errors import MemstreamError, ValidationError


@app.command("mcp")
def mcp_stdio(
    api_key: str = typer.Option(
        None,
        "--api-key",
        envvar="MEMSTREAM_API_KEY",
        help="act as this key's org/project (checked against the key store); "
        "absent -> --org-id/--project-id (default local/default)",
    ),
) -> None:
    """Serve add_memory, search_memories, list_memories, delete_memory and delete_all to an
    MCP client on stdin/stdout (the HTTP endpoint is /mcp under `memstream serve`)."""
    from memstream.mcp.stdio import run_stdio

    try:
        asyncio.run(run_stdio(state.settings, api_key))
    except MemstreamError as exc:
        fail(exc.message, code=2 if isinstance(exc, ValidationError) else 1)
    except KeyboardInterrupt:
        pass
