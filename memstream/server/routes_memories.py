"""Memory endpoints: add, list, search, get, update, delete, delete_all, history, batch.

Paths, query vs body and response shapes follow the Mem0 Platform as the `mem0ai` 2.x client
uses it (shared/mem0-api.md), plus the v1/v2 paths older clients call. Every handler takes
the tenant from the caller's key; the core does the rest (validation, filters, events).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request

from memstream.errors import NotFoundError, ValidationError
from memstream.models import UNSET, HistoryEntry, MemoryView, WriteResult, iso_ms
from memstream.scope import ENTITY_FIELDS, normalise_id
from memstream.server.auth import CallerDep
from memstream.server.deps import (
    IdempotencyDep,
    MsDep,
    PendingAdds,
    PendingDep,
    combine,
    memory_id_param,
    parse_query_object,
)
from memstream.server.schemas import (
    AS_OF_DOC,
    AddOut,
    AddRequest,
    BatchDeleteRequest,
    BatchUpdateRequest,
    EventOut,
    GetAllRequest,
    HistoryOut,
    MemoryOut,
    MessageOut,
    PageOut,
    ResultsOut,
    SearchRequest,
    UpdateRequest,
    doc,
)

router = APIRouter(tags=["memories"])

MAX_BATCH = 1000
QUEUED = "Memory processing has been queued for background execution"


# -- add -----------------------------------------------------------------------------------
def _add_entities(body: AddRequest) -> dict[str, Any]:
    """Entity ids from the top level and/or `filters` (the AddMemoryOptions way); they must agree."""
    ids: dict[str, Any] = dict(body.entities())
    if body.filters is None:
        return ids
    flat: list[tuple[str, dict[str, Any]]] = [("filters", body.filters)]
    if set(body.filters) == {"AND"} and isinstance(body.filters["AND"], list):
        flat = [(f"filters.AND[{i}]", c) for i, c in enumerate(body.filters["AND"])]
    for path, cond in flat:
        if not isinstance(cond, dict):
            raise ValidationError(f"{path}: must be an object")
        for key, value in cond.items():
            if key not in ENTITY_FIELDS:
                raise ValidationError(
                    f"{path}.{key}: add takes only {', '.join(ENTITY_FIELDS)} in filters"
                )
            if not isinstance(value, str):
                raise ValidationError(f"{path}.{key}: must be a string id")
            if ids.get(key, value) != value:
                raise ValidationError(f"{path}.{key}: contradicts the top-level {key}")
            ids[key] = value
    return ids


async def _add(
    ms: MsDep, caller: CallerDep, body: AddRequest, idempotency: str | None, queue: PendingAdds
) -> dict[str, Any]:
    messages: Any = body.messages
    if isinstance(messages, list):
        messages = [m.model_dump() for m in messages]
    elif not isinstance(messages, str):
        messages = messages.model_dump()
    pending = bool(body.async_mode)
    # the platform infers unless told not to; without an LLM the answer says "off"
    infer = body.infer is not False and ms.inference_on
    state = "on" if infer else "off" if body.infer is not False else "not_requested"
    kwargs: dict[str, Any] = dict(
        tenant=caller.tenant,
        **_add_entities(body),
        metadata=body.metadata,
        categories=body.categories,
        expiration_date=body.expiration_date,
        immutable=body.immutable,
        request_id=body.request_id or idempotency,
        actor=caller.actor,
    )
    if pending and infer:
        # answer before the LLM is asked, once the conversation is durably in the log as
        # owed (else the error, not PENDING); GET /v1/event/{event_id}/ reports the outcome
        event_id = await ms.add_async(messages, **kwargs)
        queue.remember(caller.tenant, [event_id])
        return {
            "message": QUEUED, "status": "PENDING", "event_id": event_id, "results": [],
            "inference": state,
        }  # fmt: skip
    results: list[WriteResult] = await ms.add(messages, infer=infer, wait=not pending, **kwargs)
    if pending:
        queue.remember(caller.tenant, [r.event_id for r in results if r.event_id])
        return {
            "message": QUEUED,
            "status": "PENDING",
            "event_id": results[0].event_id if results else None,
            "results": [{**r.to_api(), "event_id": r.event_id} for r in results],
            "inference": state,
        }
    return {"results": [r.to_api() for r in results], "inference": state}


@router.post("/v3/memories/add/", responses=doc(AddOut), summary="Add memories")
async def add_v3(
    ms: MsDep, caller: CallerDep, body: AddRequest, idempotency: IdempotencyDep, queue: PendingDep
) -> Any:
    """With an LLM configured (and `infer` not false) the LLM extracts facts and decides
    ADD/UPDATE/DELETE/NONE against the scope's memories (docs/inference.md); otherwise each
    non-system message becomes one memory and the answer says `"inference": "off"`.
    `async_mode: true` answers PENDING at once (poll GET /v1/event/{event_id}/)."""
    return await _add(ms, caller, body, idempotency, queue)


@router.post("/v1/memories/", responses=doc(AddOut), summary="Add memories (legacy v1 path)")
async def add_v1(
    ms: MsDep, caller: CallerDep, body: AddRequest, idempotency: IdempotencyDep, queue: PendingDep
) -> Any:
    return await _add(ms, caller, body, idempotency, queue)


@router.get("/v1/event/{event_id}/", responses=doc(EventOut), summary="Status of an add")
async def get_event(ms: MsDep, caller: CallerDep, event_id: str, queue: PendingDep) -> Any:
    """PENDING until every memory of the add is projected, then SUCCEEDED with the results.
    Any event id of the caller's project works (e.g. one from a memory's history). An
    inferred add is reported from the log, on any server and after restarts: PENDING while
    its decision is owed, then SUCCEEDED, or FAILED with the error (docs/inference.md)."""
    eid = normalise_id("event_id", event_id)
    assert eid is not None
    ids: tuple[str, ...] = queue.lookup(caller.tenant, eid) or (eid,)
    inferred = False
    rows = [
        r
        for r in (await asyncio.to_thread(ms.reader.outcomes, list(ids))).values()
        if (r["org_id"], r["project_id"]) == (caller.tenant.org_id, caller.tenant.project_id)
    ]
    if len(rows) == 1 and rows[0]["event_type"] == "MessagesRecorded":
        # an inferred add's conversation: what settled it (None: still owed)
        pending = {"id": eid, "event_type": "ADD", "status": "PENDING", "results": []}
        if rows[0]["outcome"] == "ERASED":  # its subject was erased since
            return {**pending, "status": "SUCCEEDED"}
        settled = await asyncio.to_thread(ms.settlement, eid, tenant=caller.tenant)
        if settled is None:
            return pending
        if settled.failed is not None:
            return {**pending, "status": "FAILED", "error": settled.failed}
        inferred, rows = True, settled.rows
        ids = tuple(r["event_id"] for r in rows)
        if not rows:  # the LLM decided that nothing changes
            return {**pending, "status": "SUCCEEDED"}
    if not rows and queue.lookup(caller.tenant, eid) is None:
        raise NotFoundError("Event not found or you don't have permission to access it.")
    rows.sort(key=lambda r: (r["partition"], r["offset"]))
    done = len(rows) == len(ids)
    first = min((r["occurred_at"] for r in rows), default=None)
    adds = ("MemoryAdded", "MemoryUpdated", "MemoryDeleted") if inferred else ("MemoryAdded",)
    return {
        "id": eid,
        "event_type": "ADD"
        if all(r["event_type"] in adds for r in rows)
        else rows[0]["event_type"],
        "status": "SUCCEEDED" if done else "PENDING",
        "results": [
            {
                "id": r["resolved_memory_id"] if r["outcome"] == "NONE" else r["memory_id"],
                "event": r["outcome"],
                "data": {"memory": r["text"] or r["old_text"]},
                **(
                    {"previous_memory": r["old_text"]}
                    if r["outcome"] == "UPDATE" and r["old_text"]
                    else {}
                ),
            }
            for r in rows
        ],
        "created_at": iso_ms(first),
        "updated_at": iso_ms(max((r["occurred_at"] for r in rows), default=None)),
    }


# -- get_all -------------------------------------------------------------------------------
def _list_filters(body: GetAllRequest) -> dict[str, Any] | None:
    extra: list[dict[str, Any]] = []
    if body.entities():
        extra.append(body.entities())
    if body.start_date is not None:
        extra.append({"created_at": {"gte": body.start_date}})
    if body.end_date is not None:
        extra.append({"created_at": {"lte": body.end_date}})
    if body.categories is not None:
        extra.append({"categories": {"in": body.categories}})
    if body.keywords is not None:
        extra.append({"keywords": {"icontains": body.keywords}})
    return combine(body.filters, *extra)


def _page_url(request: Request, page: int, page_size: int) -> str:
    return str(request.url.include_query_params(page=page, page_size=page_size))


async def _get_all(
    ms: MsDep,
    caller: CallerDep,
    request: Request,
    body: GetAllRequest,
    page: int | None,
    page_size: int | None,
) -> dict[str, Any]:
    page = page if page is not None else body.page if body.page is not None else 1
    size = (
        page_size
        if page_size is not None
        else body.page_size
        if body.page_size is not None
        else 100
    )
    result = await ms.get_all(
        _list_filters(body),
        tenant=caller.tenant,
        page=page,
        page_size=size,
        show_expired=body.show_expired,
        as_of=body.as_of,
    )
    has_next = page * size < result.count
    return {
        "count": result.count,
        "next": _page_url(request, page + 1, size) if has_next else None,
        "previous": _page_url(request, page - 1, size) if page > 1 else None,
        "results": [m.to_api() for m in result.results],
    }


PageQ = Annotated[int | None, Query(description="1-based page number")]
PageSizeQ = Annotated[int | None, Query(description="1..1000, default 100")]


@router.post("/v3/memories/", responses=doc(PageOut), summary="List memories (get_all)")
async def get_all_v3(
    ms: MsDep, caller: CallerDep, request: Request, body: GetAllRequest,
    page: PageQ = None, page_size: PageSizeQ = None,
) -> Any:  # fmt: skip
    """`filters` select the memories (implicit null scoping: an entity id the filters do not
    name must be null); newest first; DRF-style envelope with count/next/previous/results."""
    return await _get_all(ms, caller, request, body, page, page_size)


@router.post("/v2/memories/", summary="List memories (legacy v2 path)")
async def get_all_v2(
    ms: MsDep, caller: CallerDep, request: Request, body: GetAllRequest,
    page: PageQ = None, page_size: PageSizeQ = None,
) -> Any:  # fmt: skip
    """A bare list, or the paginated envelope when page or page_size is given (as v2 did)."""
    out = await _get_all(ms, caller, request, body, page, page_size)
    paged = (
        page is not None
        or page_size is not None
        or body.page is not None
        or body.page_size is not None
    )
    return out if paged else out["results"]


@router.get("/v1/memories/", responses=doc(list[MemoryOut]), summary="List memories (legacy v1)")
async def get_all_v1(
    ms: MsDep, caller: CallerDep, request: Request,
    user_id: str | None = None, agent_id: str | None = None, app_id: str | None = None,
    run_id: str | None = None, filters: str | None = None,
    page: PageQ = None, page_size: PageSizeQ = None, limit: PageSizeQ = None,
) -> Any:  # fmt: skip
    """Entity ids in the query (the 0.1.x client); a bare list."""
    body = GetAllRequest(
        user_id=user_id, agent_id=agent_id, app_id=app_id, run_id=run_id,
        filters=parse_query_object("filters", filters),
    )  # fmt: skip
    out = await _get_all(
        ms, caller, request, body, page, page_size if page_size is not None else limit
    )
    return out["results"]


# -- search --------------------------------------------------------------------------------
async def _search(ms: MsDep, caller: CallerDep, body: SearchRequest) -> list[dict[str, Any]]:
    extra: list[dict[str, Any]] = []
    if body.entities():
        extra.append(body.entities())
    if body.categories is not None:
        extra.append({"categories": {"in": body.categories}})
    threshold = body.threshold if body.threshold else None  # 0 / null disable it
    found: list[MemoryView] = await ms.search(
        body.query, combine(body.filters, *extra), tenant=caller.tenant,
        top_k=body.top_k, threshold=threshold, show_expired=body.show_expired, as_of=body.as_of,
    )  # fmt: skip
    return [m.to_api() for m in found]


@router.post("/v3/memories/search/", responses=doc(ResultsOut), summary="Semantic search")
async def search_v3(ms: MsDep, caller: CallerDep, body: SearchRequest) -> Any:
    """Vector search within `filters`; results carry `score` (0..1); top_k default 10,
    threshold default 0.1 (0 disables it)."""
    return {"results": await _search(ms, caller, body)}


@router.post("/v2/memories/search/", responses=doc(list[MemoryOut]), summary="Search (legacy v2)")
async def search_v2(ms: MsDep, caller: CallerDep, body: SearchRequest) -> Any:
    return await _search(ms, caller, body)


@router.post("/v1/memories/search/", responses=doc(list[MemoryOut]), summary="Search (legacy v1)")
async def search_v1(ms: MsDep, caller: CallerDep, body: SearchRequest) -> Any:
    return await _search(ms, caller, body)


# -- delete_all ----------------------------------------------------------------------------
@router.delete("/v1/memories/", responses=doc(MessageOut), summary="Delete all memories of a scope")
async def delete_all(
    ms: MsDep, caller: CallerDep, idempotency: IdempotencyDep,
    user_id: str | None = None, agent_id: str | None = None, app_id: str | None = None,
    run_id: str | None = None,
    filters: Annotated[str | None, Query(description="JSON object, or a Python dict literal")] = None,
    metadata: Annotated[str | None, Query(description="JSON object: metadata equality")] = None,
) -> Any:  # fmt: skip
    """Entity ids in the query constrain only the ids they name, as on the Mem0 platform:
    `?run_id=ticket-9` deletes that session's memories whatever user or agent they carry
    (`"*"` = any non-null id). A `filters` object follows the filter language (implicit null
    scoping), exactly as get_all does. A request that names no entity id is refused."""
    ids: dict[str, Any] = {
        k: v
        for k, v in zip(ENTITY_FIELDS, (user_id, agent_id, app_id, run_id), strict=True)
        if v is not None
    }
    if ids and filters is None:
        ids.update({k: ["*", None] for k in ENTITY_FIELDS if k not in ids})  # unnamed: any
    meta = parse_query_object("metadata", metadata)
    f = combine(
        parse_query_object("filters", filters), ids, {"metadata": meta} if meta is not None else {}
    )
    count = await ms.delete_all(f, tenant=caller.tenant, request_id=idempotency, actor=caller.actor)
    return {"message": "Memories deleted successfully!", "count": count}


# -- one memory ----------------------------------------------------------------------------
@router.get("/v1/memories/{memory_id}/", responses=doc(MemoryOut), summary="Get a memory")
async def get_memory(
    ms: MsDep, caller: CallerDep, memory_id: str,
    as_of: Annotated[str | None, Query(description=AS_OF_DOC)] = None,
) -> Any:  # fmt: skip
    """Expired memories are still returned here (they are only hidden from lists and search)."""
    m = await ms.get(memory_id_param(memory_id), tenant=caller.tenant, as_of=as_of)
    return m.to_api()


def _update_kwargs(body: UpdateRequest) -> dict[str, Any]:
    return {
        "text": body.text,
        "metadata": body.metadata,
        "categories": body.categories,
        "expiration_date": body.expiration_date
        if "expiration_date" in body.model_fields_set
        else UNSET,
        "timestamp": body.timestamp,
    }


@router.put("/v1/memories/{memory_id}/", responses=doc(MemoryOut), summary="Update a memory")
async def update_memory(
    ms: MsDep, caller: CallerDep, memory_id: str, body: UpdateRequest, idempotency: IdempotencyDep
) -> Any:
    """Change text, metadata, categories or expiration_date, or backdate the memory with
    `timestamp` (Unix seconds: created_at and updated_at become that time, recorded as a
    MemoryUpdated event); answers the updated memory."""
    mid = memory_id_param(memory_id)
    await ms.update(
        mid, tenant=caller.tenant, **_update_kwargs(body),
        request_id=body.request_id or idempotency, actor=caller.actor,
    )  # fmt: skip
    m = await ms.get(mid, tenant=caller.tenant, consistent=False)
    return {**m.to_api(), "message": "Memory updated successfully!"}


@router.delete("/v1/memories/{memory_id}/", responses=doc(MessageOut), summary="Delete a memory")
async def delete_memory(
    ms: MsDep, caller: CallerDep, memory_id: str, idempotency: IdempotencyDep,
    delete_linked: Annotated[bool, Query(description="Accepted and ignored.")] = False,
) -> Any:  # fmt: skip
    await ms.delete(
        memory_id_param(memory_id), tenant=caller.tenant, request_id=idempotency, actor=caller.actor
    )
    return {"message": "Memory deleted successfully!"}


@router.get(
    "/v1/memories/{memory_id}/history/",
    responses=doc(list[HistoryOut]),
    summary="History of a memory",
)
async def history(ms: MsDep, caller: CallerDep, memory_id: str) -> Any:
    """Every event of the memory, from the log, oldest first (a bare JSON array)."""
    entries = await ms.history(memory_id_param(memory_id), tenant=caller.tenant)
    return [_history_entry(h) for h in entries]


def _history_entry(entry: HistoryEntry) -> dict[str, Any]:
    out = {**entry.to_api(), "input": []}
    if entry.event == "FEEDBACK":  # what was said, for the dashboard's timeline
        out["feedback"] = entry.extra.get("feedback")
        out["feedback_reason"] = entry.extra.get("feedback_reason")
    return out


# -- batch ---------------------------------------------------------------------------------
def _check_batch(n: int, verb: str) -> None:
    if n == 0:
        raise ValidationError("memories: must not be empty")
    if n > MAX_BATCH:
        raise ValidationError(
            f"memories: at most {MAX_BATCH} memories can be {verb} in one request"
        )


@router.put("/v1/batch/", responses=doc(MessageOut), summary="Update many memories")
async def batch_update(ms: MsDep, caller: CallerDep, body: BatchUpdateRequest) -> Any:
    """All ids are checked first (any unknown id: 404, nothing written), then updated in order."""
    _check_batch(len(body.memories), "updated")
    for item in body.memories:
        await ms.get(memory_id_param(item.memory_id), tenant=caller.tenant)
    for item in body.memories:
        await ms.update(
            item.memory_id, tenant=caller.tenant, **_update_kwargs(item),
            request_id=item.request_id, actor=caller.actor,
        )  # fmt: skip
    return {"message": f"Successfully updated {len(body.memories)} memories"}


@router.delete("/v1/batch/", responses=doc(MessageOut), summary="Delete many memories")
async def batch_delete(
    ms: MsDep, caller: CallerDep, body: Annotated[BatchDeleteRequest, Body()]
) -> Any:
    """The JSON body of a DELETE: `{"memories": [{"memory_id": ...}]}`; unknown ids: 404, nothing deleted."""
    _check_batch(len(body.memories), "deleted")
    ids = list(dict.fromkeys(memory_id_param(item.memory_id) for item in body.memories))
    for mid in ids:
        await ms.get(mid, tenant=caller.tenant)
    for mid in ids:
        await ms.delete(mid, tenant=caller.tenant, actor=caller.actor)
    return {"message": f"Successfully deleted {len(ids)} memories"}
