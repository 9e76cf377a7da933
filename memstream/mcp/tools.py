"""The MCP tools: add_memory, search_memories, list_memories, delete_memory, delete_all.

Each tool asks `access(ctx)` who is calling (the ledger, the tenant, the actor), so the same
tools serve stdio (one tenant for the process) and HTTP (the tenant of the request's API key).
Filters follow the REST API exactly: implicit null scoping, `"*"`, lists, AND/OR/NOT; entity
ids given as arguments are ANDed with `filters`. Errors come back as tool errors carrying the
ledger's one-sentence message, never a traceback.

No `from __future__ import annotations` here: the SDK reads the tools' annotations at runtime
to build their input schemas and to find the `Context` parameter.
"""

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from memstream.errors import MemstreamError
from memstream.events import Actor
from memstream.models import Tenant
from memstream.service import Memstream

INSTRUCTIONS = """\
memstream is a memory ledger: every memory belongs to a scope of entity ids (user_id,
agent_id, app_id, run_id). Reads take `filters`; an entity id the filters do not name must be
null ("implicit null scoping"): {"user_id": "alice"} is alice's memories with no agent, app or
run. Use "*" for any non-null id, e.g. {"user_id": "alice", "run_id": "*"} for all her
sessions. Every change is an event in an audited log."""

Id = Annotated[str | None, Field(description="entity id; absent = null")]
FiltersArg = Annotated[
    dict[str, Any] | None,
    Field(
        description='memstream/Mem0 filters, e.g. {"user_id": "alice", "run_id": "*"}; '
        "ANDed with the entity ids given as arguments"
    ),
]


@dataclass(frozen=True, slots=True)
class McpCaller:
    """Who a tool call speaks for: the ledger, the tenant (org/project) and the actor."""

    ms: Memstream
    tenant: Tenant
    actor: Actor


Access = Callable[[Context], Awaitable[McpCaller]]


def _ids(user_id: Any, agent_id: Any, app_id: Any, run_id: Any) -> dict[str, Any]:
    named = {"user_id": user_id, "agent_id": agent_id, "app_id": app_id, "run_id": run_id}
    return {k: v for k, v in named.items() if v is not None}


def _filters(filters: Mapping[str, Any] | None, ids: dict[str, Any]) -> dict[str, Any] | None:
    """`filters` AND the ids (the REST API's rule for body ids next to filters)."""
    if not ids:
        return dict(filters) if filters is not None else None
    if not filters:
        return ids
    return {"AND": [dict(filters), ids]}


class _Errors:
    """Ledger errors become tool errors with their message (400/404/... as one sentence)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, MemstreamError):
            raise ToolError(exc.message) from exc


def build_server(access: Access, *, version: str = "") -> MCPServer:
    """An MCPServer with memstream's tools; `access` resolves the caller of each call."""
    server: MCPServer = MCPServer(
        name="memstream",
        title="memstream memory ledger",
        instructions=INSTRUCTIONS,
        version=version,
    )

    @server.tool(
        description="Remember a text for an entity scope (give at least one entity id). "
        "An exact duplicate in the same scope is not stored twice (event NONE).",
        annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=False),
    )
    async def add_memory(
        ctx: Context,
        text: Annotated[str, Field(description="the fact to remember")],
        user_id: Id = None,
        agent_id: Id = None,
        app_id: Id = None,
        run_id: Id = None,
        metadata: Annotated[dict[str, Any] | None, Field(description="JSON object")] = None,
    ) -> dict[str, Any]:
        with _Errors():
            who = await access(ctx)
            results = await who.ms.add(
                text, tenant=who.tenant, actor=who.actor, metadata=metadata,
                **_ids(user_id, agent_id, app_id, run_id),
            )  # fmt: skip
        return {"results": [r.to_api() for r in results]}

    @server.tool(
        description="Semantic search over the memories the filters select, closest first "
        "(score 0..1).",
        annotations=ToolAnnotations(read_only_hint=True),
    )
    async def search_memories(
        ctx: Context,
        query: Annotated[str, Field(description="what to look for, in natural language")],
        filters: FiltersArg = None,
        user_id: Id = None,
        agent_id: Id = None,
        app_id: Id = None,
        run_id: Id = None,
        top_k: Annotated[int, Field(ge=1, le=1000)] = 10,
    ) -> dict[str, Any]:
        with _Errors():
            who = await access(ctx)
            found = await who.ms.search(
                query, _filters(filters, _ids(user_id, agent_id, app_id, run_id)),
                tenant=who.tenant, top_k=top_k,
            )  # fmt: skip
        return {"results": [m.to_api() for m in found]}

    @server.tool(
        description="List the memories the filters select, newest first, one page at a time.",
        annotations=ToolAnnotations(read_only_hint=True),
    )
    async def list_memories(
        ctx: Context,
        filters: FiltersArg = None,
        user_id: Id = None,
        agent_id: Id = None,
        app_id: Id = None,
        run_id: Id = None,
        page: Annotated[int, Field(ge=1)] = 1,
        page_size: Annotated[int, Field(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        with _Errors():
            who = await access(ctx)
            got = await who.ms.get_all(
                _filters(filters, _ids(user_id, agent_id, app_id, run_id)),
                tenant=who.tenant, page=page, page_size=page_size,
            )  # fmt: skip
        return {
            "count": got.count,
            "page": page,
            "page_size": page_size,
            "has_more": page * page_size < got.count,
            "results": [m.to_api() for m in got.results],
        }

    @server.tool(
        description="Delete one memory by id (recorded as an event; history keeps it).",
        annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=False),
    )
    async def delete_memory(
        ctx: Context, memory_id: Annotated[str, Field(description="the memory's id")]
    ) -> dict[str, Any]:
        with _Errors():
            who = await access(ctx)
            await who.ms.delete(memory_id, tenant=who.tenant, actor=who.actor)
        return {"message": "Memory deleted successfully!", "id": memory_id}

    @server.tool(
        description="Delete every memory the filters select (implicit null scoping: "
        '{"user_id": "alice"} leaves her agent- and run-scoped memories). A request that '
        "names no entity id is refused.",
        annotations=ToolAnnotations(destructive_hint=True),
    )
    async def delete_all(
        ctx: Context,
        filters: FiltersArg = None,
        user_id: Id = None,
        agent_id: Id = None,
        app_id: Id = None,
        run_id: Id = None,
    ) -> dict[str, Any]:
        with _Errors():
            who = await access(ctx)
            count = await who.ms.delete_all(
                _filters(filters, _ids(user_id, agent_id, app_id, run_id)),
                tenant=who.tenant, actor=who.actor,
            )  # fmt: skip
        return {"message": "Memories deleted successfully!", "count": count}

    return server
