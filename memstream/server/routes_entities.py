"""Entities (users, agents, apps, runs that have memories): list and delete.

`GET /v1/entities/` lists every entity id with live memories in the caller's project;
`DELETE /v2/entities/{type}/{name}/` deletes every memory carrying that id, whatever its
other ids (unlike delete_all, whose filters follow implicit null scoping).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from memstream.cancellation import check as check_cancelled
from memstream.errors import ValidationError
from memstream.models import Tenant, iso_ms
from memstream.query.reader import tenant_predicate
from memstream.scope import ENTITY_FIELDS, normalise_id
from memstream.server.auth import CallerDep
from memstream.server.deps import IdempotencyDep, MsDep, entity_scope_filters
from memstream.server.schemas import EntitiesOut, MessageOut, doc
from memstream.service import Memstream

router = APIRouter(tags=["entities"])

ENTITY_TYPES = tuple(f.removesuffix("_id") for f in ENTITY_FIELDS)  # user, agent, app, run
ALIASES = {"session": "run", "users": "user", "agents": "agent", "apps": "app", "runs": "run"}
NAMESPACE = uuid.UUID("5b8f0f6e-0d7e-4a55-9a49-3b0d6f3c5e11")


def _entity_rows(ms: Memstream, tenant: Tenant) -> list[dict[str, Any]]:
    rows = ms.generation().query_memories(
        tenant_predicate(tenant), [*ENTITY_FIELDS, "created_at", "updated_at"]
    )
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        check_cancelled()  # every memory of the project: stop if the client has gone
        for field, kind in zip(ENTITY_FIELDS, ENTITY_TYPES, strict=True):
            name = row[field]
            if name is None:
                continue
            e = found.setdefault(
                (kind, name),
                {"n": 0, "created_at": row["created_at"], "updated_at": row["updated_at"]},
            )
            e["n"] += 1
            e["created_at"] = min(e["created_at"], row["created_at"])
            e["updated_at"] = max(e["updated_at"], row["updated_at"])
    return [
        {
            "id": str(uuid.uuid5(NAMESPACE, f"{tenant.org_id}/{tenant.project_id}/{kind}/{name}")),
            "name": name,
            "type": kind,
            "total_memories": e["n"],
            "owner": None,
            "metadata": {},
            "created_at": iso_ms(e["created_at"]),
            "updated_at": iso_ms(e["updated_at"]),
        }
        for (kind, name), e in sorted(found.items())
    ]


MAX_PAGE_SIZE = 1000


@router.get("/v1/entities/", responses=doc(EntitiesOut), summary="List users, agents, apps, runs")
async def list_entities(
    ms: MsDep, caller: CallerDep, request: Request,
    page: Annotated[int | None, Query(description="1-based page number")] = None,
    page_size: Annotated[int | None, Query(description="1..1000, default 100")] = None,
) -> Any:  # fmt: skip
    """Sorted by type, then name. Without page/page_size every entity comes in one answer
    (what `MemoryClient.users()` expects); with them, DRF-style pages with next/previous.
    `count` and the `total_*` figures are always over all entities."""
    await ms.settle()  # the entity list reads the memories table itself
    results = await asyncio.to_thread(_entity_rows, ms, caller.tenant)
    totals = {
        f"total_{kind}s": sum(1 for r in results if r["type"] == kind) for kind in ENTITY_TYPES
    }
    count = len(results)
    if page is None and page_size is None:
        return {"count": count, "next": None, "previous": None, "results": results, **totals}
    page = 1 if page is None else page
    size = 100 if page_size is None else page_size
    if page < 1:
        raise ValidationError(f"query parameter page: must be 1 or more, got {page}")
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise ValidationError(
            f"query parameter page_size: must be between 1 and {MAX_PAGE_SIZE}, got {size}"
        )

    def url(n: int) -> str:
        return str(request.url.include_query_params(page=n, page_size=size))

    return {
        "count": count,
        "next": url(page + 1) if page * size < count else None,
        "previous": url(page - 1) if page > 1 else None,
        "results": results[(page - 1) * size : page * size],
        **totals,
    }


async def _delete_entity(
    ms: Memstream, caller: CallerDep, entity_type: str, name: str, rid: str | None
) -> Any:
    kind = ALIASES.get(entity_type, entity_type)
    if kind not in ENTITY_TYPES:
        raise ValidationError(
            f"entity_type: must be one of {', '.join(ENTITY_TYPES)}, got {entity_type!r}"
        )
    entity = normalise_id("name", name)
    assert entity is not None
    count = await ms.delete_all(
        entity_scope_filters(kind, entity), tenant=caller.tenant, request_id=rid, actor=caller.actor
    )
    return {"message": "Entity deleted successfully.", "count": count}


@router.delete(
    "/v2/entities/{entity_type}/{entity_name}/",
    responses=doc(MessageOut),
    summary="Delete an entity",
)
async def delete_entity(
    ms: MsDep, caller: CallerDep, entity_type: str, entity_name: str, idempotency: IdempotencyDep
) -> Any:
    """Deletes every memory of the entity (type user | agent | app | run), whatever its other
    ids. An entity without memories answers 200 with count 0, so `reset()` can delete a list
    of entities in which one deletion already removed another's memories."""
    return await _delete_entity(ms, caller, entity_type, entity_name, idempotency)


@router.delete(
    "/v1/entities/{entity_type}/{entity_name}/", responses=doc(MessageOut),
    summary="Delete an entity (legacy v1 path)",
)  # fmt: skip
async def delete_entity_v1(
    ms: MsDep, caller: CallerDep, entity_type: str, entity_name: str, idempotency: IdempotencyDep
) -> Any:
    return await _delete_entity(ms, caller, entity_type, entity_name, idempotency)
